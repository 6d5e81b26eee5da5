"""Start/stop and control-file latency of ctfs next to LXC and LXCFS, on this machine.

What it measures, N runs each (``--runs``, default 20), median and p90:

1. ctfs "start to first command": writing ``running`` to ``MOUNT/CT/state``
   (open+write+close, as ``echo`` does) until ``ctfs exec CT -- true`` has
   returned 0; also the state write alone and the exec alone.
2. ctfs graceful stop: writing ``stopped`` to the state file.
3. The same with LXC's busybox template (network type ``empty``: no bridge, no
   veth, nothing on the host's network): ``lxc-start -d``, ``lxc-attach -- true``
   and ``lxc-stop``.  Debian's ``lxc`` package (the busybox template comes with its
   dependency ``liblxc-common``) is installed with apt-get when missing.
4. Read latency of a control file: open+read+close of ``MOUNT/CT/state`` of a
   running container, in-process, next to the raw cgroup v1 file ``pids.current``
   of that container and ``/proc/uptime`` of a private LXCFS instance (``lxcfs``
   installed when missing, run in the foreground on a temporary directory); and
   the same three read by a spawned ``cat``, as a shell user would.

Every system runs one untimed warm-up cycle first, and the container is left
``--settle`` seconds between its first command and the stop.  The ctfs side uses a
private ctfsd (``tests.ctfsd_harness.Ctfsd``: own state dir, mount and cgroup
parent).  Everything made is removed at the end, also on failure or Ctrl-C:
containers, ctfsd, the LXC container and the empty ``lxc.pivot`` cgroups LXC
leaves, the LXCFS instance (ended by its PID) and its mount, temporary
directories.  Packages it installs stay installed, but no service is started
(policy-rc.d) and the ones their maintainer scripts enabled for boot are
disabled again, so lxc-net never makes its bridge.

Run it as root from the repository root::

    sudo .venv/bin/python -m bench.start_stop [--runs N] [--reads N] [--cat-reads N]
                                              [--settle SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    BenchError,
    ensure_packages,
    interrupt_on_termination,
    load_average,
    must,
    print_log_tail,
    run,
    run_bench,
    safely,
    uninterrupted,
    write_state,
)
from tests.ctfsd_harness import CTFS, Ctfsd, write_errno

CTID = 101
LXC_PACKAGES = ("lxc", "busybox-static")
LXCFS_PACKAGES = ("lxcfs",)
LXC_BUSYBOX_TEMPLATE = Path("/usr/share/lxc/templates/lxc-busybox")
LXCFS_RUNTIME = Path("/run/lxcfs")
CGROUP_ROOT = Path("/sys/fs/cgroup")
MS = 1e3
US = 1e6


@dataclass
class Samples:
    """Durations of one metric, in seconds."""

    label: str
    unit: str  # "ms" or "µs"
    values: list[float] = field(default_factory=list)

    @property
    def scale(self) -> float:
        return MS if self.unit == "ms" else US

    def median(self) -> float:
        return statistics.median(self.values) * self.scale

    def p90(self) -> float:
        if len(self.values) < 2:
            return self.values[0] * self.scale
        return statistics.quantiles(self.values, n=10, method="inclusive")[8] * self.scale

    def row(self) -> str:
        if not self.values:
            return f"  {self.label:<46} {'-':>11} {'-':>11} {0:>6}"
        return (
            f"  {self.label:<46} {_fmt(self.median(), self.unit):>11}"
            f" {_fmt(self.p90(), self.unit):>11} {len(self.values):>6}"
        )


def _fmt(value: float, unit: str) -> str:
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def print_table(title: str, rows: Sequence[Samples]) -> None:
    print(f"\n{title}")
    print(f"  {'metric':<46} {'median':>11} {'p90':>11} {'n':>6}")
    for samples in rows:
        print(samples.row())


# ------------------------------------------------------------------ helpers


# --------------------------------------------------------------------- ctfs


@dataclass
class CtfsResults:
    start: Samples = field(default_factory=lambda: Samples("ctfs state write 'running'", "ms"))
    exec: Samples = field(default_factory=lambda: Samples("ctfs exec CT -- true", "ms"))
    first: Samples = field(default_factory=lambda: Samples("ctfs start to first command", "ms"))
    stop: Samples = field(default_factory=lambda: Samples("ctfs state write 'stopped'", "ms"))


def ctfs_exec_true(mount: Path, ctid: int) -> float:
    return must([str(CTFS), "--mount", str(mount), "exec", str(ctid), "--", "true"])


def ctfs_cycle(container: Path, settle: float, results: CtfsResults | None) -> None:
    began = time.perf_counter()
    started = write_state(container, "running")
    executed = ctfs_exec_true(container.parent, int(container.name))
    first = time.perf_counter() - began
    time.sleep(settle)
    stopped = write_state(container, "stopped")
    if results is not None:
        results.start.values.append(started)
        results.exec.values.append(executed)
        results.first.values.append(first)
        results.stop.values.append(stopped)


def bench_ctfs(container: Path, runs: int, settle: float) -> CtfsResults:
    print(f"ctfs: {runs} start/exec/stop cycles of CT {container.name} ...", flush=True)
    ctfs_cycle(container, settle, None)  # warm-up
    results = CtfsResults()
    for _ in range(runs):
        ctfs_cycle(container, settle, results)
    return results


# ---------------------------------------------------------------------- LXC


@dataclass
class LxcResults:
    start: Samples = field(default_factory=lambda: Samples("lxc-start -d", "ms"))
    attach: Samples = field(default_factory=lambda: Samples("lxc-attach -- true", "ms"))
    first: Samples = field(default_factory=lambda: Samples("lxc start to first command", "ms"))
    stop: Samples = field(default_factory=lambda: Samples("lxc-stop", "ms"))


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
        config = self.workdir / "lxc-bench.conf"
        config.write_text("lxc.net.0.type = empty\n")
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

    def cycle(self, settle: float, results: LxcResults | None) -> None:
        began = time.perf_counter()
        started = self.start()
        attached = self.attach_true()
        first = time.perf_counter() - began
        time.sleep(settle)
        stopped = self.stop()
        if results is not None:
            results.start.values.append(started)
            results.attach.values.append(attached)
            results.first.values.append(first)
            results.stop.values.append(stopped)

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


def bench_lxc(workdir: Path, runs: int, settle: float) -> LxcResults:
    ensure_packages(LXC_PACKAGES)
    lxc = LxcContainer(workdir)
    try:
        print(f"lxc: creating {lxc.name} (busybox template, lxc.net.0.type = empty) ...")
        lxc.create()
        print(f"lxc: {runs} start/attach/stop cycles ...", flush=True)
        try:
            lxc.cycle(settle, None)  # warm-up
            results = LxcResults()
            for _ in range(runs):
                lxc.cycle(settle, results)
        except BenchError as exc:
            log = lxc.log.read_text(errors="replace")[-2000:] if lxc.log.exists() else ""
            raise BenchError(f"{exc}\nlxc-start log:\n{log}" if log else str(exc)) from exc
        return results
    finally:
        safely("destroying the LXC container", lxc.destroy)


# -------------------------------------------------------------------- LXCFS


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


# -------------------------------------------------------------------- reads


def read_in_process(path: str) -> float:
    """open+read+close of ``path``; return the time it took."""
    began = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - began
    if not data:
        raise BenchError(f"{path} read empty")
    return elapsed


def read_with_cat(cat: str, path: str) -> float:
    """``cat path`` as a spawned process; return its wall time."""
    began = time.perf_counter()
    done = subprocess.run([cat, path], stdin=subprocess.DEVNULL, capture_output=True, check=False)
    elapsed = time.perf_counter() - began
    if done.returncode != 0 or not done.stdout:
        raise BenchError(f"cat {path}: status {done.returncode}: {done.stderr!r}")
    return elapsed


def bench_reads(
    sources: Sequence[tuple[str, Path]],
    iterations: int,
    reader: Callable[[str], float],
    prefix: str,
    unit: str,
) -> list[Samples]:
    """Read every source ``iterations`` times, interleaved so load hits all alike."""
    results = [Samples(f"{prefix} {label}", unit) for label, _ in sources]
    paths = [str(path) for _, path in sources]
    for path in paths:
        for _ in range(max(5, iterations // 50)):  # warm-up
            reader(path)
    for _ in range(iterations):
        for samples, path in zip(results, paths, strict=True):
            samples.values.append(reader(path))
    return results


# ------------------------------------------------------------------ summary


def summary(pairs: Sequence[tuple[str, Samples | None, Samples | None]]) -> None:
    print("\nSummary (medians; ratio = ctfs / peer, below 1 means ctfs is faster)")
    print(f"  {'metric':<28} {'ctfs':>11}  {'peer':<30} {'peer med.':>11} {'ratio':>7}")
    for metric, ours, peer in pairs:
        if ours is None or not ours.values:
            continue
        mine = _fmt(ours.median(), ours.unit)
        if peer is None or not peer.values:
            print(f"  {metric:<28} {mine:>11}  {'(not measured)':<30} {'-':>11} {'-':>7}")
            continue
        ratio = ours.median() / peer.median() if peer.median() else float("inf")
        theirs = _fmt(peer.median(), peer.unit)
        print(f"  {metric:<28} {mine:>11}  {peer.label:<30} {theirs:>11} {ratio:>6.2f}x")


# --------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.start_stop",
        description="ctfs start/stop and control-file read latency next to LXC and LXCFS.",
    )
    parser.add_argument("--runs", type=int, default=20, help="start/stop cycles (default 20)")
    parser.add_argument(
        "--reads", type=int, default=2000, help="in-process reads per file (default 2000)"
    )
    parser.add_argument(
        "--cat-reads", type=int, default=200, help="cat runs per file (default 200)"
    )
    parser.add_argument(
        "--ids",
        choices=("private", "host"),
        default="private",
        help="the container's ids: its own range (the default) or the host's",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.5,
        help="seconds between the first command and the stop (default 0.5)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.reads < 1 or args.cat_reads < 1 or args.settle < 0:
        parser.error("counts must be at least 1 and --settle not negative")
    return args


NOTES = """
Notes
  - Both stop paths send busybox init SIGUSR1.  busybox init then sends SIGTERM to
    everything, sleeps 1 s, sends SIGKILL, sleeps 1 s more and calls reboot(), which in
    a pid namespace kills the namespace's init: lxc-stop waits for all of that (~2 s).
    ctfsd ends the container once init has been its only process for a short settle
    time (HALT_SETTLE_S in ctfs/model/lifecycle.py), skipping the sleeps.
  - ctfs exec is a Python program (interpreter start-up included); lxc-attach is C.
  - The templates differ: both start syslogd at boot; LXC's rcS also runs mount -a and
    udhcpc (no eth0 in the empty network namespace) and its inittab keeps a getty and a
    console shell; ctfs's inittab runs rcK (stops syslogd) before init kills the rest."""


