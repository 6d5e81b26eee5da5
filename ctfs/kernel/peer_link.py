"""TLS between peers, pinned to certificate fingerprints, and the messages on it.

Python's ssl verifies a certificate only against trust anchors, never against a
fingerprint, so trust works in two steps (see ``ctfs.model.peer_service``):

- A client always checks the server's certificate itself, by fingerprint, right
  after the handshake (``connect``), before it sends anything.
- A server asks for a client certificate and verifies it against the
  certificates of the configured peers it holds (self-signed, so each is its own
  anchor).  A peer it holds none of yet first *introduces* itself on a connection
  without a client certificate: it sends its certificate, which the server keeps
  only if its fingerprint is a configured peer's.  A client certificate that
  verifies is checked by fingerprint again (``peer_fingerprint``).

Messages are JSON objects framed by a 4-byte big-endian length, at most
``MAX_MESSAGE`` bytes.  Raw data (a private area's send stream, a dump file) goes
as chunks framed the same way, at most ``MAX_MESSAGE`` bytes each, ended by an
empty one; both sides know from the protocol where data comes.  TLS 1.3 only.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from ctfs.kernel import identity
from ctfs.kernel.peer_values import Identity, PeerLinkError

MAX_MESSAGE = 1 << 20
# A handshake and the first message: a peer that does not finish them in this long
# is dropped (it holds a connection slot meanwhile).
HANDSHAKE_TIMEOUT_S = 10.0
# Unacknowledged data or silent keepalives for this long end a link (see
# notice_a_dead_peer); a living peer busy restoring still acknowledges.
DEAD_PEER_S = 20.0
KEEPALIVE_S = 5


def notice_a_dead_peer(tcp: trio.SocketStream) -> None:
    """A peer that vanished (powered off, cable pulled) breaks the link within about
    ``DEAD_PEER_S``, not after TCP's 15 minutes of retransmissions: a move waiting
    on it resumes the container at its source instead of hanging."""
    sock = tcp.socket
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(DEAD_PEER_S * 1000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def server_context(me: Identity, trusted_pems: Sequence[str]) -> ssl.SSLContext:
    """Ours for a listener: our certificate; client certificates verified against
    ``trusted_pems`` (none: no client certificate is asked for)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(me.cert, me.key)
    if trusted_pems:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata="".join(trusted_pems))
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(me: Identity | None) -> ssl.SSLContext:
    """Ours for connecting: the server is checked by fingerprint after the handshake;
    ``me`` is presented when the server asks (None: introduction, no certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned by fingerprint instead: see connect
    if me is not None:
        context.load_cert_chain(me.cert, me.key)
    return context


def peer_fingerprint(stream: trio.SSLStream[Any]) -> str | None:
    """SHA-256 of the certificate the other side presented (None: it presented none)."""
    der = stream.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest() if der else None


async def connect(
    host: str, port: int, fingerprint: str, me: Identity | None
) -> trio.SSLStream[trio.SocketStream]:
    """A TLS stream to the peer at ``host``:``port`` whose certificate has
    ``fingerprint``; PeerLinkError (nothing sent) if it has another."""
    with trio.fail_after(HANDSHAKE_TIMEOUT_S):
        tcp = await trio.open_tcp_stream(host, port)
    notice_a_dead_peer(tcp)
    stream = trio.SSLStream(tcp, client_context(me), server_side=False)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            await stream.do_handshake()
        found = peer_fingerprint(stream)
        if found != fingerprint:
            raise PeerLinkError(
                f"{host}:{port} presented certificate sha256:{found}, not the peer's"
            )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def send(stream: trio.abc.Stream, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise PeerLinkError(f"a message of {len(data)} bytes; at most {MAX_MESSAGE}")
    await stream.send_all(struct.pack(">I", len(data)) + data)


async def receive(stream: trio.abc.Stream) -> dict[str, Any]:
    """The next message; PeerLinkError if the other side closed or sent garbage."""
    (size,) = struct.unpack(">I", await _exactly(stream, 4))
    if size > MAX_MESSAGE:
        raise PeerLinkError(f"a message of {size} bytes; at most {MAX_MESSAGE}")
    try:
        message = json.loads(await _exactly(stream, size))
    except (UnicodeDecodeError, ValueError):
        raise PeerLinkError("a message that is not JSON") from None
    if not isinstance(message, dict):
        raise PeerLinkError("a message that is not a JSON object")
    return message


async def send_chunk(stream: trio.abc.Stream, data: bytes) -> None:
    """One chunk of raw data; an empty one ends the data."""
    if len(data) > MAX_MESSAGE:
        raise PeerLinkError(f"a chunk of {len(data)} bytes; at most {MAX_MESSAGE}")
    await stream.send_all(struct.pack(">I", len(data)) + data)


async def receive_chunk(stream: trio.abc.Stream) -> bytes:
    """The next chunk of raw data (empty: the data ended)."""
    (size,) = struct.unpack(">I", await _exactly(stream, 4))
    if size > MAX_MESSAGE:
        raise PeerLinkError(f"a chunk of {size} bytes; at most {MAX_MESSAGE}")
    return await _exactly(stream, size) if size else b""


async def _exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise PeerLinkError("the other side closed the connection")
        data += chunk
    return bytes(data)


async def accept(
    tcp: trio.SocketStream, me: Identity, trusted_pems: Sequence[str]
) -> tuple[trio.SSLStream[trio.SocketStream], str | None]:
    """The server side of a handshake on ``tcp``: the stream, and the fingerprint of
    the client's certificate (None: it presented none).  Within the time limit."""
    notice_a_dead_peer(tcp)
    stream = trio.SSLStream(tcp, server_context(me, trusted_pems), server_side=True)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT_S):
            await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, peer_fingerprint(stream)


class TlsPeerLinks:
    """The ``PeerLinks`` backend: this module and ``ctfs.kernel.identity``."""

    def identity(self, state_dir: Path) -> Identity:
        return identity.load_or_make(state_dir)

    def fingerprint_of(self, pem: str) -> str:
        return identity.fingerprint_of(pem)

    async def accept(
        self, tcp: trio.SocketStream, me: Identity, trusted_pems: Sequence[str]
    ) -> tuple[trio.abc.Stream, str | None]:
        return await accept(tcp, me, trusted_pems)

    async def connect(
        self, host: str, port: int, fingerprint: str, me: Identity | None
    ) -> trio.abc.Stream:
        return await connect(host, port, fingerprint, me)

    async def send(self, stream: trio.abc.Stream, message: dict[str, Any]) -> None:
        await send(stream, message)

    async def receive(self, stream: trio.abc.Stream) -> dict[str, Any]:
        return await receive(stream)

    async def send_chunk(self, stream: trio.abc.Stream, data: bytes) -> None:
        await send_chunk(stream, data)

    async def receive_chunk(self, stream: trio.abc.Stream) -> bytes:
        return await receive_chunk(stream)

    def peer_pem(self, stream: trio.abc.Stream) -> str:
        assert isinstance(stream, trio.SSLStream)
        der = stream.getpeercert(binary_form=True)
        if not der:
            raise PeerLinkError("the other side presented no certificate")
        return ssl.DER_cert_to_PEM_cert(der)
