"""A container's own /proc files served by ctfs, next to the same files served by LXCFS.

For /proc/meminfo, /proc/uptime and /proc/cpuinfo, with 1 reader and with 50 at
once (``--readers``), it measures:

1. open + read to the end + close latency, median and p99, over ``--reads`` cycles
   per row (default 5000, split among the readers);
2. the serving daemon's CPU time per read (``utime + stime`` of ctfsd or lxcfs from
   ``/proc/<pid>/stat``, every thread, over the timed window, divided by the reads)
   and its CPU use during the window, in % of one CPU.

The readers are ``bench/reader.c`` (built with ``gcc -O2 -static``): one process
forks them, lets each warm up, starts them all at once and keeps every cycle's
latency; no interpreter start-up is timed.  For ctfs it runs inside a busybox
container of a private ctfsd (``tests.ctfsd_harness.Ctfsd``), through ``ctfs exec``,
and reads /proc/meminfo etc., which ctfs binds over the kernel's files: ctfsd places
the caller by its cgroup, the real path.  For LXCFS (a private instance on a
temporary directory, ``bench.start_stop.Lxcfs``) it runs on the host in cgroups of
its own, ``bench-procviews-<pid>`` in the memory, cpu, cpuacct, cpuset and pids
hierarchies, so LXCFS computes a container's view as it would for LXC.  Both have a
512 MiB RAM limit.  Each row runs ctfs, then LXCFS, so other work hits both alike.
Everything is removed at the end, also on failure or Ctrl-C: readers, container,
ctfsd, LXCFS (by its PID) and its mount, the cgroups, the temporary directory.

Run it as root from the repository root::

    sudo .venv/bin/python -m bench.procviews [--reads N] [--readers 1,50] [--idle SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    BenchError,
    ensure_packages,
    interrupt_on_termination,
    load_average,
    must,
    print_log_tail,
    run_bench,
    safely,
    uninterrupted,
    write_state,
)
from bench.lxc import LXCFS_PACKAGES, Lxcfs
from bench.scrape import parse_counts, process_cpu_s
from bench.start_stop import remove_ctfs_container
from tests.ctfsd_harness import CTFS, Ctfsd, write_errno

CTID = 101
FILES = ("meminfo", "uptime", "cpuinfo")
RAM_LIMIT = 512 << 20
READER_SOURCE = Path(__file__).with_name("reader.c")
READER_INSIDE = "/tmp/bench-procviews-reader"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids")
RUN_TIMEOUT_S = 300.0
US = 1e6


@dataclass
class Run:
    """One timed window: what the reader reported and the daemon's CPU meanwhile."""

    reads: int
    wall_s: float
    median_us: float
    p99_us: float
    size: int
    first: str
    daemon_cpu_s: float

    @property
    def cpu_us_per_read(self) -> float:
        return self.daemon_cpu_s / self.reads * US

    @property
    def cpu_percent(self) -> float:
        return 100 * self.daemon_cpu_s / self.wall_s


def parse_report(line: str, daemon_cpu_s: float) -> Run:
    """The reader's summary line (``reads=N wall_ns=N ... first=TEXT``)."""
    head, _, first = line.rstrip("\n").partition(" first=")
    try:
        n = {key: int(value) for key, value in (word.split("=", 1) for word in head.split())}
        times = (n["wall_ns"] / 1e9, n["median_ns"] / 1e3, n["p99_ns"] / 1e3)
        return Run(n["reads"], *times, n["bytes"], first, daemon_cpu_s)
    except (KeyError, ValueError) as exc:
        raise BenchError(f"unexpected report from the reader: {line!r}") from exc


