"""CRIU, the engine of checkpoints: the ``Checkpointer`` backend.

Finding it, checking it works here, and the dump and restore command lines.  The
options are the ones checked by hand on kernel 6.18 with CRIU 4.2.1:

- ``--freeze-cgroup``: CRIU takes the whole freezer cgroup, so nothing forks while it
  attaches.  ctfs freezes the cgroup itself first (CRIU's own wait polls in 100 ms
  steps); after a failed dump CRIU leaves a cgroup it found frozen frozen, so the
  caller thaws it.
- ``--tcp-established``, ``--file-locks``, ``--link-remap``: established TCP
  connections, file locks and open-but-deleted files are part of the container.
- ``--network-lock nftables``: the container's traffic is held while it is dumped,
  with libnftables (no iptables binary needed).
- ``--external veth[eth0]:ctfs<CTID>``: the container's eth0 is one end of a pair
  whose other end is on the host; restore recreates the pair, and the action
  (``ctfs.kernel.criu_action``: CRIU's sh script asks ctfsd) readies the host end
  before the container runs.
- ``--manage-cgroups=soft`` with the cgroup backend's yard: processes go
  back into the cgroups ctfs created (with their limits) beforehand, and CRIU mounts
  no cgroup tree of its own that a killed CRIU could leave behind.

Every run has a time limit: a damaged image can make CRIU spin or wait forever.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from pyroute2.nftables.main import NFTables

from ctfs.kernel import criu_action, criu_stats, lazy_pages, netns, processes, restore_views
from ctfs.kernel.api import CriuDump, CriuError, CriuRestore, Veth

DEFAULT_BINARY = Path("/opt/ctfs/criu/sbin/criu")
MIN_VERSION = (4, 2)
LOG_TAIL_LINES = 6
# The key naming a private container's /dev among CRIU's external mounts.
DEV_KEY = "ctfs-dev"


def _view_key(inside: str) -> str:
    """The key naming a view of ctfs (see ctfs.kernel.view_mounts) among CRIU's
    external mounts: the views are binds of ctfs's own mount, which is not dumped
    but bound in again at restore."""
    return "ctfs" + inside.replace("/", "-")


def _external(veth: Veth) -> str:
    return f"veth[{veth.guest}]:{veth.host}"


def find_binary(wanted: Path | None) -> Path | None:
    """``wanted``, else the one tools/setup builds, else a criu on PATH."""
    if wanted is not None:
        return wanted
    if DEFAULT_BINARY.exists():
        return DEFAULT_BINARY
    found = shutil.which("criu")
    return Path(found) if found else None


def _version(text: str) -> tuple[int, ...] | None:
    for line in text.splitlines():
        if line.startswith("Version:"):
            try:
                return tuple(int(p) for p in line.split(":", 1)[1].strip().split(".")[:3])
            except ValueError:
                return None
    return None


class Criu:
    def __init__(self, binary: Path | None) -> None:
        self.binary = find_binary(binary)
        self.version = ""
        self.unavailable: str | None = "not checked yet"
        # PIDs of the CRIU runs under way (one thread each), and their guard.
        self._running: set[int] = set()
        self._lock = threading.Lock()
        # Lazy dumps under way, by images directory (see stop_dump); lazy-pages
        # daemons of restores, by work directory (see await_pages).
        self._dumps: dict[Path, subprocess.Popen[str]] = {}
        self._lazy: dict[Path, subprocess.Popen[str]] = {}

    def probe(self) -> str | None:
        """Check that checkpoints can work here; the reason they cannot, or None."""
        self.unavailable = self._probe()
        return self.unavailable

    def _probe(self) -> str | None:
        if self.binary is None:
            return f"no CRIU: {DEFAULT_BINARY} is missing and no criu is on PATH (tools/setup)"
        try:
            done = subprocess.run(
                [str(self.binary), "--version"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{self.binary} does not run: {exc}"
        version = _version(done.stdout)
        if version is None:
            return f"{self.binary} --version says nothing usable"
        self.version = ".".join(map(str, version))
        if version[:2] < MIN_VERSION:
            return (
                f"CRIU {self.version} at {self.binary} is too old: it cannot dump sockets on "
                f"this kernel; {'.'.join(map(str, MIN_VERSION))} or newer is needed"
            )
        check = subprocess.run(
            [str(self.binary), "check"], capture_output=True, text=True, timeout=60
        )
        if check.returncode != 0:
            reason = (check.stderr or check.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"criu check fails: {reason[0]}"
        return None

    # ------------------------------------------------------------ commands

    def dump(
        self,
        options: CriuDump,
        on_timeout: Callable[[], None],
        on_images: Callable[[], None] | None = None,
    ) -> None:
        argv = [
            "dump",
            "--tree", str(options.pid),
            "--images-dir", str(options.images),
            "--work-dir", str(options.work),
            "--log-file", "dump.log",
            "--freeze-cgroup", options.cgroups.freeze_cgroup,
            "--tcp-established",
            "--file-locks",
            "--link-remap",
            "--network-lock", "nftables",
        ]  # fmt: skip
        if options.veth is not None:
            argv += ["--external", _external(options.veth)]
        if options.id_base is not None:
            argv += ["--external", f"mnt[/dev]:{DEV_KEY}"]
        for inside in options.views:
            argv += ["--external", f"mnt[{inside}]:{_view_key(inside)}"]
        if options.lazy is None:
            self._run(argv, options.work / "dump.log", options.timeout, on_timeout, env={})
            return
        lazy_pages.raise_pipe_limit()
        proc, status = self._start_with_status(
            [*argv, "--lazy-pages", *lazy_pages.endpoint(options.lazy)]
        )
        self._dumps[options.images] = proc
        try:
            waiter = lazy_pages.call_when_ready(status, on_images or (lambda: None))
            self._watch(proc, options.work / "dump.log", options.timeout, on_timeout, "dump")
            waiter.join()
        finally:
            self._dumps.pop(options.images, None)

    def lazy_bytes(self, images: Path) -> int:
        return criu_stats.lazy_bytes(images)

    def page_server_port(self, address: str) -> int:
        return lazy_pages.free_port(address)

    def stop_dump(self, images: Path) -> None:
        proc = self._dumps.get(images)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def restore(self, options: CriuRestore, on_timeout: Callable[[], None]) -> int:
        """Restore detached; return the host PID of the restored init."""
        if options.id_base is not None:
            # Parts of a restore read the images from inside the container's user
            # namespace, sometimes before its id map is written (timens-0.img was
            # refused 1 time in 3 here): readable by anyone who holds the images
            # directory open.  Nobody else can reach them: STATE/CTID is 0700.
            options.images.chmod(0o711)
            for path in options.images.iterdir():
                path.chmod(0o644)
        with restore_views.made(options.root, options.id_base, options.work.parent) as views:
            return self._restore(options, views, on_timeout)

    def _restore(
        self, options: CriuRestore, views: restore_views.Views, on_timeout: Callable[[], None]
    ) -> int:
        work = options.work
        pidfile = work / "init.pid"
        argv = [
            "restore",
            "--restore-detached",
            "--images-dir", str(options.images),
            "--work-dir", str(work),
            "--log-file", "restore.log",
            "--pidfile", str(pidfile),
            "--root", str(views.root),
            "--tcp-established",
            "--file-locks",
            "--link-remap",
            "--manage-cgroups=soft",
            "--cgroup-yard", options.cgroups.yard,
        ]  # fmt: skip
        if views.dev is not None:
            argv += ["--external", f"mnt[{DEV_KEY}]:{views.dev}"]
        for inside, source in options.views:
            argv += ["--external", f"mnt[{_view_key(inside)}]:{source}"]
        if options.leave_stopped:
            argv.append("--leave-stopped")
        if not options.same_cgroups:
            for mapping in options.cgroups.roots:
                argv += ["--cgroup-root", mapping]
        if options.veth is not None and not options.make_veth:
            argv += ["--external", _external(options.veth)]
        server = None
        if options.veth is not None or options.subtree_controls:
            action = criu_action.Action(
                subtree_controls=options.subtree_controls,
                host_veth=options.veth.host if options.veth is not None else None,
                addresses=options.addresses,
                make_veth=options.make_veth,
            )
            server = criu_action.ActionServer(work, action)
            argv += ["--action-script", str(criu_action.script(work))]
        try:
            if options.lazy is None:
                self._run(argv, work / "restore.log", options.timeout, on_timeout, {})
            else:
                self._restore_lazily(argv, options, on_timeout, {})
        except CriuError as exc:
            if server is not None and server.error is not None:
                raise CriuError(f"{server.error}; {exc}", exc.log) from exc
            raise
        finally:
            if server is not None:
                server.close()
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            raise CriuError(f"restore left no usable pidfile: {exc}") from exc

    def _restore_lazily(
        self,
        argv: list[str],
        options: CriuRestore,
        on_timeout: Callable[[], None],
        env: dict[str, str],
    ) -> None:
        """The lazy-pages daemon first (it fetches from the source), then the restore."""
        assert options.lazy is not None
        work = options.work
        daemon_argv = [
            "lazy-pages", "--page-server",
            *lazy_pages.endpoint(options.lazy),
            "--images-dir", str(options.images),
            "--work-dir", str(work),
            "--log-file", "lazy-pages.log",
        ]  # fmt: skip
        daemon, status = self._start_with_status(daemon_argv)
        # Running on after the restore (see await_pages): not a stray helper to end.
        with self._lock:
            self._running.add(daemon.pid)
        self._lazy[work] = daemon
        try:
            if not lazy_pages.wait_ready(status, daemon):
                reason = log_reason(work / "lazy-pages.log")
                raise CriuError(
                    f"criu lazy-pages did not get ready: {reason}", work / "lazy-pages.log"
                )
            argv.append("--lazy-pages")
            with lazy_pages.userfaultfd_allowed():
                self._run(argv, work / "restore.log", options.timeout, on_timeout, env)
        except BaseException:
            self._lazy.pop(work, None)
            daemon.kill()
            daemon.communicate()
            with self._lock:
                self._running.discard(daemon.pid)
            raise

    def await_pages(self, work: Path, timeout: float) -> None:
        daemon = self._lazy.pop(work, None)
        if daemon is None:
            return
        try:
            self._wait(daemon, work / "lazy-pages.log", timeout, lambda: None, "lazy-pages")
        finally:
            with self._lock:
                self._running.discard(daemon.pid)

    def remove_network_lock(self, pid: int) -> None:
        """Drop the nftables tables a killed CRIU left to hold the container's traffic."""
        with netns.entered(pid):
            with NFTables(nfgen_family=0) as nft:
                tables = [
                    (msg["nfgen_family"], msg.get_attr("NFTA_TABLE_NAME"))
                    for msg in nft.get_tables()
                ]
            for family, name in tables:
                if name and name.startswith("CRIU"):
                    with NFTables(nfgen_family=family) as nft:
                        nft.table("del", name=name)

    def _run(
        self,
        argv: list[str],
        log: Path,
        timeout: float,
        on_timeout: Callable[[], None],
        env: dict[str, str],
    ) -> None:
        self._watch(self._start(argv, env, ()), log, timeout, on_timeout, argv[0])

    def _start(
        self, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...]
    ) -> subprocess.Popen[str]:
        if self.binary is None or self.unavailable is not None:
            raise CriuError(f"checkpoints are unavailable: {self.unavailable}")
        return subprocess.Popen(
            [str(self.binary), *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            # Its own process group: a terminal's Ctrl-C for ctfsd must not cut it short.
            start_new_session=True,
            pass_fds=pass_fds,
        )

    def _start_with_status(self, argv: list[str]) -> tuple[subprocess.Popen[str], int]:
        """CRIU started with ``--status-fd``; the end of the pipe it says "ready" on."""
        status, give = lazy_pages.status_pipe()
        try:
            proc = self._start([*argv, "--status-fd", str(give)], {}, (give,))
        except BaseException:
            os.close(status)
            raise
        finally:
            os.close(give)
        return proc, status

    def _watch(
        self,
        proc: subprocess.Popen[str],
        log: Path,
        timeout: float,
        on_timeout: Callable[[], None],
        action: str,
    ) -> None:
        with self._lock:
            self._running.add(proc.pid)
        try:
            self._wait(proc, log, timeout, on_timeout, action)
        finally:
            with self._lock:
                self._running.discard(proc.pid)
                self._end_stray_helpers()

    def _end_stray_helpers(self) -> None:
        """End and reap CRIU's helpers that outlived a run of theirs; caller holds the lock.

        A failed restore can leave CRIU's cgroup daemon behind.  ctfsd is a child
        subreaper (for orphaned container inits), so such orphans become its
        children, and would stay zombies.  Restored processes never carry the
        name "criu" (CRIU gives them their own back before it exits); a run still
        under way is in ``_running``.
        """
        for pid in processes.children(os.getpid()):
            if pid in self._running or processes.name_of(pid) != "criu":
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    @staticmethod
    def _wait(
        proc: subprocess.Popen[str],
        log: Path,
        timeout: float,
        on_timeout: Callable[[], None],
        action: str,
    ) -> None:
        """Wait for one run; CriuError, with its log, unless it succeeded."""
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # A damaged image can make CRIU wait for processes that never come: end
            # those first (CRIU then gives up by itself), then CRIU.
            on_timeout()
            try:
                _, stderr = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            raise CriuError(f"criu {action} did not finish within {timeout:g} s", log) from None
        if proc.returncode != 0:
            how = (
                f"was killed by signal {-proc.returncode}"
                if proc.returncode < 0
                else f"exited with status {proc.returncode}"
            )
            raise CriuError(f"criu {action} {how}: {log_reason(log, stderr)}", log)


def log_reason(log: Path, stderr: str = "") -> str:
    """The lines of a CRIU log that say what went wrong (errors), joined."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [line.strip() for line in lines if "Error" in line or "error" in line]
    picked = errors[-LOG_TAIL_LINES:] or [line.strip() for line in lines[-2:]]
    if not picked and stderr.strip():
        picked = stderr.strip().splitlines()[-2:]
    return " | ".join(picked) or "no reason in its log"
