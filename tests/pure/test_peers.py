"""The peers list: NAME ADDRESS:PORT sha256:FINGERPRINT lines, parsed and refused."""

from __future__ import annotations

import pytest

from ctfs.policy.peers import (
    DEFAULT_PORT,
    Peer,
    PeerError,
    find_peer,
    parse_endpoint,
    parse_peers,
    render_peers,
)

FP = "ab" * 32
FP_COLONS = ":".join(["AB"] * 32)
OTHER = "cd" * 32


def test_a_peer_line_is_parsed() -> None:
    assert parse_peers(f"host2 198.18.0.2:7385 sha256:{FP}\n") == [
        Peer("host2", "198.18.0.2", 7385, FP)
    ]


def test_a_fingerprint_as_openssl_prints_it_is_taken() -> None:
    assert parse_peers(f"host2 198.18.0.2:7385 sha256:{FP_COLONS}")[0].fingerprint == FP


def test_comments_and_blank_lines_are_ignored() -> None:
    text = f"# trusted\n\nhost2 198.18.0.2:7385 sha256:{FP}  # rack 4\n"
    assert [p.name for p in parse_peers(text)] == ["host2"]


def test_an_ipv6_peer_takes_brackets_and_renders_them_again() -> None:
    peers = parse_peers(f"host3 [2001:db8::3]:7000 sha256:{FP}")
    assert peers[0].host == "2001:db8::3"
    assert render_peers(peers) == f"host3 [2001:db8::3]:7000 sha256:{FP}\n"


def test_rendering_gives_back_what_parses_to_the_same_list() -> None:
    peers = parse_peers(f"a 198.18.0.2:1 sha256:{FP}\nb 198.18.0.3:2 sha256:{OTHER}\n")
    assert parse_peers(render_peers(peers)) == peers


def test_an_endpoint_without_a_port_gets_the_default() -> None:
    assert parse_endpoint("198.18.0.2") == ("198.18.0.2", DEFAULT_PORT)


@pytest.mark.parametrize(
    "line,reason",
    [
        ("host2 198.18.0.2:7385", "NAME ADDRESS:PORT"),
        (f"host_2 198.18.0.2:7385 sha256:{FP}", "not a host name"),
        (f"host2 example.org:7385 sha256:{FP}", "not an IP address"),
        (f"host2 198.18.0.2:99999 sha256:{FP}", "not a port"),
        (f"host2 2001:db8::3:7000 sha256:{FP}", "in brackets"),
        ("host2 198.18.0.2:7385 sha256:abcd", "32 bytes in hex"),
        (f"host2 198.18.0.2:7385 md5:{FP}", "32 bytes in hex"),
        (f"../x 198.18.0.2:7385 sha256:{FP}", "not a host name"),
    ],
)
def test_a_bad_line_is_refused_with_its_number_and_reason(line: str, reason: str) -> None:
    with pytest.raises(PeerError, match=f"line 2: .*{reason}"):
        parse_peers(f"# first\n{line}\n")


def test_a_name_listed_twice_is_refused() -> None:
    with pytest.raises(PeerError, match="listed twice"):
        parse_peers(f"a 198.18.0.2:1 sha256:{FP}\na 198.18.0.3:1 sha256:{OTHER}\n")


def test_one_certificate_under_two_names_is_refused() -> None:
    with pytest.raises(PeerError, match="same certificate as a"):
        parse_peers(f"a 198.18.0.2:1 sha256:{FP}\nb 198.18.0.3:1 sha256:{FP_COLONS}\n")


def test_an_empty_list_is_no_peers() -> None:
    assert parse_peers("# nobody\n") == []


def _peers() -> list[Peer]:
    return parse_peers(
        f"hostb 198.18.77.2:7385 sha256:{'ab' * 32}\n"
        f"hostc 198.18.77.3:7000 sha256:{'cd' * 32}\n"
        f"hostd [2001:db8::4]:7385 sha256:{'ef' * 32}\n"
    )


@pytest.mark.parametrize(
    ("word", "name"),
    [
        ("hostb", "hostb"),
        ("hostc:7000", "hostc"),
        ("198.18.77.2", "hostb"),
        ("198.18.77.3:7000", "hostc"),
        ("[2001:db8::4]:7385", "hostd"),
        ("[2001:db8::4]", "hostd"),
    ],
)
def test_a_peer_is_named_by_name_name_and_port_or_address(word: str, name: str) -> None:
    found = find_peer(_peers(), word)
    assert found is not None and found.name == name


@pytest.mark.parametrize(
    "word", ["hoste", "hostc:7385", "198.18.77.9", "198.18.77.3:7385", "running", ""]
)
def test_a_word_that_names_no_peer_finds_none(word: str) -> None:
    assert find_peer(_peers(), word) is None