def stop_reader(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (ctfs exec passes it on to the reader), then SIGKILL; by its PID."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        proc.kill()  # no-op once it has ended
        proc.wait(timeout=10)


def measure(argv: Sequence[str], daemon_pid: int) -> Run:
    """Run the reader: once it is ready, sample the daemon's CPU around its reads."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(RUN_TIMEOUT_S, proc.terminate)
    watchdog.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        before = after = 0.0
        report = ""
        if proc.stdout.readline() == "ready\n":
            before = process_cpu_s(daemon_pid)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            report = proc.stdout.readline()
            after = process_cpu_s(daemon_pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.returncode != 0 or not report:
            stop_reader(proc)
            raise BenchError(f"{' '.join(argv)}: {proc.stderr.read().strip() or 'no report'}")
        return parse_report(report, after - before)
    finally:
        watchdog.cancel()
        stop_reader(proc)


def build_reader(workdir: Path) -> Path:
    binary = workdir / "reader"
    must(["gcc", "-O2", "-static", "-Wall", "-o", str(binary), str(READER_SOURCE)])
    binary.chmod(0o755)  # a container with a private id range runs it as "others"
    return binary


def idle_cpu_s(pid: int, seconds: float) -> float:
    """The CPU time process ``pid`` used over ``seconds`` with nobody reading."""
    before = process_cpu_s(pid)
    time.sleep(seconds)
    return process_cpu_s(pid) - before


# --------------------------------------------------------------------- ctfs


class CtfsSide:
    """A private ctfsd with one running container holding the reader."""

    def __init__(self) -> None:
        self.daemon = Ctfsd()
        self.container = self.daemon.mount / str(CTID)

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def start(self, reader: Path) -> None:
        self.daemon.start()
        self.container.mkdir()
        limit = f"physpages 0:{RAM_LIMIT >> 20}M\n".encode()
        status = write_errno(self.container / "limits", limit)
        if status != 0:
            raise BenchError(f"setting physpages of CT {CTID}: {os.strerror(status)}")
        write_state(self.container, "running")
        shutil.copy(reader, self.daemon.state / str(CTID) / "root" / READER_INSIDE.lstrip("/"))

    def argv(self, name: str, iterations: int, readers: int) -> list[str]:
        return [
            *(str(CTFS), "--mount", str(self.daemon.mount), "exec", str(CTID), "--"),
            *(READER_INSIDE, f"/proc/{name}", str(iterations), str(readers)),
        ]

    def cleanup(self) -> None:
        if self.daemon.proc is not None:
            safely(f"removing CT {CTID}", lambda: remove_ctfs_container(self.container))
        safely("ctfsd cleanup", self.daemon.cleanup)


# -------------------------------------------------------------------- LXCFS


class LxcfsSide:
    """A private LXCFS and cgroups of our own, like an LXC container's, for its readers."""

    def __init__(self, workdir: Path) -> None:
        self.lxcfs = Lxcfs(workdir)
        self.reader = workdir / "reader"
        self.parent = f"bench-procviews-{os.getpid()}"
        self.made: list[Path] = []  # cgroup directories, parents first

    @property
    def pid(self) -> int:
        assert self.lxcfs.proc is not None
        return self.lxcfs.proc.pid

    def start(self) -> None:
        ensure_packages(LXCFS_PACKAGES)
        for controller in CONTROLLERS:
            root = CGROUP_ROOT / controller
            if not root.is_dir():
                continue
            for path in (root / self.parent, root / self.parent / "reader"):
                path.mkdir()
                self.made.append(path)
                if controller == "cpuset":  # a new cpuset has neither CPUs nor memory
                    for name in ("cpuset.cpus", "cpuset.mems"):
                        (path / name).write_text((root / name).read_text())
            if controller == "memory":
                limit = root / self.parent / "reader" / "memory.limit_in_bytes"
                limit.write_text(str(RAM_LIMIT))
        self.lxcfs.start()

    def argv(self, name: str, iterations: int, readers: int) -> list[str]:
        procs = [str(path / "cgroup.procs") for path in self.made if path.name == "reader"]
        path = self.lxcfs.mount / "proc" / name
        return [str(self.reader), str(path), str(iterations), str(readers), *procs]

    def remove_cgroups(self) -> None:
        """rmdir ours, children first, after killing any reader of ours left in them."""
        left = []
        for path in reversed(self.made):
            with contextlib.suppress(OSError):
                for pid in (path / "cgroup.procs").read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            for _ in range(50):
                with contextlib.suppress(OSError):
                    path.rmdir()
                if not path.exists():
                    break
                time.sleep(0.1)
            else:
                left.append(str(path))
        self.made.clear()
        if left:
            raise BenchError(f"cgroups still in use, left in place: {' '.join(left)}")

    def cleanup(self) -> None:
        safely("stopping lxcfs", self.lxcfs.stop)
        safely("removing the bench's cgroups", self.remove_cgroups)


# ------------------------------------------------------------------ output


@dataclass
class Row:
    name: str
    readers: int
    ctfs: Run
    lxcfs: Run


def fmt_us(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.1f} ms"
    return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} µs"


def verdict(row: Row) -> str:
    """Against the target: no slower than LXCFS (median) and less CPU per read."""
    speed = row.ctfs.median_us / row.lxcfs.median_us
    tail = row.ctfs.p99_us / row.lxcfs.p99_us
    cpu = row.ctfs.cpu_us_per_read / max(row.lxcfs.cpu_us_per_read, 1e-9)
    problems = []
    if speed > 1:
        problems.append(f"{speed:.2f}x LXCFS's median latency")
    if cpu >= 1:
        problems.append(f"{cpu:.2f}x LXCFS's CPU per read")
    met = "MET" if not problems else "NOT MET: " + ", ".join(problems)
    return f"{met} (median {speed:.2f}x, p99 {tail:.2f}x, CPU/read {cpu:.2f}x)"


