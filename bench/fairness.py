"""Does ctfs deliver the CPU and disk shares it is asked for?  Percent error, next to raw cgroups.

What it measures, on a private ctfsd (``tests.ctfsd_harness.Ctfsd``) and, in the same
run, on a peer made of plain cgroup files (v1: ``/sys/fs/cgroup/<controller>/
ctfs-bench-raw-<pid>/<a|b|c>``, v2: ``/sys/fs/cgroup/ctfs-bench-raw-<pid>/<a|b|c>``)
holding exactly the kernel values ctfs wrote (``tests.cgroup_knobs``), with the
same loads run as host processes this program spawns:

1. cpuunits 1:1, 1:3, 1:10 and 1:100 (1000 against 1000, 3000, 10000, 100000): two
   containers each run one busy shell loop pinned to CPU 0 (``taskset 1`` inside the
   container); the share ratio is the ratio of their CPU time (``cpuacct.usage``, on v2
   ``cpu.stat`` usage_usec) deltas over
   ``--seconds`` (default 5) after ``--settle`` (default 1).  The peer gets the
   ``cpu.shares`` (v2: ``cpu.weight``) ctfs wrote.
2. cpulimit 10, 25, 50, 100 and 150: one container runs two busy loops, not pinned;
   the measure is its CPU time over the window as a percent of one CPU.  The peer
   gets the ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (v2: ``cpu.max``) ctfs wrote.
3. ioprio 0, 4 and 7 (BFQ weights 100, 500, 800, so 1 : 5 : 8): three containers
   write at once, each with ``--io-writers`` (default 2) loops of ``dd bs=1M
   count=64`` to its own files, with ``oflag=direct`` when btrfs takes it (else
   ``conv=fsync``); the measure is the bytes each container's blkio cgroup got
   through BFQ (``blkio.bfq.io_service_bytes``) over the window, as a ratio to the
   ioprio-0 container.  The peer runs the host's dd the same way in raw blkio
   cgroups with the same ``blkio.bfq.weight``, writing to a scratch directory on the
   same pool (the same loop device, so the same BFQ queue).  A fresh pool image is
   sparse and slow while the host allocates its blocks, so ctfs first gets one
   labelled "cold" round on it, then the host fills the pool's free space once and
   deletes it again, and only then do ctfs and the peer take turns, ``--io-trials``
   times each (default 3, median shown), each with a control round at equal
   weights (ioprio 4, 4, 4) that shows how far equal writers drift apart by chance.
   Unless every weighted round beats that band and the median ioprio 7 : 0 split
   is at least 1.5, the output says plainly that BFQ did not differentiate.

Error is ``measured / requested - 1`` in percent.  Busy loops are ended by PID: a
container's are the PIDs that appeared in its cgroup after the load was started,
the peer's are the process groups this program made.  Everything made is removed
at the end, also on failure or Ctrl-C: the loads, the raw cgroups, the scratch
files, the containers and ctfsd.

Run it as root from the repository root on an otherwise idle machine::

    sudo .venv/bin/python -m bench.fairness [--seconds S] [--settle S]
                                            [--io-trials N] [--io-writers N]
                                            [--parts cpuunits,cpulimit,ioprio]

It takes about 5 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    BenchError,
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
from ctfs.kernel import storage
from ctfs.kernel.cgroup_v1 import remove_cgroup_dir
from ctfs.policy.scheduling import Scheduling
from tests.cgroup_knobs import NO_CAP, Knobs, host_knobs
from tests.ctfsd_harness import CTFS, Ctfsd, write_errno

BUSY = "while :; do :; done"
BASE_UNITS = 1000
UNIT_RATIOS = (1, 3, 10, 100)
CPULIMITS = (10, 25, 50, 100, 150)
IOPRIOS = (0, 4, 7)
EQUAL_IOPRIOS = (4, 4, 4)
IO_FILE_MB = 64
MIN_SPLIT = 1.5  # least ioprio 7 : ioprio 0 byte ratio that counts as differentiation
CPU_CTS = (201, 202)
IO_CTS = (211, 212, 213)
RAW_CHILDREN = ("a", "b", "c")
PARTS = ("cpuunits", "cpulimit", "ioprio")


def error_pct(measured: float, requested: float) -> float:
    return (measured / requested - 1.0) * 100.0 if requested else float("nan")


@dataclass
class CpuTimes:
    """/proc/stat's first line, in ticks."""

    busy: int
    system: int
    iowait: int
    total: int

    @classmethod
    def now(cls) -> CpuTimes:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
        total = user + nice + system + idle + iowait + irq + softirq + steal
        return cls(total - idle - iowait, system + irq + softirq, iowait, total)

    def since(self, before: CpuTimes) -> tuple[float, float, float]:
        """(busy, system, iowait) percent of all CPUs since ``before``."""
        span = max(1, self.total - before.total)
        return (
            100.0 * (self.busy - before.busy) / span,
            100.0 * (self.system - before.system) / span,
            100.0 * (self.iowait - before.iowait) / span,
        )


