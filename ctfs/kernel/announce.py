"""Telling a link that addresses now live behind this host: gratuitous ARP for
IPv4, unsolicited neighbour advertisements for IPv6 (RFC 5227 §3, RFC 4861 §7.2.6).

After a container moved here, the machines on the uplink still map its addresses
to the old host's MAC address; an announcement replaces those entries at once
instead of when they go stale (about 30 s later on Linux).  Neighbours only
update entries they have: nothing is created on a machine that never talked to
the container.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence

from ctfs.kernel.api import IPAddress

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ALL_NODES6 = "ff02::1"
_ND_NEIGHBOR_ADVERT = 136
_NA_FLAG_OVERRIDE = 0x20000000
_OPTION_TARGET_LL = 2
# The kernel drops a neighbour advertisement whose hop limit is not 255 (RFC 4861 §7.1.2).
_ND_HOP_LIMIT = 255


def gratuitous_arp(address: ipaddress.IPv4Address, mac: bytes) -> bytes:
    """A broadcast ARP request whose sender and target are ``address`` at ``mac``."""
    ip = address.packed
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def unsolicited_na(address: ipaddress.IPv6Address, mac: bytes) -> bytes:
    """An ICMPv6 neighbour advertisement with the override flag, without checksum
    (the kernel computes it for raw ICMPv6 sockets)."""
    header = struct.pack("!BBHI", _ND_NEIGHBOR_ADVERT, 0, 0, _NA_FLAG_OVERRIDE)
    option = struct.pack("!BB", _OPTION_TARGET_LL, 1) + mac
    return header + address.packed + option


def announce(ifname: str, mac: bytes, addresses: Sequence[IPAddress]) -> None:
    """Announce each address on ``ifname`` (whose MAC address is ``mac``)."""
    v4 = [a for a in addresses if isinstance(a, ipaddress.IPv4Address)]
    v6 = [a for a in addresses if isinstance(a, ipaddress.IPv6Address)]
    if v4:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as raw:
            raw.bind((ifname, ETH_P_ARP))
            for address in v4:
                raw.send(gratuitous_arp(address, mac))
    if v6:
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as raw:
            raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, _ND_HOP_LIMIT)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            index = socket.if_nametoindex(ifname)
            for address6 in v6:
                raw.sendto(unsolicited_na(address6, mac), (ALL_NODES6, 0, 0, index))