def remove_ctfs_container(container: Path) -> None:
    if not container.exists():
        return
    status = write_errno(container / "state", b"stopped")
    if status not in (0, 2):
        raise BenchError(f"stopping {container}: {os.strerror(status)}")
    container.rmdir()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.start_stop: run it as root (sudo)", file=sys.stderr)
        return 2
    interrupt_on_termination()
    cat = shutil.which("cat") or "/bin/cat"
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, runs={args.runs}, {load_average()}")

    workdir = Path(tempfile.mkdtemp(prefix="ctfs-bench-"))
    daemon = Ctfsd()
    container = daemon.mount / str(CTID)
    lxcfs: Lxcfs | None = None
    ctfs_results: CtfsResults | None = None
    lxc_results: LxcResults | None = None
    lxc_problem = ""
    reads: list[Samples] = []
    cats: list[Samples] = []
    try:
        daemon.start()
        container.mkdir()
        write_errno(container / "idmap", f"{args.ids}\n".encode())
        print(f"ctfs: CT {CTID} with {args.ids} ids: {(container / 'idmap').read_text().strip()}")
        ctfs_results = bench_ctfs(container, args.runs, args.settle)

        try:
            lxc_results = bench_lxc(workdir, args.runs, args.settle)
        except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
            lxc_problem = str(exc)
            print(f"lxc: not measured: {lxc_problem}", file=sys.stderr)

        write_state(container, "running")
        sources: list[tuple[str, Path]] = [
            ("ctfs MOUNT/CT/state", container / "state"),
            ("cgroup v1 pids.current", daemon.cgroup_dir("pids", CTID) / "pids.current"),
        ]
        try:
            ensure_packages(LXCFS_PACKAGES)
            lxcfs = Lxcfs(workdir)
            lxcfs.start()
            sources.append(("lxcfs /proc/uptime", lxcfs.uptime))
        except (BenchError, OSError) as exc:
            print(f"lxcfs: not measured: {exc}", file=sys.stderr)
        print(f"reads: {args.reads} in-process and {args.cat_reads} cat reads per file ...")
        reads = bench_reads(sources, args.reads, read_in_process, "read", "µs")
        cats = bench_reads(
            sources, args.cat_reads, lambda path: read_with_cat(cat, path), "cat", "ms"
        )
    except Exception:
        print_log_tail(daemon)
        raise
    finally:
        with uninterrupted():
            if lxcfs is not None:
                safely("stopping lxcfs", lxcfs.stop)
            if daemon.proc is not None:
                safely(f"removing CT {CTID}", lambda: remove_ctfs_container(container))
            safely("ctfsd cleanup", daemon.cleanup)
            safely("removing the work directory", lambda: shutil.rmtree(workdir))

    print(f"\nStart and stop, {args.runs} runs each after one warm-up, settle {args.settle} s")
    print(f"at the end: {load_average()}")
    rows: list[Samples] = []
    if ctfs_results is not None:
        rows += [ctfs_results.first, ctfs_results.start, ctfs_results.exec, ctfs_results.stop]
    if lxc_results is not None:
        rows += [lxc_results.first, lxc_results.start, lxc_results.attach, lxc_results.stop]
    print_table("Start / first command / stop", rows)
    if lxc_results is None:
        print(f"  LXC not measured: {lxc_problem}")
    print_table(f"Control-file reads, open+read+close in-process, {args.reads} each", reads)
    print_table(f"Control-file reads by a spawned cat, {args.cat_reads} each", cats)

    def pick(samples: Sequence[Samples], index: int) -> Samples | None:
        return samples[index] if len(samples) > index else None

    ours = ctfs_results or CtfsResults()
    peer = lxc_results or LxcResults()
    summary(
        [
            ("start to first command", ours.first, peer.first),
            ("start (state write)", ours.start, peer.start),
            ("first command (exec)", ours.exec, peer.attach),
            ("graceful stop", ours.stop, peer.stop),
            ("read state, in-process", pick(reads, 0), pick(reads, 1)),
            ("read state, in-process", pick(reads, 0), pick(reads, 2)),
            ("cat state", pick(cats, 0), pick(cats, 1)),
            ("cat state", pick(cats, 0), pick(cats, 2)),
        ]
    )
    print(NOTES)
    return 0


if __name__ == "__main__":
    run_bench("bench.start_stop", main)