@dataclass
class Window:
    """Counter deltas over one measuring window."""

    deltas: list[int]
    seconds: float
    cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)


def measure(counters: Sequence[Callable[[], int]], settle: float, seconds: float) -> Window:
    time.sleep(settle)
    cpu_before = CpuTimes.now()
    before = [read() for read in counters]
    began = time.monotonic()
    time.sleep(seconds)
    after = [read() for read in counters]
    elapsed = time.monotonic() - began
    cpu = CpuTimes.now().since(cpu_before)
    return Window([a - b for a, b in zip(after, before, strict=True)], elapsed, cpu)


# ------------------------------------------------------------------ ctfs side


class Containers:
    """The bench's containers on a private ctfsd, and the loads run inside them."""

    def __init__(self, daemon: Ctfsd, knobs: Knobs) -> None:
        self.daemon = daemon
        self.knobs = knobs
        self.made: list[int] = []

    def path(self, ctid: int) -> Path:
        return self.daemon.mount / str(ctid)

    def at(self, ctid: int) -> Callable[[str], Path]:
        """The locator of CT ``ctid``'s cgroup files (see tests.cgroup_knobs)."""
        return lambda controller: self.daemon.cgroup_dir(controller, ctid)

    def create_running(self, ctid: int) -> None:
        self.path(ctid).mkdir()
        self.made.append(ctid)
        write_state(self.path(ctid), "running")

    def write_setting(self, ctid: int, name: str, value: int) -> None:
        status = write_errno(self.path(ctid) / name, f"{value}\n".encode())
        if status != 0:
            raise BenchError(f"writing {value} to CT {ctid}'s {name}: {os.strerror(status)}")

    def exec(self, ctid: int, *command: str) -> None:
        must([str(CTFS), "--mount", str(self.daemon.mount), "exec", str(ctid), "--", *command])

    def pids(self, ctid: int) -> set[int]:
        return set(self.daemon.container_pids(ctid))

    def start_loops(self, ctid: int, script: str, count: int, pin_cpu0: bool) -> set[int]:
        """Leave ``count`` copies of ``script`` running detached; return the PIDs before."""
        before = self.pids(ctid)
        pin = "taskset 1 " if pin_cpu0 else ""
        # stdio to /dev/null: ctfs exec returns once nothing holds its pipes.
        one = f'({pin}sh -c "$0" </dev/null >/dev/null 2>&1 &)'
        self.exec(ctid, "sh", "-c", "; ".join([one] * count), script)
        return before

    def end_loads(self, ctid: int, baseline: set[int]) -> None:
        """SIGKILL, by PID, whatever appeared in the container since ``baseline``."""
        deadline = time.monotonic() + 15
        while True:
            extra = self.pids(ctid) - baseline
            if not extra:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"CT {ctid}: load processes {sorted(extra)} do not go away")
            for pid in extra:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def cpu_ns(self, ctid: int) -> Callable[[], int]:
        return lambda: self.knobs.cpu_ns(self.at(ctid))

    def io_bytes(self, ctid: int) -> Callable[[], int]:
        return lambda: self.knobs.io_bytes(self.at(ctid))

    def remove_all(self) -> None:
        for ctid in reversed(self.made):
            path = self.path(ctid)
            if not path.exists():
                continue
            status = write_errno(path / "state", b"stopped")
            if status not in (0, errno.ENOENT):
                raise BenchError(f"stopping CT {ctid}: {os.strerror(status)}")
            path.rmdir()
        self.made.clear()


