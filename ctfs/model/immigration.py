"""Taking a container in from a peer: the target's side of ``ctfs.model.migration``.

Invariants:
- The peer is authenticated before this runs (``PeerService``); still, what it
  sends is input: the offer is checked whole before anything is written, no path
  comes from it (only a validated CTID), and the private area is received under
  ``btrfs receive``'s chroot (``ctfs.kernel.btrfs_stream``).
- From the accepted offer on, the CTID, id range and addresses are reserved
  (``Host.arriving``): a mkdir or a second offer meanwhile is refused.
- ``ctid.conf`` is written only at ``go``: until then the directory is an
  incomplete one, removed here on any failure and by ``Host.discover`` after a
  crash, so a half-received container never becomes one.
- A restore that fails removes the copy and answers ``removed``: the source
  then resumes its own.  Nothing of it runs here then.
"""

from __future__ import annotations

import base64
import errno
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import trio

from ctfs import conffile
from ctfs.errors import CtfsError, busy, invalid, kernel_failed
from ctfs.kernel.api import (
    Backends,
    CriuTls,
    IPAddress,
    LazyPages,
    PeerLinkError,
    StorageError,
)
from ctfs.model import apply, checkpoint, postcopy, relay
from ctfs.model.container import Container, State
from ctfs.model.context import Context
from ctfs.model.events import MAX_BYTES
from ctfs.model.migration import POST_COPY, STOP_AND_COPY
from ctfs.model.peer_service import PeerService
from ctfs.policy import idmap, netaddr
from ctfs.policy.peers import Peer
from ctfs.policy.values import parse_ctid


class Host(Protocol):
    """What an arrival needs of ``ctfs.model.host.Host`` (which imports this module)."""

    backends: Backends
    ctx: Context
    containers: dict[int, Container]
    arriving: dict[int, dict[str, str]]

    def id_bases_taken(self) -> set[int]: ...

    def address_owner(self, address: IPAddress) -> int | None: ...

    async def remove(self, container: Container) -> None: ...

    def remove_area(self, directory: Path) -> None: ...


log = logging.getLogger(__name__)

