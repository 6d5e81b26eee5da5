"""What a monitoring agent that reads files pays to scrape beancounters, next to raw cgroup files.

With N busybox containers running on a private ctfsd (``tests.ctfsd_harness.Ctfsd``),
N from ``--counts`` (default 1,100,1000), it times the ways to collect the
counters of every container, in-process (open, read to the end, close), interleaved
pass by pass so that background work hits all three alike:

1. per container: ``MOUNT/CTID/beancounters`` of each of the N containers;
2. host: ``MOUNT/beancounters`` once (every running container's block);
3. raw: the cgroup v1 files ctfs builds the kernel side of those blocks from, read
   directly, 8 per container: memory.usage_in_bytes, memory.max_usage_in_bytes,
   memory.failcnt, memory.kmem.usage_in_bytes, pids.current, pids.peak,
   pids.events and memory.stat;
4. metrics: ``MOUNT/metrics`` once (every container's figures, Prometheus format);
5. raw + net: the same raw files plus ``/proc/<init>/net/{tcp,tcp6,udp,udp6}`` of each
   container, the /proc tables ctfs also reads per container to count its sockets
   (it reads a few more small /proc files per process, for files, locks, ptys and
   signals, which are left out here).  This row shows where ctfs's time goes.

For each: the wall time of one pass (median and p90 over the passes), and per pass
the CPU time of ctfsd (``utime + stime`` from ``/proc/<pid>/stat``, clock ticks of
10 ms, so summed over all passes and divided) and of this reader
(``getrusage``).  There are at least ``--passes`` passes (default 5) and at least
``--min-reads`` file reads per way (default 500), so small N get many passes.  The
issue's targets, with 1000 containers running: ``MOUNT/beancounters`` and
``MOUNT/metrics`` each read in under 0.5 s, and ctfsd idle under 3 % of one CPU.

ctfsd also samples beancounters by itself every 5 s: the resources that have a
barrier or a limit, and everything of one in twelve containers in turn.  Its CPU
time over an idle ``--idle`` seconds (default 30, six samples) with N running,
measured before the reads, is shown as well.  ``--limits LINES`` writes LINES,
commas taken for newlines, to every container's ``limits`` file once it runs (for
example ``"numproc 200,numfile 2048,physpages 0:256M"``), so that the sampler has
bounds to watch.

Containers are created and started ``--workers`` at a time (default 8).  Before
each N the memory and time one container took so far are projected; when N would
use more than half of the available memory or take longer than ``--max-setup``
seconds (default 900) to start, N is lowered and the reason printed.  Every
container is stopped and removed at the end, also on failure or Ctrl-C, and
``Ctfsd.cleanup`` ends anything left through the cgroups.

Run it as root from the repository root::

    sudo .venv/bin/python -m bench.scrape [--counts 1,100,1000] [--passes N]
                                          [--min-reads N] [--idle SECONDS]
                                          [--limits LINES]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import errno
import math
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    BenchError,
    interrupt_on_termination,
    load_average,
    print_log_tail,
    run_bench,
    safely,
    uninterrupted,
)
from tests.ctfsd_harness import Ctfsd, write_errno

FIRST_CTID = 1001
TARGET_CTS = 1000
TARGET_S = 0.5  # MOUNT/beancounters and MOUNT/metrics each
TARGET_IDLE = 0.03  # of one CPU
SAMPLE_PERIOD_S = 5.0  # ctfs.model.host.BEANCOUNTER_SAMPLE_S
EHASH_SYSCTLS = ("tcp_ehash_entries", "tcp_child_ehash_entries")
# What ctfs reads per container besides the cgroup files, the part that grows with N
# (ctfs.kernel.accounting): the TCP and UDP tables of the container's network namespace.
NET_TABLES = ("tcp", "tcp6", "udp", "udp6")
RAW_FILES = (
    ("memory", "memory.usage_in_bytes"),
    ("memory", "memory.max_usage_in_bytes"),
    ("memory", "memory.failcnt"),
    ("memory", "memory.kmem.usage_in_bytes"),
    ("pids", "pids.current"),
    ("pids", "pids.peak"),
    ("pids", "pids.events"),
    ("memory", "memory.stat"),
)
ROWS_PER_BLOCK = 24
CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
MS = 1e3


def read_all(path: str) -> bytes:
    """open, read to the end, close: what ``cat`` does."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 17):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def process_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S


