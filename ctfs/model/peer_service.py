"""The peer listener, and connecting to a peer: who may talk to this host, and how.

Invariants:
- The listener runs exactly while at least one peer is configured.
- Nothing a connection sends is acted on, and nothing is written, before the
  other side is a configured peer: by its client certificate's fingerprint, or,
  on a connection without one, the single ``introduce`` request whose
  certificate must have a configured peer's fingerprint (then, and only then,
  it is kept as ``STATE/.peer-certs/NAME.pem``, NAME being the configured one).
- Certificates of peers no longer configured (or configured with another
  fingerprint) are removed, so they no longer verify.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ctfs.errors import CtfsError
from ctfs.kernel.api import PeerLinkError
from ctfs.model.peers import PeerBook
from ctfs.policy.peers import Peer

log = logging.getLogger(__name__)

CERTS = ".peer-certs"
# The introduction after the handshake (whose own limit is the link's): a peer that
# does not finish it in this long is dropped (it holds a connection slot meanwhile).
INTRODUCTION_TIMEOUT_S = 10.0
# A listener that could not bind (its address not up yet) tries again this often.
RETRY_BIND_S = 5.0
MAX_CERT_PEM = 16384


# What a request beyond "hello" becomes: it has the connection from then on.
Handler = Callable[[trio.abc.Stream, Peer, dict[str, Any]], Awaitable[None]]


class PeerService:
    def __init__(self, book: PeerBook, state_dir: Path) -> None:
        self.book = book
        self.links = book.links
        self.certs = state_dir / CERTS
        self.certs.mkdir(mode=0o700, exist_ok=True)
        # Set by the host: "migrate" (see ctfs.model.immigration).
        self.handlers: dict[str, Handler] = {}

    # ------------------------------------------------------------- listening

    async def run(self) -> None:
        """Listen while peers are configured; follow every change of the list."""
        while True:
            changed = self.book.changed
            await trio.to_thread.run_sync(self._prune)
            if self.book.peers:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._listen)
                    await changed.wait()
                    nursery.cancel_scope.cancel()
            else:
                await changed.wait()

    async def _listen(self) -> None:
        own = self.book.own
        while True:
            try:
                listeners = await trio.open_tcp_listeners(own.port, host=own.host)
            except OSError as exc:
                log.error("peers: cannot listen on %s:%d: %s", own.host, own.port, exc)
                await trio.sleep(RETRY_BIND_S)
                continue
            log.info(
                "peers: listening on %s:%d for %d peers", own.host, own.port, len(self.book.peers)
            )
            await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, tcp: trio.SocketStream) -> None:
        where = _remote(tcp)
        try:
            pems = await trio.to_thread.run_sync(self._trusted_pems)
            stream, fingerprint = await self.links.accept(tcp, self.book.me, pems)
        except (trio.BrokenResourceError, trio.TooSlowError, PeerLinkError, OSError) as exc:
            log.warning("peers: dropped %s: %s", where, exc or type(exc).__name__)
            await trio.aclose_forcefully(tcp)
            return
        try:
            if fingerprint is None:
                with trio.fail_after(INTRODUCTION_TIMEOUT_S):
                    await self._introduction(stream, where)
                return
            peer = next((p for p in self.book.peers if p.fingerprint == fingerprint), None)
            if peer is None:
                log.warning(
                    "peers: refused %s: certificate sha256:%s is no peer's", where, fingerprint
                )
                return
            await self._requests(stream, peer)
        except (trio.BrokenResourceError, trio.TooSlowError, PeerLinkError, OSError) as exc:
            log.warning("peers: dropped %s: %s", where, exc or type(exc).__name__)
        finally:
            await trio.aclose_forcefully(stream)

    async def _introduction(self, stream: trio.abc.Stream, where: str) -> None:
        message = await self.links.receive(stream)
        name, pem = message.get("name"), message.get("cert")
        peer = self.book.find(name) if isinstance(name, str) else None
        reason = None
        if message.get("op") != "introduce" or not isinstance(pem, str) or len(pem) > MAX_CERT_PEM:
            reason = "an unauthenticated connection may only introduce a peer"
        elif peer is None:
            reason = f"{name!r} is not a configured peer"
        else:
            try:
                found = self.links.fingerprint_of(pem)
            except ValueError:
                found = "(not a certificate)"
            if found != peer.fingerprint:
                reason = f"certificate sha256:{found} is not {peer.name}'s"
        if reason is not None or peer is None or not isinstance(pem, str):
            log.warning("peers: refused an introduction from %s: %s", where, reason)
            await self.links.send(stream, {"error": reason})
            return
        await trio.to_thread.run_sync(self._keep, peer, pem)
        await self.links.send(stream, {"ok": True})

    async def _requests(self, stream: trio.abc.Stream, peer: Peer) -> None:
        while True:
            try:
                message = await self.links.receive(stream)
            except PeerLinkError:
                return  # the peer closed the connection
            op = message.get("op")
            handler = self.handlers.get(op) if isinstance(op, str) else None
            if op == "hello":
                await self.links.send(stream, {"ok": True, "name": self.book.own.name})
            elif handler is not None:
                await handler(stream, peer, message)
                return
            else:
                log.warning(
                    "peers: %s asked for %r, which this ctfsd does not do",
                    peer.name,
                    message.get("op"),
                )
                await self.links.send(stream, {"error": "unknown request"})

    # ------------------------------------------------------------ connecting

    async def connect(self, peer: Peer) -> trio.abc.Stream:
        """An authenticated stream to ``peer``: introduced first, then with our
        certificate.  CtfsError (EHOSTUNREACH, EACCES) says why not."""
        own = self.book.own
        try:
            stream = await self.links.connect(peer.host, peer.port, peer.fingerprint, None)
            async with stream:
                pem = await trio.to_thread.run_sync(self.book.me.cert.read_text)
                await self.links.send(stream, {"op": "introduce", "name": own.name, "cert": pem})
                answer = await self.links.receive(stream)
            if not answer.get("ok"):
                raise CtfsError(
                    errno.EACCES, f"{peer.name} refused this host: {answer.get('error')}"
                )
            stream = await self.links.connect(peer.host, peer.port, peer.fingerprint, self.book.me)
            await self.links.send(stream, {"op": "hello"})
            answer = await self.links.receive(stream)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise CtfsError(
                errno.EHOSTUNREACH, f"cannot reach {peer.name} at {peer.host}:{peer.port}: {exc}"
            ) from exc
        except PeerLinkError as exc:
            raise CtfsError(errno.EACCES, f"{peer.name}: {exc}") from exc
        if answer.get("name") != peer.name:
            await trio.aclose_forcefully(stream)
            raise CtfsError(errno.EACCES, f"{peer.name} calls itself {answer.get('name')!r}")
        return stream

    # ----------------------------------------------------------- certificates

    def cert_of(self, peer: Peer) -> Path:
        """Where the certificate ``peer`` introduced itself with is kept."""
        return self.certs / f"{peer.name}.pem"

    def _trusted_pems(self) -> list[str]:
        pems = []
        for peer in self.book.peers:
            with contextlib.suppress(FileNotFoundError):
                pems.append((self.certs / f"{peer.name}.pem").read_text())
        return pems

    def _keep(self, peer: Peer, pem: str) -> None:
        path = self.certs / f"{peer.name}.pem"  # the configured name: a host name, no '/'
        new = path.with_suffix(".new")
        with open(new, "w") as f:
            f.write(pem)
        new.replace(path)
        log.info("peers: %s introduced itself (sha256:%s)", peer.name, peer.fingerprint)

    def _prune(self) -> None:
        wanted = {f"{peer.name}.pem": peer.fingerprint for peer in self.book.peers}
        for entry in self.certs.iterdir():
            keep = False
            if entry.name in wanted and entry.is_file() and not entry.is_symlink():
                with contextlib.suppress(OSError, ValueError):
                    keep = self.links.fingerprint_of(entry.read_text()) == wanted[entry.name]
            if not keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry)


def _remote(tcp: trio.SocketStream) -> str:
    with contextlib.suppress(OSError):
        host, port, *_ = tcp.socket.getpeername()
        return f"{host}:{port}"
    return "a peer"
