"""A real ctfsd for the tests: its own state directory, mount point and cgroup parent.

Everything it makes (the FUSE mount and its keeper, the loop-mounted btrfs pool,
the cgroups under ``ctfs-test-<pid>``, containers and their processes) is removed
by ``cleanup``, which ends processes only by PID or through the test's own cgroups.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ctfs.keeper import paths_for
from ctfs.kernel.cgroup_mode import detect

CGROUP_ROOT = Path("/sys/fs/cgroup")
# A unified (cgroup v2 only) host keeps every controller's files in one directory
# per cgroup: cgroup_dir() then gives that one whatever controller is named.
UNIFIED = detect(CGROUP_ROOT) == "unified"
CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")
# Hierarchies ctfsd also gives each container a cgroup in (when the host has them).
HIERARCHIES = ("unified",) if UNIFIED else (*CONTROLLERS, "systemd", "unified")


def cgroup_parents(parent: str) -> list[Path]:
    """The directories of cgroup parent ``parent``, one per hierarchy of this host."""
    if UNIFIED:
        return [CGROUP_ROOT / parent]
    return [CGROUP_ROOT / hierarchy / parent for hierarchy in HIERARCHIES]


def cgroup_of(parent: str, controller: str, ctid: int) -> Path:
    """Container ``ctid``'s cgroup for ``controller`` under ``parent`` (one on v2)."""
    if UNIFIED:
        return CGROUP_ROOT / parent / str(ctid)
    return CGROUP_ROOT / controller / parent / str(ctid)


def remove_cgroup_trees(parent: str) -> None:
    """Remove cgroup parent ``parent`` and everything below it, in every hierarchy."""
    for top in cgroup_parents(parent):
        for directory, _, _ in os.walk(top, topdown=False):
            with contextlib.suppress(OSError):
                Path(directory).rmdir()


CTFSD = Path(sys.executable).with_name("ctfsd")
CTFS = Path(sys.executable).with_name("ctfs")
SYSTEM_TEMPLATE_CACHE = Path("/var/cache/ctfs/templates")
# A second installed template, so that changing a container's template changes it.
ALT_TEMPLATE = "busybox-alt"