def sysctl_ipv4(name: str) -> str:
    try:
        return Path(f"/proc/sys/net/ipv4/{name}").read_text().strip()
    except OSError:
        return "?"


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise BenchError("no MemAvailable in /proc/meminfo")


# ---------------------------------------------------------------- containers


class Fleet:
    """The bench's containers: created, started, stopped and removed many at a time."""

    def __init__(self, daemon: Ctfsd, workers: int, limits: str = "") -> None:
        self.daemon = daemon
        self.workers = workers
        self.limits = limits  # written to every container's limits file once it runs
        self.made: list[int] = []  # mkdir'd (running or not)
        self.running: list[int] = []
        self.lock = threading.Lock()
        self.setup_s = 0.0  # wall time spent creating and starting, in total
        self.memory_used = 0  # MemAvailable lost while they were started, in total

    def path(self, ctid: int) -> Path:
        return self.daemon.mount / str(ctid)

    def _make(self, ctid: int) -> None:
        with self.lock:
            self.made.append(ctid)
        self.path(ctid).mkdir()
        status = write_errno(self.path(ctid) / "state", b"running")
        if status != 0:
            raise BenchError(f"starting CT {ctid}: {os.strerror(status)}")
        if self.limits:
            status = write_errno(self.path(ctid) / "limits", self.limits.encode())
            if status != 0:
                raise BenchError(f"limits of CT {ctid}: {os.strerror(status)}")
        with self.lock:
            self.running.append(ctid)

    def _parallel(self, action: Callable[[int], None], ctids: Iterable[int]) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(self.workers)
        try:
            futures = [pool.submit(action, ctid) for ctid in ctids]
            concurrent.futures.wait(futures)
        finally:
            # On Ctrl-C, what has not begun is dropped; what runs is waited for.
            pool.shutdown(wait=True, cancel_futures=True)
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise BenchError(f"{len(errors)} container operations failed; first: {errors[0]}")

    def grow(self, count: int) -> None:
        new = range(FIRST_CTID + len(self.made), FIRST_CTID + count)
        if not new:
            return
        available = mem_available()
        began = time.monotonic()
        self._parallel(self._make, new)
        self.setup_s += time.monotonic() - began
        time.sleep(1.0)  # let the inits and their start-up scripts settle
        self.memory_used += max(0, available - mem_available())
        self.running.sort()

    def per_container(self) -> tuple[float, int]:
        """(seconds, bytes) one container has cost so far, for projections."""
        n = max(1, len(self.running))
        return self.setup_s / n, self.memory_used // n

    def _remove(self, ctid: int) -> None:
        path = self.path(ctid)
        if not path.exists():
            return
        status = write_errno(path / "state", b"stopped")
        if status not in (0, errno.ENOENT):
            raise BenchError(f"stopping CT {ctid}: {os.strerror(status)}")
        path.rmdir()

    def remove_all(self) -> None:
        print(f"stopping and removing {len(self.made)} containers ...", flush=True)
        began = time.monotonic()
        self._parallel(self._remove, list(self.made))
        self.made.clear()
        self.running.clear()
        print(f"  done in {time.monotonic() - began:.1f} s", flush=True)


# -------------------------------------------------------------------- reads


@dataclass
class Way:
    """One way of scraping every container: its passes' wall and CPU times."""

    label: str
    files_per_pass: int
    walls: list[float] = field(default_factory=list)
    daemon_cpu: float = 0.0  # summed over the passes
    reader_cpu: float = 0.0

    def median_ms(self) -> float:
        return statistics.median(self.walls) * MS

    def p90_ms(self) -> float:
        if len(self.walls) < 2:
            return self.walls[0] * MS
        return statistics.quantiles(self.walls, n=10, method="inclusive")[8] * MS

    def daemon_ms(self) -> float:
        return self.daemon_cpu / len(self.walls) * MS

    def daemon_above_idle_ms(self, idle_share: float) -> float:
        """ctfsd CPU per pass less what it burns at its idle rate meanwhile (an estimate)."""
        return max(0.0, self.daemon_cpu - idle_share * sum(self.walls)) / len(self.walls) * MS

    def reader_ms(self) -> float:
        return self.reader_cpu / len(self.walls) * MS


