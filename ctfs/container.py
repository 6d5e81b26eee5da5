"""The container model: its settings, its state machine, and its lifecycle.

Invariants:
- ``state`` is derived from facts: a transition under way, else a live init
  process (a pidfd ctfs watches), else stopped.
- At most one state transition runs per container; a second request meanwhile is
  refused with EBUSY rather than queued.
- A transition is never abandoned half-way: it runs shielded from cancellation, so
  even a daemon shutdown waits for it to finish.
- Settings are persisted in ``ctid.conf`` only after the kernel accepted them, and
  the kernel change is undone if persisting fails.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ctfs import beancounters, config, diskquota, dumpfile, netaddr, scheduling, ubc
from ctfs.errors import CtfsError, busy, invalid, kernel_failed, not_found, not_permitted
from ctfs.events import EventLog
from ctfs.files.base import Upload
from ctfs.kernel import accounting, criu, etcfiles, procs, storage, uts
from ctfs.kernel.launch import LaunchError
from ctfs.kernel.network import GUEST_IFNAME, NetworkError, host_ifname
from ctfs.kernel.security import DROPPED_CAPABILITIES
from ctfs.netaddr import Address

if TYPE_CHECKING:
    from ctfs.host import Host

log = logging.getLogger(__name__)

CONF = "ctid.conf"

# After the halt signal, an init left alone for this long has nothing left to
# shut down gracefully (busybox init would only sleep out its console delays).
HALT_SETTLE_S = 0.2
# A start that has not reached the template's init by then is abandoned.
START_TIMEOUT_S = 60.0
POLL_S = 0.02
# Stopping every process for a checkpoint; a D-state task may take a moment.
FREEZE_TIMEOUT_S = 10.0
# CRIU runs with a time limit: a damaged image can make it wait forever.
CRIU_TIMEOUT_S = 300.0
DUMP = "dump"
# CRIU's images of the dump file this ctfsd wrote, kept while frozen: on btrfs they
# share their extents with the dump file (no space), and a restore that finds the
# dump unchanged runs straight from them, still in the page cache.
KEPT_IMAGES = ".frozen-images"


class State(enum.StrEnum):
    STOPPED = "stopped"
    RUNNING = "running"
    FROZEN = "frozen"
    STARTING = "starting"
    STOPPING = "stopping"
    FREEZING = "freezing"
    RESTORING = "restoring"
    MIGRATING = "migrating"


@dataclass
class InitProcess:
    """The container's init as seen from the host; ``exited`` is set once it is gone."""

    pid: int
    pidfd: int
    exited: trio.Event = field(default_factory=trio.Event)