# -------------------------------------------------------------- raw cgroups


class RawCgroups:
    """Plain cgroup directories under ``ctfs-bench-raw-<pid>`` and host processes in them."""

    def __init__(self, scratch: Path, knobs: Knobs) -> None:
        self.parent = f"ctfs-bench-raw-{os.getpid()}"
        self.knobs = knobs
        self.made: list[Path] = []
        self.dirs: dict[str, list[Path]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.scratch = scratch

    def at(self, child: str) -> Callable[[str], Path]:
        """The locator of raw cgroup ``child``'s files (see tests.cgroup_knobs)."""
        return self.knobs.raw_at(self.parent, child)

    def make(self, child: str) -> None:
        self.dirs[child] = []
        for path in self.knobs.raw_dirs(self.parent, child):
            if not path.is_dir():
                path.mkdir()
                self.made.append(path)
            if path.name == child:
                self.dirs[child].append(path)
            else:
                self.knobs.enable(path)

    def spawn(self, child: str, script: str, count: int, pin_cpu0: bool) -> None:
        """Start ``count`` host copies of ``script`` in ``child``'s cgroups (own process groups)."""
        files = [str(d / "cgroup.procs") for d in self.dirs[child]]
        pin = "taskset 1 " if pin_cpu0 else ""
        # The shell joins the cgroups before it execs the load, so nothing runs outside.
        join = f'for f do echo $$ > "$f" || exit 1; done; exec {pin}sh -c "$BENCH_LOAD"'
        env = {**os.environ, "BENCH_LOAD": script}
        for _ in range(count):
            self.procs.append(
                subprocess.Popen(
                    ["sh", "-c", join, "sh", *files],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        started = {p.pid for p in self.procs[-count:]}
        deadline = time.monotonic() + 10
        while not started <= set(self.pids(child)):
            failed = [p for p in self.procs[-count:] if p.poll() is not None]
            if failed:
                raise BenchError(f"a raw-cgroup load exited with {failed[0].returncode}")
            if time.monotonic() > deadline:
                raise BenchError(f"raw cgroup {child}: the loads did not join it")
            time.sleep(0.01)

    def pids(self, child: str) -> list[int]:
        text = (self.at(child)("cpu") / "cgroup.procs").read_text()
        return [int(p) for p in text.split()]

    def end_loads(self) -> None:
        """SIGKILL every process group this object started (by its leader's PID)."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=30)
        self.procs.clear()
        for child in RAW_CHILDREN:
            if child in self.dirs:
                deadline = time.monotonic() + 10
                while self.pids(child) and time.monotonic() < deadline:
                    time.sleep(0.02)

    def cpu_ns(self, child: str) -> Callable[[], int]:
        return lambda: self.knobs.cpu_ns(self.at(child))

    def io_bytes(self, child: str) -> Callable[[], int]:
        return lambda: self.knobs.io_bytes(self.at(child))

    def remove(self) -> None:
        self.end_loads()
        if self.scratch.exists():
            shutil.rmtree(self.scratch)
        for path in reversed(self.made):  # children before parents
            remove_cgroup_dir(path)
        self.made.clear()


# ------------------------------------------------------------- experiments


@dataclass
class Row:
    requested: float
    setting: str  # what was written to ctfs, and the kernel value it became
    ctfs: float
    raw: float


def bench_cpuunits(cts: Containers, raw: RawCgroups, settle: float, seconds: float) -> list[Row]:
    light, heavy = CPU_CTS
    rows = []
    for ratio in UNIT_RATIOS:
        units = (BASE_UNITS, BASE_UNITS * ratio)
        print(f"cpuunits {units[0]}:{units[1]} ...", flush=True)
        cts.write_setting(light, "cpuunits", units[0])
        cts.write_setting(heavy, "cpuunits", units[1])
        knobs = cts.knobs
        shares = [knobs.weight(cts.at(ct)) for ct in CPU_CTS]
        expected = [knobs.expected_weight(u) for u in units]
        if shares != expected:
            raise BenchError(
                f"ctfs wrote {knobs.weight_file} {shares}, its own mapping says {expected}"
            )
        baselines = [cts.start_loops(ct, BUSY, 1, pin_cpu0=True) for ct in CPU_CTS]
        try:
            ours = measure([cts.cpu_ns(ct) for ct in CPU_CTS], settle, seconds)
        finally:
            for ct, baseline in zip(CPU_CTS, baselines, strict=True):
                cts.end_loads(ct, baseline)

        for child, value in zip(RAW_CHILDREN, shares, strict=False):
            knobs.set_weight(raw.at(child), value)
        try:
            for child in RAW_CHILDREN[:2]:
                raw.spawn(child, BUSY, 1, pin_cpu0=True)
            theirs = measure([raw.cpu_ns(c) for c in RAW_CHILDREN[:2]], settle, seconds)
        finally:
            raw.end_loads()
        for child in RAW_CHILDREN[:2]:
            knobs.set_weight(raw.at(child), knobs.default_weight)
        rows.append(
            Row(
                float(ratio),
                f"{units[0]}:{units[1]} -> {knobs.weight_file} {shares[0]}:{shares[1]}",
                ours.deltas[1] / max(1, ours.deltas[0]),
                theirs.deltas[1] / max(1, theirs.deltas[0]),
            )
        )
    cts.write_setting(light, "cpuunits", BASE_UNITS)
    cts.write_setting(heavy, "cpuunits", BASE_UNITS)
    return rows


def bench_cpulimit(cts: Containers, raw: RawCgroups, settle: float, seconds: float) -> list[Row]:
    ct, child = CPU_CTS[0], RAW_CHILDREN[0]
    rows = []
    for limit in CPULIMITS:
        print(f"cpulimit {limit} ...", flush=True)
        cts.write_setting(ct, "cpulimit", limit)
        quota, period = cts.knobs.cap(cts.at(ct))
        baseline = cts.start_loops(ct, BUSY, 2, pin_cpu0=False)
        try:
            ours = measure([cts.cpu_ns(ct)], settle, seconds)
        finally:
            cts.end_loads(ct, baseline)

        cts.knobs.set_cap(raw.at(child), quota, period)
        try:
            raw.spawn(child, BUSY, 2, pin_cpu0=False)
            theirs = measure([raw.cpu_ns(child)], settle, seconds)
        finally:
            raw.end_loads()
        rows.append(
            Row(
                float(limit),
                f"{limit} -> quota {quota}/{period} us",
                100.0 * ours.deltas[0] / (ours.seconds * 1e9),
                100.0 * theirs.deltas[0] / (theirs.seconds * 1e9),
            )
        )
    cts.write_setting(ct, "cpulimit", 0)
    cts.knobs.set_cap(raw.at(child), NO_CAP, 100_000)
    return rows


def dd_loop(dd: str, target: str, flag: str, lifetime_s: int) -> str:
    """A shell loop rewriting one file with dd; it also ends by itself after ``lifetime_s``."""
    return (
        f"end=$(( $(date +%s) + {lifetime_s} )); "
        f"while [ $(date +%s) -lt $end ]; do "
        f"{dd} if=/dev/zero of={target} bs=1M count={IO_FILE_MB} {flag} 2>/dev/null; done"
    )


@dataclass
class IoRound:
    prios: tuple[int, ...]
    ctfs: Window
    raw: Window


@dataclass
class IoSetup:
    flag: str
    host_dd: str
    device: str
    details: str
    rounds: list[IoRound] = field(default_factory=list)
    cold: Window | None = None
    fill: str = ""


def pick_dd_flag(cts: Containers, raw: RawCgroups, host_dd: str) -> tuple[str, str]:
    """``oflag=direct`` when btrfs on the pool takes it in a container and on the host."""
    ct = IO_CTS[0]
    probe = "/root/ctfs-bench-probe"
    host_probe = raw.scratch / "probe"
    for flag in ("oflag=direct", "conv=fsync"):
        script = f"dd if=/dev/zero of={probe} bs=1M count=4 {flag} && rm -f {probe}"
        inside = run(
            [str(CTFS), "--mount", str(cts.daemon.mount), "exec", str(ct), "--", "sh", "-c", script]
        )
        outside = run(["sh", "-c", f"{host_dd} if=/dev/zero of={host_probe} bs=1M count=4 {flag}"])
        host_probe.unlink(missing_ok=True)
        if inside.returncode == 0 and outside.returncode == 0:
            why = "btrfs on the pool takes O_DIRECT" if flag == "oflag=direct" else ""
            if not why:
                why = "O_DIRECT was refused, so buffered writes with an fsync at the end"
            return flag, why
    raise BenchError(f"dd cannot write on the pool: {inside.stderr.strip()}")


def bfq_details(device: str) -> str:
    queue = Path(f"/sys/block/{device}/queue")
    words = [f"scheduler {queue.joinpath('scheduler').read_text().strip()}"]
    for name in ("low_latency", "slice_idle", "strict_guarantees"):
        path = queue / "iosched" / name
        if path.exists():
            words.append(f"{name}={path.read_text().strip()}")
    dio = Path(f"/sys/block/{device}/loop/dio")
    if dio.exists():
        words.append(f"loop direct I/O {'on' if dio.read_text().strip() == '1' else 'off'}")
    return ", ".join(words)


def ctfs_io_window(
    cts: Containers, flag: str, prios: tuple[int, ...], writers: int, settle: float, seconds: float
) -> tuple[Window, list[int]]:
    """Bytes each IO container wrote through BFQ at ``prios``; and the weights ctfs set."""
    for ct, prio in zip(IO_CTS, prios, strict=True):
        cts.write_setting(ct, "ioprio", prio)
    weights = [cts.knobs.io_weight(cts.at(ct)) for ct in IO_CTS]
    expected = [Scheduling(ioprio=p).io_weight() for p in prios]
    if weights != expected:
        raise BenchError(f"ctfs wrote BFQ weights {weights}, its mapping says {expected}")
    lifetime = int(settle + seconds + 30)
    baselines: dict[int, set[int]] = {}
    try:
        for ct in IO_CTS:
            for w in range(writers):
                loop = dd_loop("dd", f"/root/ctfs-bench-io-{w}", flag, lifetime)
                baseline = cts.start_loops(ct, loop, 1, pin_cpu0=False)
                baselines.setdefault(ct, baseline)
        window = measure([cts.io_bytes(ct) for ct in IO_CTS], settle, seconds)
    finally:
        for ct, baseline in baselines.items():
            cts.end_loads(ct, baseline)
    for ct in IO_CTS:
        cts.exec(ct, "sh", "-c", "rm -f /root/ctfs-bench-io-*")
    os.sync()
    return window, weights


def raw_io_window(
    raw: RawCgroups,
    setup: IoSetup,
    weights: Sequence[int],
    writers: int,
    settle: float,
    seconds: float,
) -> Window:
    """The same with host dd loops in raw blkio cgroups holding ``weights``."""
    for child, weight in zip(RAW_CHILDREN, weights, strict=True):
        raw.knobs.set_io_weight(raw.at(child), weight)
    lifetime = int(settle + seconds + 30)
    try:
        for child in RAW_CHILDREN:
            for w in range(writers):
                target = raw.scratch / f"{child}-{w}"
                loop = dd_loop(setup.host_dd, str(target), setup.flag, lifetime)
                raw.spawn(child, loop, 1, pin_cpu0=False)
        window = measure([raw.io_bytes(c) for c in RAW_CHILDREN], settle, seconds)
    finally:
        raw.end_loads()
    for leftover in raw.scratch.iterdir():
        leftover.unlink()
    os.sync()
    return window


def fill_pool(raw: RawCgroups, host_dd: str) -> str:
    """Write the pool's free space once from the host and delete it again; say how it went.

    A fresh pool image is sparse: the first writes to each of its blocks make the
    host filesystem allocate them, which is what makes the loop device slow at
    first.  Filling it once gives ctfs and the peer the same steady-state device.
    """
    st = os.statvfs(raw.scratch)
    mb = max(0, st.f_bavail * st.f_frsize // 2**20 - 512)
    if mb < 64:
        return "the pool had no room to fill"
    target = raw.scratch / "fill"
    began = time.monotonic()
    must(["sh", "-c", f"{host_dd} if=/dev/zero of={target} bs=1M count={mb} conv=fsync"], 900)
    elapsed = time.monotonic() - began
    target.unlink()
    os.sync()
    return (
        f"filled the pool's free space once ({mb} MB in {elapsed:.1f} s, {mb / elapsed:.0f} MB/s)"
    )


def bench_ioprio(
    cts: Containers,
    raw: RawCgroups,
    trials: int,
    writers: int,
    settle: float,
    seconds: float,
) -> IoSetup:
    device = storage.pool_device(cts.daemon.state) or "?"
    busybox = shutil.which("busybox")
    host_dd = f"{busybox} dd" if busybox else "dd"
    raw.scratch.mkdir()
    flag, why = pick_dd_flag(cts, raw, host_dd)
    details = bfq_details(device) if device != "?" else "pool device not found"
    setup = IoSetup(flag, host_dd, device, f"dd {flag}: {why}; {device}: {details}")
    print(f"ioprio: {setup.details}", flush=True)
    print(f"ioprio {'/'.join(map(str, IOPRIOS))} on the fresh (cold) pool, ctfs only ...")
    setup.cold, _ = ctfs_io_window(cts, flag, IOPRIOS, writers, settle, seconds)
    print("filling the pool once so that ctfs and the peer see the same device ...", flush=True)
    setup.fill = fill_pool(raw, host_dd)
    for trial in range(trials):
        for prios in (IOPRIOS, EQUAL_IOPRIOS):
            print(f"ioprio {'/'.join(map(str, prios))}, round {trial + 1}/{trials} ...", flush=True)
            ours, weights = ctfs_io_window(cts, flag, prios, writers, settle, seconds)
            theirs = raw_io_window(raw, setup, weights, writers, settle, seconds)
            setup.rounds.append(IoRound(prios, ours, theirs))
    return setup


# ------------------------------------------------------------------ output


def print_rows(title: str, unit: str, rows: Sequence[Row]) -> None:
    print(f"\n{title}")
    print(
        f"  {'requested':>10} {'ctfs':>9} {'raw peer':>9} {'ctfs err':>9} {'raw err':>9}"
        f"   setting (ctfs -> kernel)"
    )
    for r in rows:
        print(
            f"  {r.requested:>9.0f}{unit} {r.ctfs:>8.2f}{unit} {r.raw:>8.2f}{unit}"
            f" {error_pct(r.ctfs, r.requested):>+8.1f}% {error_pct(r.raw, r.requested):>+8.1f}%"
            f"   {r.setting}"
        )


def ratios(window: Window) -> list[float]:
    first = max(1, window.deltas[0])
    return [d / first for d in window.deltas]


def spread(window: Window) -> float:
    """Largest ratio between two writers of one round (1.0 = perfectly equal)."""
    return max(window.deltas) / max(1, min(window.deltas))


def print_io(setup: IoSetup, writers: int, seconds: float) -> None:
    weighted = [r for r in setup.rounds if r.prios == IOPRIOS]
    equal = [r for r in setup.rounds if r.prios == EQUAL_IOPRIOS]
    print(
        f"\nioprio {'/'.join(map(str, IOPRIOS))}: bytes through BFQ per container in"
        f" {seconds:g} s, {writers} dd writer(s) each,\n  as a ratio to ioprio {IOPRIOS[0]}"
        f" (median of {len(weighted)} rounds after the fill)"
    )
    print(
        f"  {'ioprio':>6} {'weight':>6} {'requested':>9} {'ctfs':>7} {'raw peer':>8}"
        f" {'ctfs err':>9} {'raw err':>9} {'ctfs MB':>8} {'raw MB':>8}"
    )
    for i, prio in enumerate(IOPRIOS):
        weight = Scheduling(ioprio=prio).io_weight()
        requested = weight / Scheduling(ioprio=IOPRIOS[0]).io_weight()
        ours = statistics.median(ratios(r.ctfs)[i] for r in weighted)
        theirs = statistics.median(ratios(r.raw)[i] for r in weighted)
        ours_mb = statistics.median(r.ctfs.deltas[i] for r in weighted) / 2**20
        theirs_mb = statistics.median(r.raw.deltas[i] for r in weighted) / 2**20
        print(
            f"  {prio:>6} {weight:>6} {requested:>9.2f} {ours:>7.2f} {theirs:>8.2f}"
            f" {error_pct(ours, requested):>+8.1f}% {error_pct(theirs, requested):>+8.1f}%"
            f" {ours_mb:>8.0f} {theirs_mb:>8.0f}"
        )

    print(
        "\n  every round: MB per container in the window; top:bot = ioprio"
        f" {IOPRIOS[-1]} / ioprio {IOPRIOS[0]}\n  (largest / smallest at equal weights);"
        " total MB/s; CPU time as % of all CPUs in the window"
    )
    print(
        f"  {'ioprio':<8} {'side':<10} {'MB per container':<22} {'top:bot':>7} {'MB/s':>6}"
        f" {'busy':>5} {'sys':>5} {'iowait':>6}"
    )
    listed: list[tuple[tuple[int, ...], str, Window]] = []
    if setup.cold is not None:
        listed.append((IOPRIOS, "ctfs cold", setup.cold))
    for r in setup.rounds:
        listed += [(r.prios, "ctfs", r.ctfs), (r.prios, "raw", r.raw)]
    for prios, side, window in listed:
        mb = " ".join(f"{d / 2**20:>6.0f}" for d in window.deltas)
        top = ratios(window)[-1] if prios == IOPRIOS else spread(window)
        busy, system, iowait = window.cpu
        print(
            f"  {'/'.join(map(str, prios)):<8} {side:<10} {mb:<22} {top:>7.2f}"
            f" {rate(window):>6.0f} {busy:>4.0f}% {system:>4.0f}% {iowait:>5.0f}%"
        )
    if setup.fill:
        print(f"  (between the cold round and round 1: {setup.fill})")

    print("\n  verdict")
    wanted = Scheduling(ioprio=IOPRIOS[-1]).io_weight() / Scheduling(ioprio=0).io_weight()
    flat = False
    for side in ("ctfs", "raw"):
        tops = [ratios(getattr(r, side))[-1] for r in weighted]
        top = statistics.median(tops)
        band = max(spread(getattr(r, side)) for r in equal)
        head = (
            f"  {side}: ioprio {IOPRIOS[-1]} got {top:.2f}x the bytes of ioprio {IOPRIOS[0]}"
            f" (median; rounds {min(tops):.2f}..{max(tops):.2f}x; asked {wanted:.0f}x);"
            f"\n    equal weights drifted up to {band:.2f}x apart by chance."
        )
        # Weights count as acting only when every weighted round beats the equal-weight
        # band and the median split is at least 1.5x: a 1.1x edge is noise here.
        if min(tops) > band and top >= MIN_SPLIT:
            print(f"{head}\n    BFQ did differentiate, though not by the full weight ratio.")
        else:
            flat = True
            print(f"{head}\n    NO DIFFERENTIATION: the weights had no measurable effect.")
    warm = [w for r in setup.rounds for w in (r.ctfs, r.raw)]
    busy = statistics.median(w.cpu[0] for w in warm)
    iowait = statistics.median(w.cpu[2] for w in warm)
    warm_rate = statistics.median(rate(w) for w in warm)
    print(
        f"  After the fill the writers moved a median {warm_rate:.0f} MB/s together, the CPUs"
        f" {busy:.0f}% busy\n  and {iowait:.0f}% in iowait."
    )
    if setup.cold is not None:
        cold = ratios(setup.cold)
        print(
            f"  On the cold pool ctfs's writers moved {rate(setup.cold):.0f} MB/s together and"
            f" split them\n  1 : {cold[1]:.2f} : {cold[2]:.2f} (asked {asked_split()})."
        )
    if flat:
        print(
            "  BFQ divides bandwidth by weight only while several of its queues wait at once,"
            "\n  that is while the device is the bottleneck.  This pool is a loop device whose"
            "\n  backing file is written through the host's page cache onto a fast virtual disk:"
            "\n  once the image's blocks exist, a write is mostly a memory copy, the writers are"
            "\n  held up by CPU work (btrfs checksums, copies, the loop workers) more than by"
            "\n  the device, and BFQ rarely has several queues to choose between."
        )
        ctfs_top = statistics.median(ratios(r.ctfs)[-1] for r in weighted)
        if setup.cold is not None and ratios(setup.cold)[-1] > max(ctfs_top, MIN_SPLIT):
            print(
                "  The cold round agrees: while the host still allocates the sparse image's"
                "\n  blocks the device is the slower part, and the split follows the order of the"
                "\n  weights, if not their size."
                "\n  Expect ioprio to act on a slow disk, not on this VM's page-cached loop file."
            )
        else:
            print("  The cold round showed no clearer split either.")


def asked_split() -> str:
    base = Scheduling(ioprio=IOPRIOS[0]).io_weight()
    return " : ".join(f"{Scheduling(ioprio=p).io_weight() / base:g}" for p in IOPRIOS)


def rate(window: Window) -> float:
    return sum(window.deltas) / 2**20 / window.seconds


# -------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fairness",
        description="Percent error of ctfs's cpuunits, cpulimit and ioprio, next to raw cgroups.",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="window (default 5)")
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds of load before a window (default 1)"
    )
    parser.add_argument("--io-trials", type=int, default=3, help="ioprio rounds (default 3)")
    parser.add_argument(
        "--io-writers", type=int, default=2, help="dd loops per container (default 2)"
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default all)",
    )
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown or not args.parts:
        parser.error(f"--parts: choose among {', '.join(PARTS)}")
    if args.seconds <= 0 or args.settle < 0 or args.io_trials < 1 or args.io_writers < 1:
        parser.error("--seconds must be positive, --settle not negative, counts at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.fairness: run it as root (sudo)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("bench.fairness: needs at least 2 CPUs (cpulimit 150)", file=sys.stderr)
        return 2
    interrupt_on_termination()
    knobs = host_knobs()
    print(
        f"kernel {os.uname().release}, {knobs.version}, {os.cpu_count()} CPUs,"
        f" window {args.seconds:g} s after {args.settle:g} s, {load_average()}"
    )

    daemon = Ctfsd()
    cts = Containers(daemon, knobs)
    raw = RawCgroups(daemon.state / f".ctfs-bench-raw-{os.getpid()}", knobs)
    units: list[Row] = []
    limits: list[Row] = []
    io: IoSetup | None = None
    try:
        daemon.start()
        for ct in (*CPU_CTS, *IO_CTS):
            cts.create_running(ct)
        for child in RAW_CHILDREN:
            raw.make(child)
        if "cpuunits" in args.parts:
            units = bench_cpuunits(cts, raw, args.settle, args.seconds)
        if "cpulimit" in args.parts:
            limits = bench_cpulimit(cts, raw, args.settle, args.seconds)
        if "ioprio" in args.parts:
            io = bench_ioprio(cts, raw, args.io_trials, args.io_writers, args.settle, args.seconds)
    except Exception:
        print_log_tail(daemon)
        raise
    finally:
        with uninterrupted():
            safely("ending loads and removing the raw cgroups", raw.remove)
            if daemon.proc is not None:
                safely("stopping and removing the containers", cts.remove_all)
            safely("ctfsd cleanup", daemon.cleanup)

    if units:
        print_rows(
            f"cpuunits: CPU-time ratio of two busy loops pinned to CPU 0, over {args.seconds:g} s",
            "x",
            units,
        )
    if limits:
        print_rows(
            f"cpulimit: CPU time of two unpinned busy loops, % of one CPU, over {args.seconds:g} s",
            "%",
            limits,
        )
    if io is not None:
        print_io(io, args.io_writers, args.seconds)
    host_dd = io.host_dd if io is not None else "dd"
    print(
        "\nNotes\n"
        "  - error = measured / requested - 1.  The raw peer holds the very kernel values ctfs\n"
        "    wrote (checked against ctfs.policy.scheduling), so a gap between the two columns is\n"
        "    what ctfs adds; a gap both share is the kernel's own accuracy.\n"
        "  - cpu.shares (v1) is cpuunits x 262144/500000, so 1:100 is 524:52429 shares;\n"
        "    cpu.weight (v2) is cpuunits / 50, so 1:100 is 20:2000.  At 1:100\n"
        "    the light loop gets about 1% of a CPU (~50 ms in 5 s), where a few scheduler\n"
        "    slices more or less are a large relative error.\n"
        f"  - ioprio rounds: containers use the template's busybox dd, the peer {host_dd};\n"
        "    both write 1 MiB blocks to files of their own on the same pool."
    )
    return 0


if __name__ == "__main__":
    run_bench("bench.fairness", main)