def check_block(data: bytes, ctid: int) -> None:
    text = data.decode()
    if not text.startswith("Version: 2.5\n") or f"{ctid}:" not in text:
        raise BenchError(f"CT {ctid}: unexpected beancounters:\n{text[:500]}")


def init_pid(container: Path) -> int:
    lines = (container / "procs").read_text().split()
    if not lines:
        raise BenchError(f"{container}: no processes")
    return int(lines[0])


def per_container_pass(paths: Sequence[tuple[int, str]]) -> None:
    for ctid, path in paths:
        check_block(read_all(path), ctid)


def host_pass(path: str, count: int) -> None:
    text = read_all(path).decode()
    blocks = text.count("  kmemsize ")
    if blocks != count or len(text.splitlines()) != 2 + ROWS_PER_BLOCK * count:
        raise BenchError(f"{path}: {blocks} blocks, {count} containers running")


def metrics_pass(path: str, count: int) -> None:
    text = read_all(path).decode()
    running = text.count('state="running"} 1')
    if running != count:
        raise BenchError(f"{path}: {running} running containers listed, {count} running")


def raw_pass(paths: Sequence[str]) -> None:
    for path in paths:
        if not read_all(path):
            raise BenchError(f"{path} read empty")


@dataclass
class Result:
    count: int
    ways: list[Way]
    idle_s: float = 0.0
    idle_cpu_s: float = 0.0
    setup_per_ct_ms: float = 0.0
    memory_per_ct: int = 0


def scrape(daemon: Ctfsd, fleet: Fleet, passes: int, min_reads: int) -> list[Way]:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    count = len(fleet.running)
    mount = daemon.mount
    per_ct = [(ctid, str(mount / str(ctid) / "beancounters")) for ctid in fleet.running]
    host = str(mount / "beancounters")
    metrics = str(mount / "metrics")
    raw = [
        str(daemon.cgroup_dir(controller, ctid) / name)
        for ctid in fleet.running
        for controller, name in RAW_FILES
    ]
    inits = [init_pid(mount / str(ctid)) for ctid in fleet.running]
    net = [f"/proc/{init}/net/{table}" for init in inits for table in NET_TABLES]
    ways: list[tuple[Way, Callable[[], None]]] = [
        (Way(f"MOUNT/CTID/beancounters x {count}", count), lambda: per_container_pass(per_ct)),
        (Way("MOUNT/beancounters once", 1), lambda: host_pass(host, count)),
        (Way(f"raw cgroup files x {len(raw)}", len(raw)), lambda: raw_pass(raw)),
        (Way("MOUNT/metrics once", 1), lambda: metrics_pass(metrics, count)),
        (
            Way(f"raw + /proc/INIT/net/* x {len(net)}", len(raw) + len(net)),
            lambda: raw_pass(raw + net),
        ),
    ]
    for _, action in ways:  # warm-up
        action()
    rounds = max(passes, math.ceil(min_reads / count))
    for _ in range(rounds):
        for way, action in ways:
            daemon_before, reader_before = process_cpu_s(pid), own_cpu_s()
            began = time.perf_counter()
            action()
            way.walls.append(time.perf_counter() - began)
            way.daemon_cpu += process_cpu_s(pid) - daemon_before
            way.reader_cpu += own_cpu_s() - reader_before
    return [way for way, _ in ways]


def idle_cost(daemon: Ctfsd, seconds: float) -> float:
    """ctfsd's CPU seconds over ``seconds`` with nobody reading."""
    assert daemon.proc is not None
    before = process_cpu_s(daemon.proc.pid)
    time.sleep(seconds)
    return process_cpu_s(daemon.proc.pid) - before


# ------------------------------------------------------------------ output


