"""The host: every container ctfs manages, created, destroyed and found again.

Invariant: a container exists exactly when ``STATE/<ctid>/ctid.conf`` exists.
``create`` writes that file last and ``destroy`` removes it first, so an
interruption leaves at most an incomplete directory, which ``discover`` removes.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import trio

from ctfs.errors import CtfsError, busy, invalid, kernel_failed, not_found
from ctfs.kernel.api import Backends, IPAddress, NetworkError, StorageError
from ctfs.model import checkpoint, handover, immigration, lifecycle, migration, resources
from ctfs.model.container import CONF, Container, State
from ctfs.model.context import Context
from ctfs.model.peer_service import PeerService
from ctfs.model.peers import PeerBook
from ctfs.policy import idmap, netaddr
from ctfs.policy.beancounters import Counter
from ctfs.policy.peers import Peer
from ctfs.policy.values import CTID_MAX, parse_ctid

log = logging.getLogger(__name__)

# How often ctfs samples the beancounters that have a barrier or a limit (or are
# above one), so that a crossing is noticed within this even when nobody reads.
BEANCOUNTER_SAMPLE_S = 5.0
# Every sample also reads all of one in this many running containers, so every
# figure's maxheld is sampled once a minute.  Reading all of all of them every 5 s
# cost 12-17 % of a CPU with 1000 containers (0.6-0.8 s a sample); a twelfth,
# about 0.04 s, costs under 1 %.
FULL_SAMPLE_EVERY = 12
# At most this share of the time goes to sampling: a sample that takes longer than
# this share of BEANCOUNTER_SAMPLE_S puts the next one off.  1000 containers with
# numfile, numtcpsock and the like bounded take about 0.4 s a sample (8 % every 5 s).
SAMPLE_SHARE = 0.02


class Host:
    def __init__(
        self,
        backends: Backends,
        state_dir: Path,
        default_template: str = "busybox",
        stop_timeout: float = 30.0,
        mountpoint: Path | None = None,
    ) -> None:
        self.backends = backends
        self.state_dir = state_dir
        self.default_template = default_template
        self.containers: dict[int, Container] = {}
        self.ctx = Context(
            backends, state_dir, stop_timeout, self.address_owner, self.id_bases_taken
        )
        self.ctx.mountpoint = mountpoint
        self.peers: PeerBook | None = None
        # A running container's memory follows it after the restore (see migration).
        self.post_copy = True
        # Containers arriving from a peer (see ctfs.model.immigration): their settings.
        self.arriving: dict[int, dict[str, str]] = {}

    def peer_book(self) -> PeerBook:
        """The identity and trusted peers (set up by ctfsd before it serves)."""
        if self.peers is None:
            raise CtfsError(errno.EOPNOTSUPP, "this ctfsd has no identity for peers")
        return self.peers

    def serve_peers(self, service: PeerService) -> None:
        """Move containers to and from the peers ``service`` talks to."""

        async def arrive(stream: trio.abc.Stream, peer: Peer, offer: dict[str, Any]) -> None:
            await immigration.receive(self, service, stream, peer, offer)

        async def leave(ct: Container, word: str) -> None:
            peer = self.peer_book().resolve(word)
            if peer is None:
                raise invalid(
                    f"unknown state {word!r}; write running, stopped, frozen or the name "
                    "of a peer in /ctfs/peers to move the container there"
                )
            await migration.migrate(ct, peer, service, self.remove, self.post_copy)

        async def has(stream: trio.abc.Stream, peer: Peer, message: dict[str, Any]) -> None:
            ctid = message.get("ctid")
            found = self.containers.get(ctid) if isinstance(ctid, int) else None
            state = found.state.value if found is not None else None
            await self.backends.peer_links.send(stream, {"ok": True, "state": state})

        async def confirm(ct: Container) -> None:
            await handover.confirm_not_there(ct, service)

        service.handlers["migrate"] = arrive
        service.handlers["has"] = has
        self.ctx.migrate = leave
        self.ctx.confirm_not_there = confirm

    def start(self, nursery: trio.Nursery) -> None:
        """Begin serving: load the containers on disk and watch the running ones."""
        self.ctx.nursery = nursery
        self.discover()
        nursery.start_soon(self._sample_beancounters_forever)
        nursery.start_soon(self._probe_checkpoints)

    def running_count(self) -> int:
        return sum(1 for ct in self.containers.values() if ct.state is State.RUNNING)

    def close(self) -> None:
        """Stop serving; running containers are left running."""
        self.backends.launcher.close()

    async def _probe_checkpoints(self) -> None:
        """Say at startup whether checkpoints work here, and if not, why."""
        engine = self.backends.checkpointer
        try:
            reason = await trio.to_thread.run_sync(engine.probe)
        finally:
            self.ctx.checkpoints_probed.set()
        if reason is None:
            log.info("checkpoints: CRIU %s at %s", engine.version, engine.binary)
        else:
            log.warning("checkpoints are unavailable: %s", reason)

    async def beancounters(self, ctids: list[int]) -> dict[int, dict[str, Counter]]:
        """Current beancounters of the running containers among ``ctids``."""
        return await resources.counters([self.containers[c] for c in ctids if c in self.containers])

    async def _sample_beancounters_forever(self) -> None:
        """Keep maxheld and crossing events current even when nobody reads the files.

        Every ``BEANCOUNTER_SAMPLE_S``: the watched resources of every running
        container (``resources.sample``), and everything of each
        ``FULL_SAMPLE_EVERY``-th one in turn; less often when sampling would take
        more than ``SAMPLE_SHARE`` of the time.
        """
        turn, pause = 0, BEANCOUNTER_SAMPLE_S
        while True:
            await trio.sleep(pause)
            containers = [self.containers[ctid] for ctid in self.sorted_ctids()]
            in_full = {ct for i, ct in enumerate(containers) if i % FULL_SAMPLE_EVERY == turn}
            turn = (turn + 1) % FULL_SAMPLE_EVERY
            began = trio.current_time()
            try:
                await resources.sample(containers, in_full)
            except Exception:
                log.exception("sampling beancounters failed; retrying later")
            took = trio.current_time() - began
            pause = max(BEANCOUNTER_SAMPLE_S, took / SAMPLE_SHARE - took)

    def get(self, ctid: int) -> Container | None:
        return self.containers.get(ctid)

    def sorted_ctids(self) -> list[int]:
        return sorted(self.containers)

    def address_owner(self, address: IPAddress) -> int | None:
        """The container that has ``address``, running or not."""
        for ctid, container in self.containers.items():
            if address in container.addresses:
                return ctid
        for ctid, settings in self.arriving.items():
            if address in netaddr.from_setting(settings.get("IP_ADDRESS", "")):
                return ctid
        return None

    def id_bases_taken(self) -> set[int]:
        every = [ct.settings for ct in self.containers.values()] + list(self.arriving.values())
        bases = (idmap.base_of(settings) for settings in every)
        return {base for base in bases if base is not None}

    def template_names(self) -> list[str]:
        return self.backends.templates.names()

    # --------------------------------------------------------- discovery

    def discover(self) -> None:
        """Load every container on disk and re-adopt those still running."""
        for entry in sorted(os.listdir(self.state_dir)):
            ctid = parse_ctid(entry)
            if ctid is None:
                continue
            directory = self.state_dir / entry
            if not (directory / CONF).exists():
                log.warning(
                    "removing %s: a container creation or removal was interrupted", directory
                )
                self.remove_area(directory)
                continue
            container = Container(self.ctx, ctid)
            container.load()
            # Nothing vouches for images kept by an earlier ctfsd: the dump file decides.
            checkpoint.drop_kept(container)
            # A move an earlier ctfsd did not finish: it stays here (see migration).
            migration.drop_snapshots(container)
            self.containers[ctid] = container
        cgroups = self.backends.cgroups
        for ctid in cgroups.populated():
            found = self.containers.get(ctid)
            if found is None:
                log.warning("cgroup of unknown container %d left alone", ctid)
                continue
            lifecycle.rediscover(found)
            if found.init_pid is None and not cgroups.pids(ctid):
                cgroups.remove(ctid)
            elif found.init_pid is not None:
                checkpoint.drop_used_dump(found)
        self._rediscover_networks()

    def _rediscover_networks(self) -> None:
        """Know the running containers' networks again; clear what stopped ones left."""
        running: dict[int, list[IPAddress]] = {}
        for ctid, container in self.containers.items():
            addresses = container.addresses
            if not addresses:
                continue
            try:
                # A frozen container keeps its proxies and filter entries too.
                if container.init_pid is not None or container.state is State.FROZEN:
                    running[ctid] = addresses
                else:
                    # It stopped while no ctfsd watched: its proxies are still there.
                    self.backends.network.forget(ctid, addresses)
            except NetworkError as exc:
                log.error("CT %d: cannot clean up its network: %s", ctid, exc)
        try:
            self.backends.network.adopt(running)
            self.backends.firewall.adopt(running)
        except NetworkError as exc:
            log.error("cannot restore the containers' source-address filter: %s", exc)

    # --------------------------------------------------- create / destroy

    async def create(self, name: str) -> Container:
        ctid = parse_ctid(name)
        if ctid is None:
            raise invalid(f"{name!r} is not a CTID (a number 1..{CTID_MAX} without leading zeros)")
        if ctid in self.containers:
            raise CtfsError(errno.EEXIST, f"container {ctid} exists")
        if ctid in self.arriving:
            raise CtfsError(errno.EEXIST, f"container {ctid} is arriving from a peer")
        template = self.backends.templates.get(self.default_template)
        if template is None:
            raise not_found(f"the default template {self.default_template!r} is not installed")
        container = Container(self.ctx, ctid)
        # Every new container gets an unprivileged id range of its own.  Reserve
        # the name and the range at once: a second mkdir meanwhile sees EEXIST, or
        # another range.
        ids = idmap.setting(idmap.free_base(self.id_bases_taken(), ctid))
        container.settings = {idmap.KEY: ids}
        self.containers[ctid] = container
        try:
            await trio.to_thread.run_sync(self._make_area, container, template.root)
            container.persist(OSTEMPLATE=template.name, HOSTNAME=f"ct{ctid}", ID_RANGE=ids)
        except (OSError, StorageError) as exc:
            del self.containers[ctid]
            await trio.to_thread.run_sync(self.remove_area, container.dir)
            raise kernel_failed(f"cannot create container {ctid}: {exc}") from exc
        except BaseException:
            del self.containers[ctid]
            raise
        container.events.record(f"created from template {template.name}")
        return container

    def _make_area(self, container: Container, template_root: Path) -> None:
        container.dir.mkdir(mode=0o700)
        self.backends.storage.snapshot(template_root, container.root)

    async def destroy(self, ctid: int) -> None:
        container = self.containers.get(ctid)
        if container is None:
            raise not_found(f"no container {ctid}")
        if container.state is not State.STOPPED:
            raise busy(f"container {ctid} is {container.state.value}; stop it first")
        await self.remove(container)
        log.info("CT %d: destroyed", ctid)

    async def remove(self, container: Container) -> None:
        """Remove a container for good, whatever its state says (a destroyed one
        is stopped; a moved one lives on a peer now)."""
        ctid = container.ctid
        del self.containers[ctid]
        try:
            os.rename(container.dir / CONF, container.dir / f".{CONF}.destroyed")
        except OSError as exc:
            self.containers[ctid] = container
            raise kernel_failed(f"cannot remove ctid.conf: {exc}") from exc
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.remove_area, container.dir)

    def remove_area(self, directory: Path) -> None:
        try:
            for sub in list(directory.iterdir()):
                if sub.is_dir() and not sub.is_symlink():
                    self.backends.storage.delete(sub)
                else:
                    sub.unlink()
            directory.rmdir()
        except (OSError, StorageError) as exc:
            log.error("cannot remove %s: %s (it is removed at the next start)", directory, exc)