class Container:
    def __init__(self, host: Host, ctid: int) -> None:
        self.host = host
        self.ctid = ctid
        self.dir = host.state_dir / str(ctid)
        self.root = self.dir / "root"
        self.events = EventLog(self.dir / "events", ctid)
        self.settings: dict[str, str] = {}
        self.tracker = beancounters.Tracker(record=self.events.record)
        self._transition: State | None = None
        self._init: InitProcess | None = None
        self.dump_path = self.dir / DUMP
        # Whether a complete dump file is there (the container is frozen if not running).
        self._frozen = False
        # The dump file as this ctfsd last wrote or verified it (see dumpfile.unpack).
        self._dump_stamp: tuple[int, ...] | None = None

    # ----------------------------------------------------------- settings

    def load(self) -> None:
        self.settings = config.read(self.dir / CONF)
        self._frozen = self.dump_path.exists()
        # Nothing vouches for images kept by an earlier ctfsd: the dump file decides.
        self._drop_kept()

    def persist(self, **changes: str) -> None:
        """Write ``changes`` into ctid.conf atomically; the in-memory copy follows."""
        updated = {**self.settings, **changes}
        config.write_atomic(
            self.dir / CONF, config.render(updated, header=f"ctfs container {self.ctid}")
        )
        self.settings = updated

    @property
    def template_name(self) -> str:
        return self.settings.get("OSTEMPLATE", "")

    @property
    def hostname(self) -> str:
        return self._hostname_in(self.settings)

    def _hostname_in(self, settings: Mapping[str, str]) -> str:
        return settings.get("HOSTNAME", f"ct{self.ctid}")

    @property
    def addresses(self) -> list[Address]:
        return netaddr.from_setting(self.settings.get("IP_ADDRESS", ""))

    def nameservers_in(self, settings: Mapping[str, str]) -> list[str] | None:
        """The name servers ``settings`` give the container; None: leave resolv.conf be."""
        value = settings.get("NAMESERVER")
        if value is None:
            return None
        if value == netaddr.INHERIT:
            try:
                text = Path("/etc/resolv.conf").read_text(errors="replace")
            except OSError:
                text = ""
            return netaddr.nameservers_of_resolv_conf(text)
        return value.split()

    @property
    def ever_started(self) -> bool:
        return self.settings.get("STARTED_ONCE") == "yes"

    # -------------------------------------------------------------- state

    @property
    def state(self) -> State:
        if self._transition is not None:
            return self._transition
        if self._init is not None:
            return State.RUNNING
        if self._frozen:
            return State.FROZEN
        return State.STOPPED

    @property
    def init_pid(self) -> int | None:
        return self._init.pid if self._init is not None else None

    def pids(self) -> list[int]:
        """Host PIDs of the container's processes, init first, then ascending."""
        found = sorted(self.host.cgroups.pids(self.ctid))
        init = self.init_pid
        if init is not None and init in found:
            found.remove(init)
            found.insert(0, init)
        return found

    async def request_state(self, word: str) -> None:
        """Carry out a write to ``state``; returns once the new state is reached."""
        targets = {State.RUNNING.value, State.STOPPED.value, State.FROZEN.value}
        if word not in targets:
            raise invalid(f"unknown state {word!r}; write running, stopped or frozen")
        self._refuse_while_changing()
        current = self.state
        if word == current.value:
            return
        if word == State.RUNNING and current is State.FROZEN:
            await self._transit(State.RESTORING, self._restore)
        elif word == State.RUNNING:
            await self._transit(State.STARTING, self._start)
        elif word == State.STOPPED and current is State.FROZEN:
            await self._transit(State.STOPPING, self._discard_dump)
        elif word == State.STOPPED:
            await self._transit(State.STOPPING, self._stop)
        elif current is State.STOPPED:
            raise invalid("only a running container can be frozen")
        else:
            await self._transit(State.FREEZING, self._freeze)

    def _refuse_while_changing(self) -> None:
        if self._transition is not None:
            raise busy(f"a change is under way (the container reads {self._transition.value})")

    async def _transit(self, during: State, action: Callable[[], Awaitable[None]]) -> None:
        self._transition = during
        try:
            with trio.CancelScope(shield=True):
                await action()
        finally:
            self._transition = None

    # -------------------------------------------------------------- start

    async def _start(self) -> None:
        template = self.host.templates.get(self.template_name)
        if template is None:
            raise not_found(f"template {self.template_name!r} is not installed")
        began = time.monotonic()
        cgroups = self.host.cgroups
        try:
            await trio.to_thread.run_sync(self._write_etc_files, self.settings)
        except OSError as exc:
            raise kernel_failed(f"cannot update the container's /etc: {exc}") from exc
        try:
            await trio.to_thread.run_sync(self._prepare_cgroups)
        except OSError as exc:
            await self._clean_up_cgroups()
            raise kernel_failed(f"cannot set up cgroups: {exc}") from exc
        if cgroups.pids(self.ctid):
            raise kernel_failed("the container's cgroup still holds processes from an earlier run")
        spec = {
            "root": str(self.root),
            "hostname": self.hostname,
            "init": [template.init],
            "cgroup_join": cgroups.join_files(self.ctid),
            "drop_caps": sorted(DROPPED_CAPABILITIES.values()),
            "env": {
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/root",
                "TERM": "linux",
                "container": "ctfs",
            },
        }
        addresses = self.addresses

        async def network_up(pid: int) -> None:
            await trio.to_thread.run_sync(self.host.network.configure, self.ctid, pid, addresses)

        reply: dict[str, Any] = {"error": f"init did not start within {START_TIMEOUT_S:g} s"}
        with trio.move_on_after(START_TIMEOUT_S):
            try:
                # The network is up before the template's init runs its first script.
                reply = await self.host.launcher.launch(spec, network_up if addresses else None)
            except LaunchError as exc:
                reply = {"error": str(exc)}
            except NetworkError as exc:
                reply = {"error": f"network: {exc}"}
        if "pid" not in reply:
            # Whatever the launcher got to run is in the cgroup: end it all.
            await trio.to_thread.run_sync(cgroups.kill_all, self.ctid)
            await self._clean_up_cgroups()
            await self._remove_network()
            raise kernel_failed(f"start failed: {reply.get('error', 'no reason given')}")
        pid = int(reply["pid"])
        self.tracker.reset()
        self._adopt(pid)
        if not self.ever_started:
            try:
                self.persist(STARTED_ONCE="yes")
            except OSError as exc:  # the start itself succeeded; say what was not saved
                self.events.record(f"cannot save ctid.conf: {exc}", logging.ERROR)
        ms = (time.monotonic() - began) * 1000
        self.events.record(f"started: init is PID {pid} on the host ({ms:.0f} ms)")

    def _prepare_cgroups(self) -> None:
        """Create the cgroups with every limit in place before init joins them."""
        self.host.cgroups.create(self.ctid)
        scheduling.apply(self.host.cgroups, self.ctid, self.settings)
        beancounters.apply(self.host.cgroups, self.ctid, self.settings)

    def _adopt(self, pid: int) -> None:
        """Watch ``pid`` as this container's init from now on."""
        pidfd = os.pidfd_open(pid)
        self._init = InitProcess(pid, pidfd)
        self.host.nursery.start_soon(self._watch, self._init)

    async def _watch(self, init: InitProcess) -> None:
        """Wait for init to exit; clean up if nobody asked for it.

        Runs in the daemon's nursery, so it must never raise: one container's
        trouble must not take the whole mount down.
        """
        await trio.lowlevel.wait_readable(init.pidfd)
        status = _reap(init.pid)
        init.exited.set()
        if self._transition is not None:
            return  # a stop in progress does the cleaning up
        # Nobody asked for this: init halted, rebooted or crashed by itself.
        self._transition = State.STOPPING
        try:
            with trio.CancelScope(shield=True):
                await self._finish_stop(init)
            self.events.record(f"stopped: init exited by itself ({status})")
        except Exception as exc:
            log.exception("CT %d: cleaning up after init exited", self.ctid)
            self.events.record(
                f"init exited by itself ({status}); cleanup failed: {exc}", logging.ERROR
            )
        finally:
            self._transition = None

    # --------------------------------------------------------------- stop

    async def _stop(self) -> None:
        init = self._init
        assert init is not None
        began = time.monotonic()
        template = self.host.templates.get(self.template_name)
        halt = template.halt_signal if template else signal.SIGPWR
        timeout = self.host.stop_timeout
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(init.pidfd, halt)
        how = await self._await_halt(init, timeout)
        if how == "timeout":
            self.events.record(
                f"stop: still running {timeout:g} s after SIG{halt.name[3:]}; killing",
                logging.WARNING,
            )
        if not init.exited.is_set():
            await trio.to_thread.run_sync(self.host.cgroups.kill_all, self.ctid)
        await self._finish_stop(init)
        ms = (time.monotonic() - began) * 1000
        word = "killed" if how == "timeout" else "stopped"
        self.events.record(f"{word}: {ms:.0f} ms after SIG{halt.name[3:]}")

    async def _await_halt(self, init: InitProcess, timeout: float) -> str:
        """Wait for a graceful halt: ``exited``, ``halted`` (init alone) or ``timeout``."""
        deadline = trio.current_time() + timeout
        alone_since: float | None = None
        while trio.current_time() < deadline:
            with trio.move_on_after(POLL_S):
                await init.exited.wait()
                return "exited"
            if self.host.cgroups.pids(self.ctid) == [init.pid]:
                alone_since = alone_since or trio.current_time()
                if trio.current_time() - alone_since >= HALT_SETTLE_S:
                    return "halted"
            else:
                alone_since = None
        return "timeout"

    async def _finish_stop(self, init: InitProcess, network: bool = True) -> None:
        """Once init is gone: wait out the rest, remove the cgroups, forget init.

        ``network``: also remove its network from the host (a frozen container keeps
        its proxies and source-filter entries; see ``_freeze``).
        """
        await init.exited.wait()
        try:
            await self._clean_up_cgroups()
            if network:
                await self._remove_network()
        finally:
            # Init is gone whatever happened to its cgroups: the state is stopped.
            os.close(init.pidfd)
            if self._init is init:
                self._init = None

    async def _clean_up_cgroups(self) -> None:
        cgroups = self.host.cgroups
        deadline = trio.current_time() + 10
        while cgroups.pids(self.ctid):
            if trio.current_time() > deadline:
                await trio.to_thread.run_sync(cgroups.kill_all, self.ctid)
                deadline = trio.current_time() + 10
            await trio.sleep(0.005)
        try:
            await trio.to_thread.run_sync(cgroups.remove, self.ctid)
        except OSError as exc:
            self.events.record(f"cannot remove cgroups: {exc}", logging.ERROR)

    async def _remove_network(self) -> None:
        try:
            await trio.to_thread.run_sync(self.host.network.remove, self.ctid)
        except OSError as exc:
            self.events.record(f"cannot remove the network: {exc}", logging.ERROR)

    # --------------------------------------------------------- checkpoints

    async def _checkpoints(self) -> criu.Criu:
        await self.host.criu_probed.wait()
        engine = self.host.criu
        if engine.unavailable is not None:
            raise CtfsError(errno.EOPNOTSUPP, f"checkpoints are unavailable: {engine.unavailable}")
        return engine

    def _veth(self, settings: Mapping[str, str] | None = None) -> criu.Veth | None:
        addresses = netaddr.from_setting((settings or self.settings).get("IP_ADDRESS", ""))
        return criu.Veth(GUEST_IFNAME, host_ifname(self.ctid)) if addresses else None

    def _sessions_inside(self, init_pid: int) -> list[int]:
        """Processes in the container's cgroups that are not in its pid namespace.

        They are ``ctfs exec``/``enter`` on the host side: CRIU cannot take them
        with the container, and would lose what they run.
        """
        try:
            own = os.readlink(f"/proc/{init_pid}/ns/pid")
        except OSError:
            return []
        outside = []
        for pid in self.host.cgroups.pids(self.ctid):
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") != own:
                    outside.append(pid)
            except OSError:
                continue
        return sorted(outside)

    def drop_used_dump(self) -> None:
        """A running container's dump was used by a restore ctfsd did not see through."""
        if self._frozen:
            log.warning("CT %d: runs, so its dump file was used; removing it", self.ctid)
            with contextlib.suppress(FileNotFoundError):
                self.dump_path.unlink()
            self._frozen = False
        self._drop_scratch()
        self._drop_kept()

    def _scratch(self) -> tuple[Path, Path]:
        """Empty directories for CRIU's images and its work files (logs, pidfile)."""
        images, work = self.dir / ".criu-images", self.dir / ".criu-work"
        for path in (images, work):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(mode=0o700)
        return images, work

    def _drop_scratch(self) -> None:
        for name in (".criu-images", ".criu-work"):
            shutil.rmtree(self.dir / name, ignore_errors=True)

    def _keep_images(self, images: Path) -> None:
        self._drop_kept()
        images.rename(self.dir / KEPT_IMAGES)

    def _drop_kept(self) -> None:
        shutil.rmtree(self.dir / KEPT_IMAGES, ignore_errors=True)

    async def _freeze(self) -> None:
        """Checkpoint into the dump file and end the processes; or change nothing."""
        engine = await self._checkpoints()
        init = self._init
        assert init is not None
        sessions = await trio.to_thread.run_sync(self._sessions_inside, init.pid)
        if sessions:
            raise busy(
                "ctfs exec or enter is running in the container (host PID "
                f"{', '.join(map(str, sessions))}); end it first"
            )
        cgroups = self.host.cgroups
        images, work = await trio.to_thread.run_sync(self._scratch)
        began = time.monotonic()
        try:
            await trio.to_thread.run_sync(cgroups.freeze, self.ctid, FREEZE_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            await trio.to_thread.run_sync(cgroups.thaw, self.ctid)
            await trio.to_thread.run_sync(self._drop_scratch)
            raise kernel_failed(f"cannot freeze the container: {exc}") from exc
        frozen_at = time.monotonic()
        try:
            await trio.to_thread.run_sync(
                engine.dump,
                init.pid,
                images,
                work,
                Path(cgroups.freezer_path(self.ctid)),
                self._veth(),
                CRIU_TIMEOUT_S,
                lambda: None,
            )
        except criu.CriuError as exc:
            await self._recover_from_failed_dump(init)
            raise kernel_failed(f"checkpoint failed, the container runs on: {exc}") from exc
        dumped_at = time.monotonic()
        # CRIU ended the processes once their state was on disk.
        with trio.move_on_after(10):
            await init.exited.wait()
        if not init.exited.is_set():
            await trio.to_thread.run_sync(cgroups.kill_all, self.ctid)
            await init.exited.wait()
        info = {
            "ctid": self.ctid,
            "cgroup_parent": cgroups.parent,
            "criu": engine.version,
            "template": self.template_name,
            "hostname": self.hostname,
            "addresses": [str(a) for a in self.addresses],
        }
        try:
            size = await trio.to_thread.run_sync(dumpfile.pack, images, self.dump_path, info)
        except OSError as exc:
            # The images are still on disk: bring the container back from them (CRIU
            # recreates the veth, so the old host end must be gone first).
            await self._finish_stop(init, network=False)
            await self._forget_link()
            try:
                await self._restore_from(images, work, dumpfile.Manifest(info, {}))
            except CtfsError as again:
                await trio.to_thread.run_sync(self.host.network.remove, self.ctid)
                # Out of the scratch directory, which the next checkpoint empties.
                saved = self.dir / f".failed-images-{int(time.time())}"
                await trio.to_thread.run_sync(images.rename, saved)
                raise kernel_failed(
                    f"cannot write the dump file ({exc}) nor restore from the images "
                    f"({again.sentence}); they are kept in {saved}"
                ) from exc
            await trio.to_thread.run_sync(self._drop_scratch)
            raise kernel_failed(
                f"cannot write the dump file ({exc}); the container runs on"
            ) from exc
        self._frozen = True
        self._dump_stamp = _stamp(self.dump_path)
        await self._finish_stop(init, network=False)
        await self._forget_link()
        await trio.to_thread.run_sync(self._keep_images, images)
        await trio.to_thread.run_sync(self._drop_scratch)
        written = time.monotonic()
        self.events.record(
            f"frozen: freeze {(frozen_at - began) * 1000:.0f} ms, dump "
            f"{(dumped_at - frozen_at) * 1000:.0f} ms, dump file {size} bytes written and "
            f"synced in {(written - dumped_at) * 1000:.0f} ms"
        )

    async def _forget_link(self) -> None:
        try:
            await trio.to_thread.run_sync(self.host.network.remove_link, self.ctid)
        except OSError as exc:
            self.events.record(f"cannot remove the veth: {exc}", logging.ERROR)

    async def _recover_from_failed_dump(self, init: InitProcess) -> None:
        """After CRIU failed or was killed: the container runs on as it was."""
        cgroups = self.host.cgroups
        await trio.to_thread.run_sync(cgroups.thaw, self.ctid)
        if not init.exited.is_set():
            try:
                await trio.to_thread.run_sync(criu.remove_network_lock, init.pid)
            except Exception as exc:  # the container runs; say what may be left
                self.events.record(f"cannot check for CRIU's network lock: {exc}", logging.ERROR)
        await trio.to_thread.run_sync(self._drop_scratch)
        if init.exited.is_set():
            # It did not survive the attempt: clean up as for any stop.
            await self._finish_stop(init)
            self.events.record("the failed checkpoint ended the container", logging.ERROR)

    async def _restore(self) -> None:
        """Bring a frozen container back from its dump file; or change nothing."""
        await self._checkpoints()
        if self.host.cgroups.pids(self.ctid):
            raise kernel_failed("the container's cgroup still holds processes; not restoring")
        images, work = await trio.to_thread.run_sync(self._scratch)
        verified = self._dump_stamp is not None and self._dump_stamp == _stamp(self.dump_path)
        kept = self.dir / KEPT_IMAGES
        try:
            try:
                if verified and kept.is_dir():
                    manifest = await trio.to_thread.run_sync(
                        dumpfile.read_manifest, self.dump_path, False
                    )
                    images = kept
                else:
                    manifest = await trio.to_thread.run_sync(
                        dumpfile.unpack, self.dump_path, images, not verified
                    )
            except dumpfile.DumpError as exc:
                raise kernel_failed(f"the dump file is refused: {exc}") from exc
            except OSError as exc:
                raise kernel_failed(f"cannot read the dump file: {exc}") from exc
            await self._restore_from(images, work, manifest)
        finally:
            await trio.to_thread.run_sync(self._drop_scratch)
        await trio.to_thread.run_sync(self._drop_kept)
        try:
            await trio.to_thread.run_sync(self.dump_path.unlink)
        except OSError as exc:
            self.events.record(f"cannot remove the used dump file: {exc}", logging.ERROR)
        self._frozen = False

    async def _restore_from(self, images: Path, work: Path, manifest: dumpfile.Manifest) -> None:
        """Run CRIU on ``images``; on failure nothing of the attempt is left running."""
        began = time.monotonic()
        cgroups = self.host.cgroups
        try:
            await trio.to_thread.run_sync(self._prepare_cgroups)
        except OSError as exc:
            await self._clean_up_cgroups()
            raise kernel_failed(f"cannot set up cgroups: {exc}") from exc
        same_place = (
            manifest.info.get("ctid") == self.ctid
            and manifest.info.get("cgroup_parent") == cgroups.parent
        )
        veth = self._veth()
        addresses = self.addresses
        action_env = {
            "CTFS_HOST_VETH": host_ifname(self.ctid),
            "CTFS_ADDRESSES": netaddr.to_setting(addresses),
        }
        try:
            pid = await trio.to_thread.run_sync(
                self.host.criu.restore,
                images,
                work,
                self.root,
                veth,
                action_env,
                [] if same_place else cgroups.restore_roots(self.ctid),
                CRIU_TIMEOUT_S,
                lambda: cgroups.kill_all(self.ctid),
            )
        except criu.CriuError as exc:
            await trio.to_thread.run_sync(cgroups.kill_all, self.ctid)
            await self._clean_up_cgroups()
            await self._forget_link()
            raise kernel_failed(f"restore failed, the container stays frozen: {exc}") from exc
        self._adopt(pid)
        if addresses:
            try:
                await trio.to_thread.run_sync(
                    self.host.network.configure, self.ctid, pid, addresses
                )
            except OSError as exc:
                self.events.record(f"restored, but its network is incomplete: {exc}", logging.ERROR)
        ms = (time.monotonic() - began) * 1000
        self.events.record(f"restored: init is PID {pid} on the host ({ms:.0f} ms)")

    def dump_size(self) -> int:
        """The dump file's size while frozen; 0 otherwise."""
        if not self._frozen or self._transition is not None:
            return 0
        try:
            return self.dump_path.stat().st_size
        except FileNotFoundError:
            return 0

    async def start_dump_upload(self) -> Upload:
        """Begin writing a dump file in (copying one in): only while stopped or frozen."""
        self._refuse_while_changing()
        if self.state not in (State.STOPPED, State.FROZEN):
            raise busy(
                f"the container is {self.state.value}; a dump can be written in only "
                "while it is stopped or frozen"
            )
        fd, name = tempfile.mkstemp(prefix=".dump.upload.", dir=self.dir)
        return Upload(Path(name), fd)

    async def accept_dump_upload(self, upload: Upload) -> None:
        """Check a written-in dump file as a whole; make it the container's dump."""
        try:
            manifest = await trio.to_thread.run_sync(dumpfile.read_manifest, upload.path)
        except dumpfile.DumpError as exc:
            raise invalid(f"not an intact ctfs dump: {exc}") from exc
        self._refuse_while_changing()
        if self.state not in (State.STOPPED, State.FROZEN):
            raise busy(f"the container is {self.state.value} now; the dump is not taken")
        size = upload.path.stat().st_size

        def put_in_place() -> None:
            os.fsync(upload.fd)
            upload.path.rename(self.dump_path)
            dumpfile.fsync_dir(self.dir)

        await trio.to_thread.run_sync(put_in_place)
        await trio.to_thread.run_sync(self._drop_kept)
        self._frozen = True
        self._dump_stamp = _stamp(self.dump_path)
        self.events.record(
            f"dump: {size} bytes written in (a checkpoint of container "
            f"{manifest.info.get('ctid', '?')}); the container is frozen"
        )

    async def _discard_dump(self) -> None:
        await trio.to_thread.run_sync(self._drop_kept)
        # Already gone (removed by hand) is as good as discarded.
        await trio.to_thread.run_sync(lambda: self.dump_path.unlink(missing_ok=True))
        self._frozen = False
        await self._remove_network()
        self.events.record("stopped: the dump file was discarded")

    # ------------------------------------------------------------ network

    def _write_etc_files(self, settings: Mapping[str, str]) -> None:
        """/etc/hosts (and resolv.conf, if name servers are set) as ``settings`` say."""
        hostname = self._hostname_in(settings)
        main = netaddr.main_address(netaddr.from_setting(settings.get("IP_ADDRESS", "")))
        etcfiles.update(self.root, "hosts", lambda old: netaddr.render_hosts(old, hostname, main))
        servers = self.nameservers_in(settings)
        if servers is not None:
            etcfiles.update(
                self.root, "resolv.conf", lambda old: netaddr.render_resolv_conf(old, servers)
            )

    def _apply_network(self, settings: Mapping[str, str]) -> None:
        """Kernel and /etc to ``settings``' addresses; the network only while running."""
        self._write_etc_files(settings)
        pid = self.init_pid
        if pid is not None:
            addresses = netaddr.from_setting(settings.get("IP_ADDRESS", ""))
            self.host.network.configure(self.ctid, pid, addresses)

    async def set_addresses(self, text: str) -> None:
        """Carry out a write to ``ip`` (see ``netaddr.apply_ip_command``)."""
        self._refuse_while_changing()
        async with self.host.address_lock:
            current = self.addresses
            wanted = netaddr.apply_ip_command(text, current)
            added = [a for a in wanted if a not in current]
            removed = [a for a in current if a not in wanted]
            for address in added:
                owner = self.host.address_owner(address)
                if owner is not None and owner != self.ctid:
                    raise netaddr.address_in_use(address, f"container {owner}")
            if added:
                own = await trio.to_thread.run_sync(self.host.network.host_addresses)
                for address in added:
                    if address in own:
                        raise netaddr.address_in_use(address, "the host itself")
            changes = [f"+{a}" for a in added] + [f"-{a}" for a in removed]
            await self.update_settings(
                {"IP_ADDRESS": netaddr.to_setting(wanted)},
                f"ip: {' '.join(changes)}",
                self._apply_network,
                always=True,
            )

    async def set_nameservers(self, value: str) -> None:
        await self.update_settings(
            {"NAMESERVER": value},
            f"nameserver: {value or '(none)'}",
            self._write_etc_files,
            always=True,
        )

    # ------------------------------------------------------- beancounters

    def measure(self, locks: dict[int, int]) -> dict[str, tuple[int, int, int]]:
        """What the kernel and /proc say now (slow: call off the trio loop)."""
        pids = self.pids()
        counts = accounting.count(pids, self.init_pid, locks)
        return beancounters.held_now(self.host.cgroups.counters(self.ctid), counts)

    def counters(self, measured: dict[str, tuple[int, int, int]]) -> dict[str, ubc.Counter]:
        """Fold a measurement into maxheld and threshold events; the file's rows."""
        return self.tracker.update(measured, ubc.limits_of(self.settings))

    # ---------------------------------------------------------- discovery

    def rediscover(self) -> None:
        """Find a container that kept running while ctfsd was away."""
        pids = self.host.cgroups.pids(self.ctid)
        init = procs.find_init(pids)
        if init is not None:
            self._adopt(init)
            log.info("CT %d: found running, init PID %d", self.ctid, init)

    # ---------------------------------------------------------- settings

    async def update_settings(
        self,
        changes: dict[str, str],
        summary: str,
        apply: Callable[[Mapping[str, str]], None] | None = None,
        always: bool = False,
    ) -> None:
        """Change settings already validated: kernel first, then ctid.conf, all or nothing.

        ``apply`` sets the kernel from a whole settings mapping (so undoing is applying
        the old one).  It runs off the trio loop while the container runs, or always
        when ``always`` (for settings with no process behind them, such as disk quota).
        If saving ctid.conf fails, the kernel gets the old settings back.
        """
        self._refuse_while_changing()
        old = dict(self.settings)
        new = {**old, **changes}
        if new == old:
            return
        live = apply is not None and (always or self._init is not None)
        if live:
            assert apply is not None
            try:
                await trio.to_thread.run_sync(apply, new)
            except (OSError, ValueError) as exc:
                await self._undo(apply, old)
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise kernel_failed(f"the kernel refused it: {reason}") from exc
        try:
            self.persist(**changes)
        except OSError as exc:
            if live:
                assert apply is not None
                await self._undo(apply, old)
            raise kernel_failed(f"cannot save ctid.conf: {exc}") from exc
        self.events.record(summary)

    async def _undo(self, apply: Callable[[Mapping[str, str]], None], old: dict[str, str]) -> None:
        """Put the old settings back in the kernel; if even that fails, say so."""
        try:
            await trio.to_thread.run_sync(apply, old)
        except (OSError, ValueError) as exc:
            self.events.record(f"could not restore the previous settings: {exc}", logging.ERROR)

    async def set_hostname(self, name: str) -> None:
        old = self.hostname
        # A start in flight has already handed the old name to the launcher.
        await self.update_settings(
            {"HOSTNAME": name},
            f"hostname: {old} -> {name}",
            self._apply_hostname,
            always=True,
        )

    def _apply_hostname(self, settings: Mapping[str, str]) -> None:
        """The kernel's host name (while running) and /etc/hosts."""
        pid = self.init_pid
        if pid is not None:
            uts.set_hostname(pid, self._hostname_in(settings))
        self._write_etc_files(settings)

    async def set_template(self, name: str) -> None:
        if name == self.template_name:
            return
        if self.ever_started:
            raise not_permitted("the template can be changed only before the first start")
        if self.state is not State.STOPPED:
            raise busy(f"the container is {self.state.value}")
        template = self.host.templates.get(name)
        if template is None:
            raise not_found(f"template {name!r} is not installed")
        # Reads stay "stopped" while the private area is swapped; a start meanwhile is EBUSY.
        self._transition = State.STOPPED
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._swap_private_area, template.root, name)
        finally:
            self._transition = None
        self.events.record(f"template: {name} (private area recreated)")

    def _swap_private_area(self, template_root: Path, name: str) -> None:
        fresh, old = self.dir / ".root.new", self.dir / ".root.old"
        storage.delete_subvolume(fresh)
        storage.snapshot(template_root, fresh)
        if "DISKSPACE" in self.settings:
            # A new subvolume has a new quota group: give it the saved limit.
            diskquota.apply(self.host.state_dir, fresh, self.settings)
        self.root.rename(old)
        fresh.rename(self.root)
        try:
            self.persist(OSTEMPLATE=name)
        except OSError:
            self.root.rename(fresh)
            old.rename(self.root)
            storage.delete_subvolume(fresh)
            raise
        storage.delete_subvolume(old)


def _stamp(path: Path) -> tuple[int, ...] | None:
    """What changes whenever a file's contents may have: device, inode, size, times."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _reap(pid: int) -> str:
    """Collect ``pid`` if it is our child (ctfsd is a subreaper); describe how it ended."""
    try:
        _, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "status unknown: it was adopted by an earlier ctfsd"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return "status unknown"