def print_rows(rows: Sequence[Row], reads: int) -> None:
    print(f"\nopen + read to the end + close of the container's own file, {reads} reads a row")
    print(
        f"  {'file':<14} {'readers':>7} {'ctfs med':>9} {'p99':>9} {'LXCFS med':>9} {'p99':>9}"
        f" {'ctfsd CPU/read':>14} {'lxcfs CPU/read':>14} {'ctfsd CPU':>9} {'lxcfs CPU':>9}"
    )
    for row in rows:
        ours, peer = row.ctfs, row.lxcfs
        print(
            f"  /proc/{row.name:<8} {row.readers:>7} {fmt_us(ours.median_us):>9}"
            f" {fmt_us(ours.p99_us):>9} {fmt_us(peer.median_us):>9} {fmt_us(peer.p99_us):>9}"
            f" {ours.cpu_us_per_read:>11.0f} µs {peer.cpu_us_per_read:>11.0f} µs"
            f" {ours.cpu_percent:>8.0f}% {peer.cpu_percent:>8.0f}%"
        )
    print("\nVerdict (target: no slower than LXCFS and less CPU per read)")
    for row in rows:
        print(f"  /proc/{row.name:<8} x{row.readers:<3} {verdict(row)}")


def print_contents(rows: Sequence[Row]) -> None:
    print("\nWhat the readers got (size, first line)")
    for row in rows:
        if row.readers == rows[0].readers:
            for side, run in (("ctfs", row.ctfs), ("LXCFS", row.lxcfs)):
                print(f"  /proc/{row.name:<8} {side:<5} {run.size:>5} B  {run.first}")


NOTES = """
Notes
  - Latency is per open/read/close cycle as the reader's clock saw it (CLOCK_MONOTONIC);
    with N readers at once it includes waiting for the daemon to serve the others.
  - Daemon CPU: /proc/<pid>/stat (10 ms ticks) over the timed window only, after the
    warm-up; "CPU" is that over the window's wall time, in % of one CPU (of {cpus} here).
    It includes whatever else the daemon did meanwhile (its idle use is shown above).
  - ctfsd is one Python process serving requests on one trio loop, so concurrent reads
    queue behind each other; lxcfs is a multithreaded C FUSE daemon.
  - LXCFS's meminfo is the host's with some lines patched, ctfs's is shorter.  LXCFS's
    uptime is the age of the reader's pid namespace's init: the host's, here."""


# --------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.procviews",
        description="Latency and daemon CPU of a container's /proc files: ctfs next to LXCFS.",
    )
    parser.add_argument(
        "--reads", type=int, default=5000, help="reads a row, shared by its readers (default 5000)"
    )
    parser.add_argument(
        "--readers", type=parse_counts, default=[1, 50], help="readers at once (default 1,50)"
    )
    parser.add_argument(
        "--idle", type=float, default=3.0, help="seconds to measure idle daemons (default 3)"
    )
    args = parser.parse_args(argv)
    if args.reads < max(args.readers) or args.idle < 0:
        parser.error("--reads must be at least the most readers, --idle not negative")
    return args


def bench(ctfs: CtfsSide, lxcfs: LxcfsSide, args: argparse.Namespace) -> list[Row]:
    if args.idle:
        print(f"idle: {args.idle:g} s each ...", flush=True)
        idle = idle_cpu_s(ctfs.pid, args.idle), idle_cpu_s(lxcfs.pid, args.idle)
        print(f"  ctfsd used {idle[0] * 1e3:.0f} ms CPU, lxcfs {idle[1] * 1e3:.0f} ms")
    rows = []
    for name in FILES:
        for readers in args.readers:
            iterations = args.reads // readers
            print(f"/proc/{name}: {readers} x {iterations} reads ...", flush=True)
            ours = measure(ctfs.argv(name, iterations, readers), ctfs.pid)
            peer = measure(lxcfs.argv(name, iterations, readers), lxcfs.pid)
            rows.append(Row(name, readers, ours, peer))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.procviews: run it as root (sudo)", file=sys.stderr)
        return 2
    interrupt_on_termination()
    cpus = os.cpu_count()
    print(f"kernel {os.uname().release}, {cpus} CPUs, reads={args.reads}, {load_average()}")
    workdir = Path(tempfile.mkdtemp(prefix="ctfs-bench-"))
    ctfs = CtfsSide()
    lxcfs = LxcfsSide(workdir)
    try:
        reader = build_reader(workdir)
        ctfs.start(reader)
        lxcfs.start()
        rows = bench(ctfs, lxcfs, args)
    except Exception:
        print_log_tail(ctfs.daemon)
        raise
    finally:
        with uninterrupted():
            lxcfs.cleanup()
            ctfs.cleanup()
            safely("removing the work directory", lambda: shutil.rmtree(workdir))

    print(f"\nat the end: {load_average()}")
    print_rows(rows, args.reads)
    print_contents(rows)
    print(NOTES.format(cpus=cpus))
    return 0


if __name__ == "__main__":
    run_bench("bench.procviews", main)
