"""The segments a moved container's clients sent while it was frozen: which are
kept, and their checksums when sent again (ctfs.kernel.tcp_replay)."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from ctfs.kernel.tcp_replay import ones_complement_sum, tcp_segment, with_tcp_checksum

CLIENT4, CONTAINER4 = "198.18.77.3", "198.18.77.50"
CLIENT6, CONTAINER6 = "2001:db8:77::3", "2001:db8:77::50"


def _tcp(data: bytes, checksum: int = 0x1234) -> bytes:
    # ports 40000 -> 7000, seq 1000, ack 2000, 20-byte header, PSH|ACK
    return struct.pack("!HHIIBBHHH", 40000, 7000, 1000, 2000, 5 << 4, 0x18, 512, checksum, 0) + data


def _ipv4(data: bytes, proto: int = 6) -> bytes:
    segment = _tcp(data)
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(segment), 0, 0x4000, 64, proto, 0)
    return header + socket.inet_aton(CLIENT4) + socket.inet_aton(CONTAINER4) + segment


def _ipv6(data: bytes) -> bytes:
    segment = _tcp(data)
    header = struct.pack("!IHBB", 6 << 28, len(segment), 6, 64)
    addresses = socket.inet_pton(socket.AF_INET6, CLIENT6) + socket.inet_pton(
        socket.AF_INET6, CONTAINER6
    )
    return header + addresses + segment


def test_a_segment_with_data_is_kept_by_connection_and_sequence_number() -> None:
    found = tcp_segment(_ipv4(b"message 7\n"))
    assert found is not None
    key, destination = found
    assert destination == ipaddress.ip_address(CONTAINER4)
    assert key[2:] == (40000, 7000, 1000)


def test_a_pure_ack_is_not_kept() -> None:
    assert tcp_segment(_ipv4(b"")) is None


def test_a_udp_packet_is_not_kept() -> None:
    assert tcp_segment(_ipv4(b"data", proto=17)) is None


def test_padding_after_the_ip_length_is_not_data() -> None:
    assert tcp_segment(_ipv4(b"") + b"\0" * 6) is None  # Ethernet's minimum frame


def test_an_ipv6_segment_is_kept() -> None:
    found = tcp_segment(_ipv6(b"message 8\n"))
    assert found is not None and found[1] == ipaddress.ip_address(CONTAINER6)


@pytest.mark.parametrize("packet", [_ipv4(b"odd length"), _ipv6(b"message 9\n")])
def test_the_checksum_is_computed_in_full(packet: bytes) -> None:
    fixed = with_tcp_checksum(packet + b"\0\0")  # trimmed to its IP length, too
    if fixed[0] >> 4 == 4:
        segment = fixed[20:]
        pseudo = fixed[12:20] + struct.pack("!xBH", 6, len(segment))
    else:
        segment = fixed[40:]
        pseudo = fixed[8:40] + struct.pack("!IxxxB", len(segment), 6)
    assert len(fixed) == len(packet)
    assert ones_complement_sum(pseudo + segment) == 0xFFFF  # how a receiver verifies it
