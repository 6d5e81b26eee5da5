"""Peers: the other ctfsd a host trusts for migrations, and how they are written.

``/ctfs/peers`` holds one peer per line, ``NAME ADDRESS:PORT sha256:FINGERPRINT``;
``/ctfs/identity`` is this host's own line in the same form, so that
``cat /ctfs/identity`` on one host, appended to ``/ctfs/peers`` on the other, is
the whole of trusting it.  ``#`` starts a comment; blank lines are ignored.

Invariants: a parsed list has unique names, unique fingerprints and only valid
lines; a bad line refuses the whole list (``PeerError`` names the line and why).
The fingerprint is the SHA-256 of the peer's certificate (DER), as ``openssl x509
-fingerprint -sha256`` shows it, colons optional, case ignored.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# RFC 1123 host-name labels: what `hostname` accepts, and safe in any file name.
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
FINGERPRINT_RE = re.compile(r"^sha256:([0-9a-fA-F]{2}(:?[0-9a-fA-F]{2}){31})$")
MAX_PEERS = 256
DEFAULT_PORT = 7385


class PeerError(ValueError):
    """A peer line or list that is refused, with a sentence saying why."""


@dataclass(frozen=True)
class Peer:
    name: str
    host: str  # an IPv4 or IPv6 address
    port: int
    fingerprint: str  # 64 lower-case hex digits

    def line(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.name} {host}:{self.port} sha256:{self.fingerprint}"


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``ADDRESS[:PORT]`` (IPv6 always in brackets: ``2001:db8::3:7000`` could be
    either) to (address, port)."""
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise PeerError(f"{text!r} is not ADDRESS:PORT ([IPv6]:PORT for IPv6)")
        port_text = rest[1:]
    elif text.count(":") > 1:
        raise PeerError(f"{text!r}: an IPv6 address goes in brackets, [ADDRESS]:PORT")
    elif ":" in text:
        host, _, port_text = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise PeerError(f"{host!r} is not an IP address") from None
    if port_text == "":
        return str(address), default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise PeerError(f"{port_text!r} is not a port (1 to 65535)")
    return str(address), int(port_text)


def parse_fingerprint(text: str) -> str:
    match = FINGERPRINT_RE.match(text)
    if match is None:
        raise PeerError(f"{text!r} is not sha256: and 32 bytes in hex")
    return text[len("sha256:") :].replace(":", "").lower()


def parse_line(line: str) -> Peer:
    words = line.split()
    if len(words) != 3:
        raise PeerError("a peer is NAME ADDRESS:PORT sha256:FINGERPRINT")
    name, endpoint, fingerprint = words
    if NAME_RE.match(name) is None:
        raise PeerError(f"{name!r} is not a host name (letters, digits, '-')")
    host, port = parse_endpoint(endpoint)
    return Peer(name, host, port, parse_fingerprint(fingerprint))


def parse_peers(text: str) -> list[Peer]:
    """Every peer of ``text``, in order; PeerError for the first bad line."""
    peers: list[Peer] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        try:
            peer = parse_line(line)
        except PeerError as exc:
            raise PeerError(f"line {number}: {exc}") from None
        for known in peers:
            if known.name == peer.name:
                raise PeerError(f"line {number}: {peer.name} is listed twice")
            if known.fingerprint == peer.fingerprint:
                raise PeerError(f"line {number}: the same certificate as {known.name}")
        peers.append(peer)
        if len(peers) > MAX_PEERS:
            raise PeerError(f"more than {MAX_PEERS} peers")
    return peers


def render_peers(peers: list[Peer]) -> str:
    return "".join(f"{peer.line()}\n" for peer in peers)


def find_peer(peers: list[Peer], word: str) -> Peer | None:
    """The peer ``word`` names: its name, ``NAME:PORT``, or its ``ADDRESS[:PORT]``
    (without a port, any of that address's ports if only one peer has it)."""
    name, sep, port = word.partition(":")
    for peer in peers:
        if peer.name == word or (sep and peer.name == name and str(peer.port) == port):
            return peer
    try:
        address, given = parse_endpoint(word, -1)
    except PeerError:
        return None
    found = [p for p in peers if p.host == address and given in (-1, p.port)]
    return found[0] if len(found) == 1 else None
