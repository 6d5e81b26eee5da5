"""LXC and LXCFS, the peers of bench.start_stop, bench.checkpoint and bench.procviews.

``LxcContainer``: an LXC busybox container with no network; ``LxcDebian``: an LXC
container of ctfs's debian-12 template tarball; ``Lxcfs``: a private LXCFS.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from bench.common import BenchError, must, run

LXC_BUSYBOX_TEMPLATE = Path("/usr/share/lxc/templates/lxc-busybox")
LXCFS_PACKAGES = ("lxcfs",)
LXCFS_RUNTIME = Path("/run/lxcfs")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def lxc_cgroups() -> set[Path]:
    """The LXC cgroups directly under the cgroup roots (v1 hierarchies and unified)."""
    return {path for path in CGROUP_ROOT.glob("*/lxc.*") if path.is_dir()}


def remove_cgroup_tree(path: Path) -> None:
    """rmdir an empty cgroup and its empty children, deepest first."""
    for child in path.iterdir():
        if child.is_dir():
            remove_cgroup_tree(child)
    path.rmdir()


class LxcContainer:
    """One LXC busybox container with no network, destroyed by ``destroy``."""

    def __init__(self, workdir: Path) -> None:
        self.name = f"ctfs-bench-{os.getpid()}"
        self.workdir = workdir
        self.log = workdir / "lxc.log"
        self.created = False
        # LXC leaves an empty lxc.pivot cgroup behind in every hierarchy (its monitor
        # moves there before removing its own cgroup); ours go again in destroy().
        self.cgroups_before = lxc_cgroups()

    def lxcpath(self) -> Path:
        done = run(["lxc-config", "lxc.lxcpath"], timeout=30)
        return Path(done.stdout.strip() or "/var/lib/lxc")

    def exists(self) -> bool:
        return (self.lxcpath() / self.name / "config").exists()

    def create(self) -> None:
        if not LXC_BUSYBOX_TEMPLATE.exists():
            raise BenchError(f"LXC's busybox template {LXC_BUSYBOX_TEMPLATE} is not installed")
        if self.exists():
            raise BenchError(f"an LXC container {self.name} exists already; not touching it")
        # Given with -f, this replaces /etc/lxc/default.conf (which asks for a veth on
        # lxcbr0): a network namespace with only loopback, nothing on the host side.
        # Unconfined, as ctfs runs (no AppArmor): a kernel with AppArmor on but no
        # policy loaded (the cgroup v2 guest's) otherwise makes lxc-start refuse.
        config = self.workdir / "lxc-bench.conf"
        config.write_text("lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\n")
        self.created = True  # a half-made container is destroyed as well
        must(["lxc-create", "-n", self.name, "-f", str(config), "-t", "busybox"])
        text = (self.lxcpath() / self.name / "config").read_text()
        if "lxc.net.0.type = empty" not in text or "lxc.net.0.link" in text:
            raise BenchError(f"unexpected network settings in the container config:\n{text}")

    def start(self) -> float:
        return must(
            ["lxc-start", "-n", self.name, "-d", "-o", str(self.log), "-l", "ERROR"], timeout=60
        )

    def attach_true(self) -> float:
        return must(["lxc-attach", "-n", self.name, "--", "true"], timeout=60)

    def stop(self) -> float:
        return must(["lxc-stop", "-n", self.name], timeout=120)

    def destroy(self) -> None:
        if self.created and self.exists():
            # -f stops it first (with a kill) if it is still running.
            done = run(["lxc-destroy", "-n", self.name, "-f"], timeout=120)
            if done.returncode != 0 or self.exists():
                raise BenchError(f"lxc-destroy -n {self.name} -f: {done.stderr.strip()}")
        ours = {"lxc.pivot", f"lxc.payload.{self.name}", f"lxc.monitor.{self.name}"}
        left = []
        for path in sorted(lxc_cgroups() - self.cgroups_before):
            if path.name in ours:
                try:
                    remove_cgroup_tree(path)  # fails, harmlessly, if anything is inside
                except OSError:
                    left.append(str(path))
        if left:
            raise BenchError(f"LXC cgroups still in use, left in place: {' '.join(left)}")


class Lxcfs:
    """A private LXCFS in the foreground on ``workdir/lxcfs``; ended by its PID."""

    def __init__(self, workdir: Path) -> None:
        self.mount = workdir / "lxcfs"
        self.pidfile = workdir / "lxcfs.pid"
        self.logfile = workdir / "lxcfs.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # LXCFS makes /run/lxcfs/{controllers,root} for its private mount namespace.
        self.runtime_existed = LXCFS_RUNTIME.exists()

    @property
    def uptime(self) -> Path:
        return self.mount / "proc" / "uptime"

    def mounted(self) -> bool:
        target = str(self.mount)
        with open("/proc/mounts") as mounts:
            return any(line.split()[1] == target for line in mounts)

    def start(self) -> None:
        self.mount.mkdir()
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen(
                ["lxcfs", "--foreground", "--pidfile", str(self.pidfile), str(self.mount)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"lxcfs exited with {self.proc.returncode}: {self.log_tail()}")
            if self.mounted():
                with contextlib.suppress(OSError):
                    if self.uptime.read_text().strip():
                        return
            time.sleep(0.05)
        raise BenchError(f"{self.uptime} did not become readable in 15 s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.logfile.read_text(errors="replace")[-1500:].strip() or "no output"

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None
        if self.mounted():
            done = run(["fusermount3", "-u", str(self.mount)], timeout=30)
            if done.returncode != 0:
                run(["umount", "-l", str(self.mount)], timeout=30)
        if self.mounted():
            raise BenchError(f"{self.mount} is still mounted")
        if not self.runtime_existed:
            for leftover in (LXCFS_RUNTIME / "controllers", LXCFS_RUNTIME / "root", LXCFS_RUNTIME):
                with contextlib.suppress(OSError):
                    leftover.rmdir()  # only if empty: nothing of anyone else's goes


class LxcDebian(LxcContainer):
    """An LXC container of a ctfs template tarball (Debian with systemd), no network.

    The download-free equivalent of ``lxc-create -t debian``: ``lxc-create -t none``
    with LXC's common.conf (``lxc.mount.auto = cgroup:mixed proc:mixed sys:mixed``,
    what systemd needs on a cgroup v1 host) and the tarball unpacked as its rootfs.
    A privileged container: LXC's own default, root inside is root outside.
    """

    def __init__(self, workdir: Path, tarball: Path) -> None:
        super().__init__(workdir)
        self.name = f"ctfs-bench-debian-{os.getpid()}"
        self.tarball = tarball
        self.log = workdir / "lxc-debian.log"

    def create(self) -> None:
        if self.exists():
            raise BenchError(f"an LXC container {self.name} exists already; not touching it")
        config = self.workdir / "lxc-debian.conf"
        config.write_text(
            "lxc.include = /usr/share/lxc/config/common.conf\n"
            "lxc.arch = linux64\n"
            "lxc.net.0.type = empty\n"
            "lxc.apparmor.profile = unconfined\n"
        )
        self.created = True  # a half-made container is destroyed as well
        must(["lxc-create", "-n", self.name, "-f", str(config), "-t", "none"])
        home = self.lxcpath() / self.name
        rootfs = home / "rootfs"
        rootfs.mkdir(mode=0o755)
        must(["tar", "-xzf", str(self.tarball), "--numeric-owner", "-C", str(rootfs)], 300)
        with open(home / "config", "a") as out:
            out.write(f"lxc.rootfs.path = dir:{rootfs}\nlxc.uts.name = {self.name}\n")
        text = (home / "config").read_text()
        if "lxc.net.0.type = empty" not in text or "lxc.net.0.link" in text:
            raise BenchError(f"unexpected network settings in the container config:\n{text}")

    def stop_traced(self) -> tuple[float, str]:
        """lxc-stop with its trace log; its time and the signal it sent init."""
        trace = self.workdir / "lxc-stop.trace"
        elapsed = must(["lxc-stop", "-n", self.name, "-l", "TRACE", "-o", str(trace)], 120)
        sent = [line for line in trace.read_text().splitlines() if "Sent signal" in line]
        if not sent:
            return elapsed, "not in lxc-stop's trace"
        number = int(sent[-1].split("Sent signal ", 1)[1].split()[0])
        name = (
            f"SIGRTMIN+{number - signal.SIGRTMIN}"
            if number >= signal.SIGRTMIN
            else signal.Signals(number).name
        )
        return elapsed, f"{name} (signal {number})"
