"""Moving a container to a peer: the source's side (the target's: ``immigration``).

The conversation, on one stream authenticated both ways (``PeerService.connect``);
every step the source sends is answered ``{"ok": true}`` or ``{"error", "errno"}``:

1. ``migrate`` {ctid, state, settings, memory}: the target refuses early (CTID, id
   range or an address taken there, no checkpoints there) before any data moves.
2. ``area``: the full btrfs stream of a read-only snapshot, taken while it runs.
3. A running container is frozen here and dumped: into its dump file with its
   memory (stop-and-copy, ``checkpoint.freeze``), or without it, CRIU then serving
   the pages (post-copy, ``postcopy.ServingDump``); then ``area`` again, only the
   difference since the first snapshot, and ``dump``, the dump file.  A frozen
   container sends its dump file as it is; a stopped one only its area.
4. ``finish`` {events, page_server}: the target holds everything, not yet as a
   container.
5. ``go``: the commit point.  The source has marked it handed over
   (``handover``) and stopped routing and proxying its addresses; the target
   makes it a container, restores a running one, announces its addresses and
   answers.  Then ``replay``: its clients' segments that came here meanwhile.

Invariants:
- Until ``go`` is sent, every failure leaves the container here as it was: a
  frozen-for-the-move one is restored from its dump (or, post-copy, CRIU is
  ended and it is thawed); the target drops what it received (it never saw
  ``go``).
- After ``go`` the container resumes here only when the target answers that its
  restore failed and that it removed its copy (nothing of it runs there).  With
  no answer it stays frozen here, marked, and a restore here asks the target
  first (``handover``): never twice, never lost.
- A moved container is removed here only after the target said it runs there
  (post-copy: and every page was served).
"""

from __future__ import annotations

import base64
import errno
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ctfs.errors import CtfsError, kernel_failed
from ctfs.kernel.api import CriuTls, LazyPages, PeerLinkError, SegmentCapture, StorageError
from ctfs.model import checkpoint, handover, lifecycle, postcopy, relay
from ctfs.model.container import Container, State
from ctfs.model.peer_service import PeerService
from ctfs.policy.peers import Peer

log = logging.getLogger(__name__)