def write_errno(path: Path, data: bytes, offset: int = 0) -> int:
    """Write ``data`` and close, as ``echo`` would; return 0 or the errno it got.

    A command without a final newline is carried out when the file is closed (see
    ctfs.fs.commands), so its error comes from close().
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError as exc:
        return exc.errno or -1
    error = 0
    try:
        if offset:
            os.pwrite(fd, data, offset)
        else:
            os.write(fd, data)
    except OSError as exc:
        error = exc.errno or -1
    try:
        os.close(fd)
    except OSError as exc:
        error = error or exc.errno or -1
    return error


def ctfs_exec(container: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``container`` with the ctfs command; never raises on failure."""
    return subprocess.run(
        [str(CTFS), "--mount", str(container.parent), "exec", container.name, "--", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def started(daemon: Ctfsd) -> Iterator[Ctfsd]:
    """``daemon`` started, and everything it made removed afterwards, even on failure."""
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def process_gone(pid: int) -> bool:
    """``pid`` has exited (a zombie counts: only its parent can collect it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


class Ctfsd:
    def __init__(
        self,
        stop_timeout: float = 3.0,
        wrapper: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
        start_timeout: float = 60.0,
    ) -> None:
        # wrapper: a command prefix, e.g. nsenter into the test's own network namespace;
        # extra: more ctfsd options; start_timeout: for its first start, which imports
        # the templates.
        self.wrapper = wrapper
        self.start_timeout = start_timeout
        self.extra = extra
        self.base = Path(tempfile.mkdtemp(prefix="ctfs-test-"))
        # Searchable, as /var/lib is: a restore of a container with a private id
        # range opens paths in the state directory as the container's root.
        self.base.chmod(0o711)
        self.mount = self.base / "mnt"
        self.state = self.base / "state"
        self.log = self.base / "ctfsd.log"
        self.cgroup_parent = f"ctfs-test-{os.getpid()}-{self.base.name[-4:]}"
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.template_cache = self.base / "templates"
        self.template_cache.mkdir()
        for name in ("busybox", ALT_TEMPLATE):
            for suffix in (".tar.gz", ".conf"):
                (self.template_cache / f"{name}{suffix}").symlink_to(
                    SYSTEM_TEMPLATE_CACHE / f"busybox{suffix}"
                )

    def add_template(
        self, name: str, tarball_of: str | None = None, conf: str | None = None
    ) -> None:
        """Offer template ``name`` at the next start: the system cache's tarball of
        ``tarball_of`` (default ``name``), and ``conf`` as its .conf (default the
        cache's).  A template the cache lacks fails the test, naming the build."""
        source = tarball_of or name
        tarball = SYSTEM_TEMPLATE_CACHE / f"{source}.tar.gz"
        if not tarball.exists():
            pytest.fail(f"template {source} is not built: run tools/build-template {source}")
        (self.template_cache / f"{name}.tar.gz").symlink_to(tarball)
        if conf is None:
            (self.template_cache / f"{name}.conf").symlink_to(
                SYSTEM_TEMPLATE_CACHE / f"{source}.conf"
            )
        else:
            (self.template_cache / f"{name}.conf").write_text(conf)

    def argv(self, *extra: str) -> list[str]:
        return [
            *self.wrapper,
            str(CTFSD),
            "--foreground",
            "--state-dir",
            str(self.state),
            "--pool-size",
            "4G",
            "--cgroup-parent",
            self.cgroup_parent,
            "--stop-timeout",
            str(self.stop_timeout),
            "--template-cache",
            str(self.template_cache),
            *self.extra,
            *extra,
            str(self.mount),
        ]

    def _serving_lines(self) -> int:
        return self.log_text().count(" serving ")

    def launch(self) -> None:
        """Start ctfsd without waiting for it to serve."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )

    def start(self) -> None:
        # Readiness is the new daemon's "serving" log line: the mount may be there
        # already, held by the keeper for whichever ctfsd serves it next.
        served_before = self._serving_lines()
        self.launch()
        proc = self.proc
        assert proc is not None
        if not wait_for(
            lambda: self._serving_lines() > served_before or proc.poll() is not None,
            timeout=self.start_timeout,
        ):
            raise RuntimeError(f"ctfsd did not come up; log:\n{self.log_text()}")
        if proc.poll() is not None:
            raise RuntimeError(f"ctfsd exited with {proc.returncode}:\n{self.log_text()}")

    def terminate(self) -> int | None:
        """SIGTERM ctfsd and wait; return its exit status."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self.proc = None
        return status

    def kill(self) -> None:
        """SIGKILL ctfsd, as a crash would; its keeper keeps holding the mount."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def upgrade(self) -> None:
        """SIGHUP ctfsd and wait until its re-executed self serves again."""
        assert self.proc is not None
        served_before = self._serving_lines()
        self.proc.send_signal(signal.SIGHUP)
        if not wait_for(lambda: self._serving_lines() > served_before, timeout=60):
            raise RuntimeError(f"ctfsd did not serve again after SIGHUP; log:\n{self.log_text()}")

    def keeper_pid(self) -> int | None:
        """The PID of the keeper holding the mount (from its pidfile), if it runs."""
        try:
            pid = int(paths_for(self.mount).pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        return pid if b"ctfs.keeper" in cmdline and not process_gone(pid) else None

    def end_keeper(self) -> None:
        """SIGTERM the keeper (it unmounts and exits), by its PID."""
        pid = self.keeper_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_for(lambda: process_gone(pid), timeout=10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cgroup_dir(self, controller: str, ctid: int | None = None) -> Path:
        path = CGROUP_ROOT / self.cgroup_parent
        if not UNIFIED:
            path = CGROUP_ROOT / controller / self.cgroup_parent
        return path / str(ctid) if ctid is not None else path

    def cgroup_files(self, ctid: int) -> Callable[[str], Path]:
        """Locator of CT ``ctid``'s cgroup files for ``tests.cgroup_knobs``."""
        return lambda controller: self.cgroup_dir(controller, ctid)

    def container_pids(self, ctid: int) -> list[int]:
        """Every process in the container's pids cgroup and the cgroups below it."""
        found: list[int] = []
        for directory, _, _ in os.walk(self.cgroup_dir("pids", ctid)):
            with contextlib.suppress(FileNotFoundError):
                found += [int(p) for p in (Path(directory) / "cgroup.procs").read_text().split()]
        return found

    def kill_container(self, ctid: int) -> None:
        """End a container's processes through its freezer cgroup, by PID
        (through cgroup.kill on a unified host)."""
        freezer = self.cgroup_dir("freezer", ctid)
        if not freezer.exists():
            return
        if UNIFIED:
            (freezer / "cgroup.kill").write_text("1")
            wait_for(lambda: not self.container_pids(ctid), timeout=10)
            return
        (freezer / "freezer.state").write_text("FROZEN")
        for pid in self.container_pids(ctid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        (freezer / "freezer.state").write_text("THAWED")
        wait_for(lambda: not self.container_pids(ctid), timeout=10)

    def remove_cgroups(self) -> None:
        remove_cgroup_trees(self.cgroup_parent)

    def cleanup(self) -> None:
        if self.proc is not None:
            try:
                for directory in self.mount.iterdir():
                    if directory.name.isdigit():
                        write_errno(directory / "state", b"stopped")
            except OSError:
                pass  # a dead mount: the cgroups below still end every process
            self.terminate()
        for controller_dir in [self.cgroup_dir("pids")]:
            if controller_dir.exists():
                for child in controller_dir.iterdir():
                    if child.is_dir():
                        self.kill_container(int(child.name))
        self.remove_cgroups()
        self.end_keeper()
        paths_for(self.mount).lock.unlink(missing_ok=True)
        for mount in (self.mount, self.state):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        try:
            shutil.rmtree(self.base)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