STAGING = ".arriving"
# Between two steps the source may be freezing and dumping (CRIU's own limit).
STEP_TIMEOUT_S = checkpoint.CRIU_TIMEOUT_S + 60
# After "finish" the source only has to remove its routes and say "go".
GO_TIMEOUT_S = 60.0
# After the restore, the source gives its clients' segments at once (or nothing).
REPLAY_TIMEOUT_S = 5.0
MAX_SEGMENTS = 4096
STATES = (State.RUNNING.value, State.STOPPED.value, State.FROZEN.value)
_LINK_ERRORS = (PeerLinkError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def check_offer(host: Host, offer: dict[str, Any]) -> tuple[int, dict[str, str], str]:
    """The CTID, settings and state of an acceptable offer; CtfsError if not."""
    raw_ctid, state, settings = offer.get("ctid"), offer.get("state"), offer.get("settings")
    ctid = parse_ctid(str(raw_ctid)) if isinstance(raw_ctid, int) else None
    if ctid is None:
        raise invalid(f"{raw_ctid!r} is not a CTID")
    if state not in STATES:
        raise invalid(f"a container cannot arrive {state!r}")
    if not isinstance(settings, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in settings.items()
    ):
        raise invalid("its settings are not a ctid.conf")
    if conffile.parse(conffile.render(settings)) != settings:
        raise invalid("its settings are not a ctid.conf")
    if ctid in host.containers or ctid in host.arriving:
        raise CtfsError(errno.EEXIST, f"container {ctid} exists here")
    range_value = settings.get(idmap.KEY, idmap.HOST)
    base = idmap.base_of(settings)
    if range_value != idmap.HOST and base is None:
        raise invalid(f"its id range {range_value!r} is not one ctfs gives")
    if base is not None and base in host.id_bases_taken():
        raise busy(f"its id range {range_value} is taken here")
    try:
        addresses = netaddr.from_setting(settings.get("IP_ADDRESS", ""))
    except (CtfsError, ValueError) as exc:
        raise invalid(f"its addresses are not valid: {exc}") from None
    for address in addresses:
        owner = host.address_owner(address)
        if owner is not None:
            raise CtfsError(errno.EADDRINUSE, f"{address} is container {owner}'s here")
    if state != State.STOPPED.value and host.backends.checkpointer.unavailable is not None:
        raise CtfsError(
            errno.EOPNOTSUPP,
            f"checkpoints are unavailable here: {host.backends.checkpointer.unavailable}",
        )
    return ctid, settings, state


async def receive(
    host: Host,
    service: PeerService,
    stream: trio.abc.Stream,
    peer: Peer,
    offer: dict[str, Any],
) -> None:
    """Answer a ``migrate`` offer from ``peer`` and, if accepted, take the container."""
    links = host.backends.peer_links
    await host.ctx.checkpoints_probed.wait()  # "unavailable" means "not checked yet" before
    try:
        ctid, settings, state = check_offer(host, offer)
        if offer.get("memory", STOP_AND_COPY) not in (POST_COPY, STOP_AND_COPY):
            raise invalid(f"its memory cannot come {offer.get('memory')!r}")
    except CtfsError as exc:
        log.warning("migration: refused a container from %s: %s", peer.name, exc.sentence)
        await links.send(stream, {"error": exc.sentence, "errno": exc.errno_value})
        return
    host.arriving[ctid] = settings
    ct = Container(host.ctx, ctid)
    ct.settings = dict(settings)
    arrival = Arrival(host, ct, peer, stream)
    if offer.get("memory") == POST_COPY:
        arrival.lazy_tls = CriuTls(
            cert=service.book.me.cert, key=service.book.me.key, peer_cert=service.cert_of(peer)
        )
    try:
        await arrival.run(state)
    finally:
        host.arriving.pop(ctid, None)


class Arrival:
    """One container arriving; see the module's invariants."""

    def __init__(self, host: Host, ct: Container, peer: Peer, stream: trio.abc.Stream) -> None:
        self.host, self.ct, self.peer, self.stream = host, ct, peer, stream
        self.links = host.backends.peer_links
        self.staging = ct.dir / STAGING
        # Post-copy: how to reach the source's page server (from "finish").
        self.lazy_tls: CriuTls | None = None
        self.lazy: LazyPages | None = None

    async def run(self, state: str) -> None:
        try:
            await trio.to_thread.run_sync(self._make_dirs)
            await self.reply({"ok": True})
            await self._take_data()
            go = await self.next(GO_TIMEOUT_S)
            if go.get("op") != "go":
                raise invalid(f"expected go, not {go.get('op')!r}")
        except (CtfsError, relay.RelayError, StorageError, OSError, trio.TooSlowError) as exc:
            reason = exc.sentence if isinstance(exc, CtfsError) else str(exc) or type(exc).__name__
            log.warning(
                "migration: CT %d from %s abandoned: %s", self.ct.ctid, self.peer.name, reason
            )
            await self._drop()
            await self.reply({"error": reason, "errno": errno.EIO})
            return
        await self._become_container(state)

    async def next(self, timeout: float = STEP_TIMEOUT_S) -> dict[str, Any]:
        try:
            with trio.fail_after(timeout):
                return await self.links.receive(self.stream)
        except _LINK_ERRORS as exc:
            raise kernel_failed(f"the link to {self.peer.name} broke: {exc}") from exc

    async def reply(self, message: dict[str, Any]) -> None:
        try:
            await self.links.send(self.stream, message)
        except _LINK_ERRORS as exc:
            log.warning("migration: cannot answer %s: %s", self.peer.name, exc)

    def _make_dirs(self) -> None:
        self.ct.dir.mkdir(mode=0o700)
        self.staging.mkdir(mode=0o700)

    async def _take_data(self) -> None:
        """The private area's passes, the dump file and the events, until ``finish``."""
        parent: Path | None = None
        streams = self.host.backends.area_streams
        while True:
            step = await self.next()
            op = step.get("op")
            if op == "area":
                await self.reply({"ok": True})
                parent, _ = await relay.receive_area(
                    self.links, self.stream, streams, self.staging, parent
                )
            elif op == "dump":
                await self.reply({"ok": True})
                await relay.receive_file(self.links, self.stream, self.ct.dump_path)
            elif op == "finish" and parent is not None:
                events = step.get("events")
                port = step.get("page_server")
                if self.lazy_tls is not None:
                    if not isinstance(port, int) or not 0 < port < 65536:
                        raise invalid(f"{port!r} is not the port of a page server")
                    self.lazy = LazyPages(self.peer.host, port, self.lazy_tls)
                await trio.to_thread.run_sync(self._settle, parent, events)
                await self.reply({"ok": True})
                return
            else:
                raise invalid(f"unexpected step {op!r}")
            await self.reply({"ok": True})

    def _settle(self, received: Path, events: object) -> None:
        """The private area writable at its place, its quota, the events before."""
        self.host.backends.area_streams.make_writable(received, self.ct.root)
        apply.disk_space(self.ct, self.ct.settings)
        if isinstance(events, str):
            self.ct.events.path.write_text(events[-MAX_BYTES:])

    async def _become_container(self, state: str) -> None:
        ct, host = self.ct, self.host
        try:
            ct.save(ct.settings)
        except OSError as exc:
            await self._drop()
            await self.reply({"error": f"cannot write ctid.conf: {exc}", "removed": True})
            return
        ct.frozen = ct.dump_path.exists()
        host.containers[ct.ctid] = ct
        host.arriving.pop(ct.ctid, None)
        await trio.to_thread.run_sync(ct.backends.storage.delete, self.staging)
        ct.events.record(f"migration: arrived from {self.peer.name}, {state}")
        if state != State.RUNNING.value:
            await self.reply({"ok": True})
            return
        began = time.monotonic()
        try:
            async with ct.changing(State.RESTORING, requested=False):
                await checkpoint.restore(ct, self.lazy)
        except CtfsError as exc:
            ct.events.record(f"migration: restore failed, removing this copy: {exc.sentence}")
            await host.remove(ct)
            await self.reply({"error": exc.sentence, "errno": exc.errno_value, "removed": True})
            return
        ms = round((time.monotonic() - began) * 1000)
        await self._announce(ct)
        await self.reply({"ok": True, "restore_ms": ms})
        if self.lazy is not None:

            async def pages() -> None:
                await postcopy.await_pages(ct)

            ct.ctx.start_soon(pages)
        await self._replay(ct)

    async def _announce(self, ct: Container) -> None:
        try:
            await trio.to_thread.run_sync(ct.backends.network.announce, ct.addresses)
        except OSError as exc:
            ct.events.record(f"cannot announce its addresses: {exc}", logging.WARNING)

    async def _replay(self, ct: Container) -> None:
        """Deliver the segments its clients sent while it was frozen (see
        ``ctfs.kernel.tcp_replay``): only TCP segments to its own addresses."""
        try:
            step = await self.next(REPLAY_TIMEOUT_S)
        except (CtfsError, trio.TooSlowError):
            return  # the source had none to give, or went
        if step.get("op") != "replay":
            return
        summary = step.get("summary")
        if isinstance(summary, str) and summary.startswith("migration: now on "):
            ct.events.record(" ".join(summary.split())[:500])  # the source's times
        raw = step.get("segments")
        if not isinstance(raw, list):
            return
        packets = []
        for item in raw[:MAX_SEGMENTS]:
            try:
                packet = base64.b64decode(item, validate=True) if isinstance(item, str) else b""
            except ValueError:
                continue
            if ct.backends.network.destination_of(packet) in ct.addresses:
                packets.append(packet)
        try:
            sent = await trio.to_thread.run_sync(ct.backends.network.replay_segments, packets)
        except OSError as exc:
            ct.events.record(f"cannot deliver its clients' segments again: {exc}", logging.WARNING)
            return
        if sent:
            ct.events.record(f"migration: {sent} segments of its clients delivered again")

    async def _drop(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.host.remove_area, self.ct.dir)