def fmt_ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def print_result(result: Result) -> None:
    print(
        f"\nN = {result.count} running containers (start: {result.setup_per_ct_ms:.0f} ms wall"
        f" each, {result.memory_per_ct / 2**20:.1f} MiB of MemAvailable each)"
    )
    idle_share = result.idle_cpu_s / result.idle_s if result.idle_s else 0.0
    print(
        f"  {'one pass over every container':<36} {'median':>9} {'p90':>9}"
        f" {'ctfsd CPU':>10} {'- idle':>9} {'reader CPU':>10} {'per file':>9} {'passes':>6}"
    )
    for way in result.ways:
        per_file = way.median_ms() / way.files_per_pass * 1000
        print(
            f"  {way.label:<36} {fmt_ms(way.median_ms()):>9} {fmt_ms(way.p90_ms()):>9}"
            f" {fmt_ms(way.daemon_ms()):>10} {fmt_ms(way.daemon_above_idle_ms(idle_share)):>9}"
            f" {fmt_ms(way.reader_ms()):>10} {per_file:>6.0f} µs {len(way.walls):>6}"
        )
    if result.idle_s:
        share = 100 * result.idle_cpu_s / result.idle_s
        print(
            f"  idle (before the reads): ctfsd used {result.idle_cpu_s * MS:.0f} ms CPU in"
            f" {result.idle_s:g} s, {share:.2f}% of one CPU"
        )


def print_summary(results: Sequence[Result]) -> None:
    print("\nSummary (median wall time of one scrape of every container; ctfsd CPU per scrape)")
    print(
        f"  {'N':>5} {'per-CT files':>13} {'ctfsd CPU':>10} {'host file':>10} {'ctfsd CPU':>10}"
        f" {'metrics':>10} {'raw files':>10} {'host/raw':>9} {'raw + net':>10} {'idle ctfsd':>11}"
    )
    for r in results:
        per_ct, host, raw, metrics, net = r.ways
        idle = f"{100 * r.idle_cpu_s / r.idle_s:.1f}%" if r.idle_s else "-"
        print(
            f"  {r.count:>5} {fmt_ms(per_ct.median_ms()):>13} {fmt_ms(per_ct.daemon_ms()):>10}"
            f" {fmt_ms(host.median_ms()):>10} {fmt_ms(host.daemon_ms()):>10}"
            f" {fmt_ms(metrics.median_ms()):>10} {fmt_ms(raw.median_ms()):>10}"
            f" {host.median_ms() / raw.median_ms():>8.0f}x"
            f" {fmt_ms(net.median_ms()):>10} {idle:>11}"
        )
    at_target = [r for r in results if r.count >= TARGET_CTS]
    if not at_target:
        most = max(r.count for r in results)
        print(
            f"\n  Targets (issue): not measured (at most {most} containers were run,"
            f" the targets are for {TARGET_CTS})."
        )
        return
    r = at_target[0]
    print(f"\n  Targets (issue), with {r.count} running:")
    for way, name in ((r.ways[1], "MOUNT/beancounters"), (r.ways[3], "MOUNT/metrics")):
        took = way.median_ms() / MS
        verdict = "MET" if took < TARGET_S else "NOT MET"
        print(f"    {name} in under {TARGET_S:g} s: {verdict} ({took:.2f} s median)")
    if r.idle_s:
        share = r.idle_cpu_s / r.idle_s
        verdict = "MET" if share < TARGET_IDLE else "NOT MET"
        print(
            f"    ctfsd idle under {TARGET_IDLE:.0%} of one CPU: {verdict}"
            f" ({100 * share:.2f} % over {r.idle_s:g} s)"
        )


# --------------------------------------------------------------------- main


def parse_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(word) for word in text.split(",") if word.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write numbers such as 1,100,1000") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("counts must be at least 1")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scrape",
        description="Cost of scraping beancounters through ctfs, next to raw cgroup files.",
    )
    parser.add_argument(
        "--counts",
        type=parse_counts,
        default=[1, 100, 1000],
        help="numbers of running containers (default 1,100,1000)",
    )
    parser.add_argument("--passes", type=int, default=5, help="least passes per way (default 5)")
    parser.add_argument(
        "--min-reads", type=int, default=500, help="least file reads per way (default 500)"
    )
    parser.add_argument(
        "--idle", type=float, default=30.0, help="idle window for ctfsd's CPU (default 30 s)"
    )
    parser.add_argument(
        "--limits",
        default="",
        help="limits of every container, lines joined by commas (default: all unlimited)",
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="containers started at once (default 8)"
    )
    parser.add_argument(
        "--max-setup",
        type=float,
        default=900.0,
        help="most seconds to spend starting containers (default 900)",
    )
    args = parser.parse_args(argv)
    if args.passes < 1 or args.min_reads < 1 or args.workers < 1 or args.idle < 0:
        parser.error("--passes, --min-reads and --workers must be at least 1, --idle >= 0")
    return args


