"""What moving containers between peers takes (part of ``ctfs.kernel.api``, which
re-exports them): this host's key pair as files, how a link fails, and the
Protocols of the peer link and of private-area streams.  No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio


@dataclass(frozen=True)
class Identity:
    """This host's key pair for its peers (see ``ctfs.kernel.identity``)."""

    key: Path
    cert: Path
    fingerprint: str  # SHA-256 of the certificate's DER form, 64 lower-case hex digits


class PeerLinkError(Exception):
    """The other side is not who it must be, or broke the protocol."""


class PeerLinks(Protocol):
    """Talking to other ctfsd: this host's key pair, and TLS pinned by fingerprint.

    A stream it gives is authenticated as far as its method says; messages are JSON
    objects, raw data goes in chunks.  PeerLinkError: the other side is not who it
    must be, or broke the protocol; OSError and trio's errors: the connection failed.
    """

    def identity(self, state_dir: Path) -> Identity:
        """The key pair kept in ``state_dir``, made at the first call."""

    def fingerprint_of(self, pem: str) -> str:
        """A PEM certificate's SHA-256 fingerprint; ValueError if it is not one."""

    async def accept(
        self, tcp: trio.SocketStream, me: Identity, trusted_pems: Sequence[str]
    ) -> tuple[trio.abc.Stream, str | None]:
        """TLS as the server; the client's fingerprint, verified against
        ``trusted_pems`` (None: it presented no certificate)."""

    async def connect(
        self, host: str, port: int, fingerprint: str, me: Identity | None
    ) -> trio.abc.Stream:
        """TLS to a server whose certificate has ``fingerprint`` (checked before
        anything is sent), presenting ``me`` if given."""

    async def send(self, stream: trio.abc.Stream, message: dict[str, Any]) -> None: ...

    async def receive(self, stream: trio.abc.Stream) -> dict[str, Any]: ...

    async def send_chunk(self, stream: trio.abc.Stream, data: bytes) -> None:
        """One chunk of raw data; an empty one ends it."""

    async def receive_chunk(self, stream: trio.abc.Stream) -> bytes:
        """The next chunk of raw data; empty when it ended."""

    def peer_pem(self, stream: trio.abc.Stream) -> str:
        """The certificate the other side of ``stream`` presented, as PEM."""


class AreaStreams(Protocol):
    """A private area as btrfs send streams, in passes (``ctfs.kernel.btrfs_stream``).

    Blocking calls, each within a time limit; StorageError says why one failed.
    """

    def snapshot_readonly(self, source: Path, dest: Path) -> None: ...

    def send(self, snapshot: Path, out_fd: int, parent: Path | None) -> None:
        """The stream of ``snapshot`` (the difference from ``parent``) into ``out_fd``."""

    def receive(self, in_fd: int, into: Path, parent: Path | None) -> Path:
        """One stream from ``in_fd`` into ``into``; the new read-only subvolume."""

    def make_writable(self, received: Path, dest: Path) -> None: ...
