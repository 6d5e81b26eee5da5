"""The host: every container ctfs manages, the templates, and the kernel backends.

Invariant: a container exists exactly when ``STATE/<ctid>/ctid.conf`` exists.
``create`` writes that file last and ``destroy`` removes it first, so an
interruption leaves at most an incomplete directory, which ``discover`` removes.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from ctfs import ubc
from ctfs.container import CONF, Container, State
from ctfs.errors import CtfsError, busy, invalid, kernel_failed, not_found
from ctfs.kernel import accounting, storage
from ctfs.kernel.cgroups import Cgroups
from ctfs.kernel.criu import Criu
from ctfs.kernel.launch import Launcher
from ctfs.kernel.network import UPLINK_AUTO, Network, NetworkError
from ctfs.kernel.templates import TemplateStore
from ctfs.netaddr import Address
from ctfs.values import CTID_MAX, parse_ctid

log = logging.getLogger(__name__)

# How often ctfs counts what the kernel does not, so a crossed barrier is noticed.
BEANCOUNTER_SAMPLE_S = 5.0


@dataclass
class HostOptions:
    state_dir: Path
    default_template: str = "busybox"
    stop_timeout: float = 30.0
    uplink: str = UPLINK_AUTO
    criu: Path | None = None


class Host:
    def __init__(self, options: HostOptions, cgroups: Cgroups) -> None:
        self.state_dir = options.state_dir
        self.default_template = options.default_template
        self.stop_timeout = options.stop_timeout
        self.cgroups = cgroups
        self._nursery: trio.Nursery | None = None
        self.templates = TemplateStore(self.state_dir)
        self.containers: dict[int, Container] = {}
        self.launcher = Launcher()
        self.network = Network(options.uplink)
        self.criu = Criu(options.criu)
        # Set once CRIU has been probed; checkpoint requests wait for it.
        self.criu_probed = trio.Event()
        # Address changes take turns, so two containers never claim one address.
        self.address_lock = trio.Lock()

    @property
    def nursery(self) -> trio.Nursery:
        """Where per-container background tasks run; set by ``start``."""
        assert self._nursery is not None, "Host.start() was not called"
        return self._nursery

    def start(self, nursery: trio.Nursery) -> None:
        """Begin serving: load the containers on disk and watch the running ones."""
        self._nursery = nursery
        self.discover()
        nursery.start_soon(self._sample_beancounters_forever)
        nursery.start_soon(self._probe_checkpoints)

    async def _probe_checkpoints(self) -> None:
        """Say at startup whether checkpoints work here, and if not, why."""
        try:
            reason = await trio.to_thread.run_sync(self.criu.probe)
        finally:
            self.criu_probed.set()
        if reason is None:
            log.info("checkpoints: CRIU %s at %s", self.criu.version, self.criu.binary)
        else:
            log.warning("checkpoints are unavailable: %s", reason)

    async def beancounters(self, ctids: list[int]) -> dict[int, dict[str, ubc.Counter]]:
        """Current beancounters of the running containers among ``ctids``."""
        running = [
            self.containers[c]
            for c in ctids
            if c in self.containers and self.containers[c].state is State.RUNNING
        ]

        def measure_all() -> list[dict[str, tuple[int, int, int]]]:
            locks = accounting.lock_holders()
            return [ct.measure(locks) for ct in running]

        measured = await trio.to_thread.run_sync(measure_all)
        return {ct.ctid: ct.counters(m) for ct, m in zip(running, measured, strict=True)}

    async def _sample_beancounters_forever(self) -> None:
        """Keep maxheld and threshold events current even when nobody reads the files."""
        while True:
            await trio.sleep(BEANCOUNTER_SAMPLE_S)
            try:
                await self.beancounters(self.sorted_ctids())
            except Exception:
                log.exception("sampling beancounters failed; retrying later")

    def close(self) -> None:
        """Stop serving; running containers are left running."""
        self.launcher.close()

    def get(self, ctid: int) -> Container | None:
        return self.containers.get(ctid)

    def sorted_ctids(self) -> list[int]:
        return sorted(self.containers)

    def address_owner(self, address: Address) -> int | None:
        """The container that has ``address``, running or not."""
        for ctid, container in self.containers.items():
            if address in container.addresses:
                return ctid
        return None

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
                self._remove_area(directory)
                continue
            container = Container(self, ctid)
            container.load()
            self.containers[ctid] = container
        for ctid in self.cgroups.populated():
            found = self.containers.get(ctid)
            if found is None:
                log.warning("cgroup of unknown container %d left alone", ctid)
                continue
            found.rediscover()
            if found.init_pid is None and not self.cgroups.pids(ctid):
                self.cgroups.remove(ctid)
            elif found.init_pid is not None:
                found.drop_used_dump()
        self._rediscover_networks()

    def _rediscover_networks(self) -> None:
        """Know the running containers' networks again; clear what stopped ones left."""
        running: dict[int, tuple[Address, ...]] = {}
        for ctid, container in self.containers.items():
            addresses = tuple(container.addresses)
            if not addresses:
                continue
            try:
                # A frozen container keeps its proxies and filter entries too.
                if container.init_pid is not None or container.state is State.FROZEN:
                    running[ctid] = addresses
                else:
                    # It stopped while no ctfsd watched: its proxies are still there.
                    self.network.forget_proxies(ctid, addresses)
            except NetworkError as exc:
                log.error("CT %d: cannot clean up its network: %s", ctid, exc)
        try:
            self.network.adopt(running)
        except NetworkError as exc:
            log.error("cannot restore the containers' source-address filter: %s", exc)

    # --------------------------------------------------- create / destroy

    async def create(self, name: str) -> Container:
        ctid = parse_ctid(name)
        if ctid is None:
            raise invalid(f"{name!r} is not a CTID (a number 1..{CTID_MAX} without leading zeros)")
        if ctid in self.containers:
            raise CtfsError(errno.EEXIST, f"container {ctid} exists")
        template = self.templates.get(self.default_template)
        if template is None:
            raise not_found(f"the default template {self.default_template!r} is not installed")
        container = Container(self, ctid)
        # Reserve the name at once: a second mkdir meanwhile sees EEXIST.
        self.containers[ctid] = container
        try:
            await trio.to_thread.run_sync(self._make_area, container, template.root)
            container.persist(OSTEMPLATE=template.name, HOSTNAME=f"ct{ctid}")
        except (OSError, storage.StorageError) as exc:
            del self.containers[ctid]
            await trio.to_thread.run_sync(self._remove_area, container.dir)
            raise kernel_failed(f"cannot create container {ctid}: {exc}") from exc
        except BaseException:
            del self.containers[ctid]
            raise
        container.events.record(f"created from template {template.name}")
        return container

    @staticmethod
    def _make_area(container: Container, template_root: Path) -> None:
        container.dir.mkdir(mode=0o700)
        storage.snapshot(template_root, container.root)

    async def destroy(self, ctid: int) -> None:
        container = self.containers.get(ctid)
        if container is None:
            raise not_found(f"no container {ctid}")
        if container.state is not State.STOPPED:
            raise busy(f"container {ctid} is {container.state.value}; stop it first")
        del self.containers[ctid]
        try:
            os.rename(container.dir / CONF, container.dir / f".{CONF}.destroyed")
        except OSError as exc:
            self.containers[ctid] = container
            raise kernel_failed(f"cannot remove ctid.conf: {exc}") from exc
        log.info("CT %d: destroyed", ctid)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._remove_area, container.dir)

    @staticmethod
    def _remove_area(directory: Path) -> None:
        try:
            for sub in list(directory.iterdir()):
                if sub.is_dir() and not sub.is_symlink():
                    storage.delete_subvolume(sub)
                else:
                    sub.unlink()
            directory.rmdir()
        except (OSError, storage.StorageError) as exc:
            log.error("cannot remove %s: %s (it is removed at the next start)", directory, exc)