def feasible(fleet: Fleet, wanted: int, max_setup: float) -> tuple[int, str]:
    """How many containers can run, judging by what the first ones cost; and why fewer."""
    have = len(fleet.running)
    if wanted <= have or have == 0:
        return wanted, ""
    seconds, memory = fleet.per_container()
    limit, why = wanted, ""
    if memory > 0:
        by_memory = have + int(mem_available() * 0.5 // memory)
        if by_memory < limit:
            limit = by_memory
            why = (
                f"each container takes about {memory / 2**20:.1f} MiB and only half of the"
                f" {mem_available() / 2**30:.1f} GiB available is used"
            )
    if seconds > 0:
        by_time = have + int((max_setup - fleet.setup_s) / seconds)
        if by_time < limit:
            limit = max(have, by_time)
            why = (
                f"starting one takes about {seconds * MS:.0f} ms and --max-setup allows"
                f" {max_setup:g} s in all"
            )
    return limit, why


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.scrape: run it as root (sudo)", file=sys.stderr)
        return 2
    interrupt_on_termination()
    print(
        f"kernel {os.uname().release}, {os.cpu_count()} CPUs,"
        f" {mem_available() / 2**30:.1f} GiB available, counts {args.counts},"
        f" {load_average()}"
    )

    daemon = Ctfsd()
    fleet = Fleet(daemon, args.workers, args.limits.replace(",", "\n"))
    if args.limits:
        print(f"limits of every container: {args.limits!r}")
    results: list[Result] = []
    try:
        daemon.start()
        for wanted in args.counts:
            count, why = feasible(fleet, wanted, args.max_setup)
            if count < wanted:
                print(f"N = {wanted} lowered to {count}: {why}", flush=True)
            if results and count <= results[-1].count:
                continue
            print(f"N = {count}: starting {count - len(fleet.running)} containers ...", flush=True)
            fleet.grow(count)
            seconds, memory = fleet.per_container()
            idle = 0.0
            if args.idle:
                print(f"N = {count}: {args.idle:g} s idle ...", flush=True)
                idle = idle_cost(daemon, args.idle)
            print(f"N = {count}: reading ...", flush=True)
            result = Result(count, scrape(daemon, fleet, args.passes, args.min_reads))
            result.setup_per_ct_ms, result.memory_per_ct = seconds * MS, memory
            result.idle_s, result.idle_cpu_s = args.idle, idle
            results.append(result)
            print_result(result)
    except Exception:
        print_log_tail(daemon)
        raise
    finally:
        with uninterrupted():
            if daemon.proc is not None:
                safely("stopping and removing the containers", fleet.remove_all)
            safely("ctfsd cleanup", daemon.cleanup)

    if results:
        print_summary(results)
    ehash = ", ".join(f"net.ipv4.{name} = {sysctl_ipv4(name)}" for name in EHASH_SYSCTLS)
    print(
        "\nNotes\n"
        "  - Reads are in-process (os.open/os.read/os.close), sequential, one reader.\n"
        "  - ctfsd CPU comes from /proc/<pid>/stat in 10 ms clock ticks, summed over every\n"
        "    pass and divided, so small figures are averages, not single measurements.\n"
        "    '- idle' takes off what ctfsd burnt at its idle rate (its own sampler) while the\n"
        "    pass ran: an estimate of what the reads themselves cost it.\n"
        "  - A ctfs block also holds what ctfs counts from /proc (open files, sockets, locks,\n"
        "    ptys, signals, private and locked memory); the raw files hold only the kernel's\n"
        "    cgroup counters, so the raw column is a floor, not an equivalent.\n"
        "  - /proc/<pid>/net/tcp and tcp6 walk the whole TCP established-hash table of the\n"
        "    host and keep the sockets of the reader's network namespace; unless\n"
        "    tcp_child_ehash_entries gives each new namespace its own table, that table is\n"
        "    shared and sized by the host's memory, so each read costs the same however few\n"
        "    sockets the container has.\n"
        f"    Here {ehash}.\n"
        f"  - ctfsd's own sampler reads every {SAMPLE_PERIOD_S:g} s the resources that have a\n"
        "    barrier or a limit, and everything of one in twelve containers in turn; it runs\n"
        "    during the reads as well."
    )
    return 0


if __name__ == "__main__":
    run_bench("bench.scrape", main)