SNAPSHOTS = (".migration-1", ".migration-2")
# The target's certificate, for CRIU's page server (post-copy).
PEER_CERT = ".migration-peer.pem"
POST_COPY, STOP_AND_COPY = "post-copy", "stop-and-copy"
# The target's restore runs within CRIU's own limit; its answer comes within this.
ANSWER_TIMEOUT_S = checkpoint.CRIU_TIMEOUT_S + 60
_LINK_ERRORS = (PeerLinkError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class Refused(CtfsError):
    """The target answered a step with an error; ``reply`` is its answer."""

    def __init__(self, errno_value: int, sentence: str, reply: dict[str, Any]) -> None:
        super().__init__(errno_value, sentence)
        self.reply = reply


class Move:
    """One move under way, as the source sees it."""

    def __init__(self, ct: Container, peer: Peer, stream: trio.abc.Stream) -> None:
        self.ct = ct
        self.peer = peer
        self.stream = stream
        self.links = ct.backends.peer_links
        self.began = time.monotonic()
        self.frozen_at: float | None = None
        # Its clients' segments that arrive while it is frozen (see replay_segments).
        self.capture: SegmentCapture | None = None

    async def capture_segments(self) -> None:
        ct = self.ct
        if not ct.addresses:
            return
        try:
            self.capture = await trio.to_thread.run_sync(
                ct.backends.network.capture_segments, ct.addresses
            )
        except OSError as exc:
            ct.events.record(f"cannot watch for its clients' segments: {exc}", logging.WARNING)

    async def replay_segments(self, summary: str) -> None:
        """Give the target its clients' segments that came here while it was frozen:
        delivered again, they make the clients go on at once, not after a back-off.
        ``summary`` (the move's times) goes along, for the target's events."""
        packets: list[bytes] = []
        if self.capture is not None:
            packets = await trio.to_thread.run_sync(self.capture.stop)
            self.capture = None
        encoded = [base64.b64encode(p).decode() for p in packets]
        try:
            message = {"op": "replay", "segments": encoded, "summary": summary}
            await self.links.send(self.stream, message)
        except _LINK_ERRORS as exc:
            log.warning(
                "CT %d: cannot give %s its clients' segments: %s",
                self.ct.ctid,
                self.peer.name,
                exc,
            )

    async def stop_capture(self) -> None:
        if self.capture is not None:
            await trio.to_thread.run_sync(self.capture.stop)
            self.capture = None

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a step; the target's answer.  CtfsError if it refused or is gone."""
        try:
            await self.links.send(self.stream, message)
        except _LINK_ERRORS as exc:
            raise self.broken(exc) from exc
        return await self.answer()

    async def answer(self, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        try:
            with trio.fail_after(timeout):
                reply = await self.links.receive(self.stream)
        except (*_LINK_ERRORS, trio.TooSlowError) as exc:
            raise self.broken(exc) from exc
        if not reply.get("ok"):
            code = reply.get("errno")
            raise Refused(
                code if isinstance(code, int) and 0 < code < 4096 else errno.EIO,
                f"{self.peer.name} refused: {reply.get('error', 'no reason given')}",
                reply,
            )
        return reply

    def broken(self, exc: BaseException) -> CtfsError:
        return CtfsError(
            errno.EHOSTUNREACH,
            f"the link to {self.peer.name} broke: {exc or type(exc).__name__}",
        )

    async def send_area(self, snapshot: Path, parent: Path | None) -> None:
        streams = self.ct.backends.area_streams
        began = time.monotonic()
        try:
            await trio.to_thread.run_sync(streams.snapshot_readonly, self.ct.root, snapshot)
            sent = await relay.send_area(self.links, self.stream, streams, snapshot, parent)
        except relay.LinkBroken as exc:
            raise self.broken(exc) from exc
        except (StorageError, relay.RelayError) as exc:
            raise kernel_failed(f"cannot send the private area: {exc}") from exc
        await self.answer()
        what = "the difference since" if parent else "while it runs"
        self.ct.events.record(f"migration: private area sent {what}: {_amount(sent, began)}")

    async def send_dump(self) -> None:
        began = time.monotonic()
        await self.ask({"op": "dump"})
        try:
            sent = await relay.send_file(self.links, self.stream, self.ct.dump_path)
        except relay.LinkBroken as exc:
            raise self.broken(exc) from exc
        except relay.RelayError as exc:
            raise kernel_failed(f"cannot send the dump file: {exc}") from exc
        await self.answer()
        self.ct.events.record(f"migration: dump file sent: {_amount(sent, began)}")


async def migrate(
    ct: Container,
    peer: Peer,
    service: PeerService,
    forget: Callable[[Container], Awaitable[None]],
    post_copy: bool = True,
) -> None:
    """Move ``ct`` to ``peer``; returns once it is there and gone from here.

    ``forget`` removes a moved container from this host for good; ``post_copy``:
    a running one's memory follows after the restore (else it goes with the dump).
    """
    state = ct.state
    if state not in (State.RUNNING, State.STOPPED, State.FROZEN):
        raise CtfsError(errno.EBUSY, f"the container is {state.value}")
    async with ct.changing(State.MIGRATING):
        ct.events.record(f"migration: to {peer.name} at {peer.host}:{peer.port}, {state.value}")
        try:
            # A failure's sentence reaches events through the state file's writer.
            moved = await _move(ct, peer, service, state, post_copy)
        finally:
            await trio.to_thread.run_sync(drop_snapshots, ct)
        if moved:
            await forget(ct)


async def _move(
    ct: Container, peer: Peer, service: PeerService, state: State, post_copy: bool
) -> bool:
    stream = await service.connect(peer)
    async with stream:
        move = Move(ct, peer, stream)
        lazy = post_copy and state is State.RUNNING
        await move.ask(
            {
                "op": "migrate",
                "ctid": ct.ctid,
                "state": state.value,
                "settings": ct.settings,
                "memory": POST_COPY if lazy else STOP_AND_COPY,
            }
        )
        first, second = (ct.dir / name for name in SNAPSHOTS)
        await trio.to_thread.run_sync(drop_snapshots, ct)
        await move.ask({"op": "area"})
        await move.send_area(first, None)
        if state is State.RUNNING:
            await move.capture_segments()
        try:
            return await _move_frozen(move, service, first, second, state, lazy)
        finally:
            await move.stop_capture()


async def _move_frozen(
    move: Move, service: PeerService, first: Path, second: Path, state: State, lazy: bool
) -> bool:
    """From the freeze (of a running container) to the hand-over."""
    ct, peer = move.ct, move.peer
    if lazy:
        return await _move_post_copy(move, service, first, second)
    if state is State.RUNNING:
        move.frozen_at = time.monotonic()
        await checkpoint.freeze(ct)  # a failure: it runs on here
        try:
            await move.ask({"op": "area"})
            await move.send_area(second, first)
            await move.send_dump()
            await move.ask({"op": "finish", "events": _events_text(ct)})
        except CtfsError:
            await _resume_here(ct, "before the target had it")
            raise
    else:
        if state is State.FROZEN:
            await move.send_dump()
        await move.ask({"op": "finish", "events": _events_text(ct)})

    async def resume() -> None:
        if state is State.RUNNING:
            await _resume_here(ct, f"after {peer.name}'s restore failed")

    return await _commit(move, state, resume)


async def _move_post_copy(move: Move, service: PeerService, first: Path, second: Path) -> bool:
    """Frozen, the rest of the private area and the images without memory cross;
    the target restores, and its processes fetch their pages from here."""
    ct = move.ct
    own = service.book
    peer_cert = ct.dir / PEER_CERT
    pem = move.links.peer_pem(move.stream)
    await trio.to_thread.run_sync(peer_cert.write_text, pem)
    port = await trio.to_thread.run_sync(ct.backends.checkpointer.page_server_port, own.own.host)
    tls = CriuTls(cert=own.me.cert, key=own.me.key, peer_cert=peer_cert)
    serving = postcopy.ServingDump(ct, LazyPages(own.own.host, port, tls))
    failed: list[CtfsError] = []
    moved = False
    # CRIU serves the pages in the nursery; errors leave it as they are, not grouped.
    async with trio.open_nursery() as nursery:
        try:
            moved = await _serve_and_hand_over(move, serving, nursery, first, second, port)
        except CtfsError as exc:
            failed.append(exc)
    if failed:
        raise failed[0]
    return moved


async def _serve_and_hand_over(
    move: Move,
    serving: postcopy.ServingDump,
    nursery: trio.Nursery,
    first: Path,
    second: Path,
    port: int,
) -> bool:
    ct, peer = move.ct, move.peer
    move.frozen_at = time.monotonic()
    await serving.start(nursery)  # a failure: it runs on here
    try:
        await move.ask({"op": "area"})
        await move.send_area(second, first)
        await move.send_dump()
        await move.ask({"op": "finish", "events": _events_text(ct), "page_server": port})
    except CtfsError:
        await serving.abort()
        ct.events.record("migration failed before the target had it; it runs here again")
        raise

    async def resume() -> None:
        serving.committed = False  # nothing of it runs there: see _commit
        await serving.abort()
        ct.events.record(f"migration failed: {peer.name}'s restore failed; it runs here again")

    serving.commit()
    moved = await _commit(move, State.RUNNING, resume)
    began = time.monotonic()
    await serving.finish()
    ct.events.record(
        f"migration: memory served after the restore: {_amount(serving.served, began)}"
    )
    return moved


async def _commit(move: Move, state: State, resume: Callable[[], Awaitable[None]]) -> bool:
    """Hand the container over: True once it is the target's."""
    ct, peer = move.ct, move.peer
    if state is State.RUNNING:
        # Kept if the target never confirms: a restore here asks it first (state.py).
        await trio.to_thread.run_sync(lambda: ct.persist(**{handover.HANDED_TO: peer.name}))
    if ct.addresses:
        await lifecycle.remove_network(ct)  # the target routes and proxies them now
    try:
        reply = await move.ask({"op": "go"})
    except CtfsError as exc:
        if isinstance(exc, Refused) and exc.reply.get("removed") is True:
            # The target's restore failed, and it removed its copy: nothing runs there.
            await trio.to_thread.run_sync(handover.forget, ct)
            await resume()
            raise
        if state is State.RUNNING:
            ct.events.record(
                f"migration: handed to {peer.name}, which did not confirm ({exc.sentence}); "
                f"it stays frozen here, and a restore here asks {peer.name} first",
                logging.ERROR,
            )
        raise kernel_failed(f"{peer.name} did not confirm the move: {exc.sentence}") from exc
    done = time.monotonic()
    summary = f"migration: now on {peer.name}, total {(done - move.began) * 1000:.0f} ms"
    if move.frozen_at is not None:
        summary += (
            f", frozen {(done - move.frozen_at) * 1000:.0f} ms "
            f"(restore there {reply.get('restore_ms', '?')} ms)"
        )
    ct.events.record(summary)
    if state is State.RUNNING:
        await move.replay_segments(summary)  # the target waits for them (none, at least)
    return True


async def _resume_here(ct: Container, when: str) -> None:
    """The move failed with the container frozen here: restore it from its dump."""
    try:
        await checkpoint.restore(ct)
    except CtfsError as exc:
        ct.events.record(
            f"migration failed {when}, and restoring it here failed too: {exc.sentence}; "
            "it stays frozen with its dump",
            logging.ERROR,
        )
        return
    ct.events.record(f"migration failed {when}; it runs here again")


def _events_text(ct: Container) -> str:
    try:
        return ct.events.path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _amount(size: int, began: float) -> str:
    took = max(time.monotonic() - began, 1e-6)
    return f"{size} bytes in {took * 1000:.0f} ms ({size / took / 1e6:.1f} MB/s)"


def drop_snapshots(ct: Container) -> None:
    """The read-only snapshots a move took (or an interrupted one left)."""
    (ct.dir / PEER_CERT).unlink(missing_ok=True)
    for name in SNAPSHOTS:
        path = ct.dir / name
        if path.exists():
            try:
                ct.backends.storage.delete(path)
            except StorageError as exc:
                log.error("CT %d: cannot delete %s: %s", ct.ctid, path, exc)
                shutil.rmtree(path, ignore_errors=True)
