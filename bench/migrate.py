"""Live migration: frozen time, total time and a client's longest gap, for ctfs's
post-copy and stop-and-copy moves next to raw CRIU doing the same moves by hand.

Workloads (``--workloads``, default ``idle,256,1024``): a busybox container with
the host's ids (``idmap`` host) running init, syslogd and a TCP echo server
(``nc -l -p 7000 -e cat``, again after each connection); idle, or with a busybox
awk holding 256 MiB or 1 GiB of touched memory (one string) that it reads again
every 0.5 s (``length()``, then ``system("sleep 0.5")``; no file written meanwhile: a
task waiting for btrfs in D state cannot be frozen, and CRIU gives up).  Before
every move everything is synced (``sync``), so no move writes back another's data.

ctfs: two pairs of ctfsd, hosta and hostb trusting each other (each other's
``identity`` line in ``peers``), one pair with ``--migrate-memory post-copy``, one
with ``stop-and-copy``; every ctfsd in its own network namespace on one bridge
(bench.migrate_raw.MoveLab, 198.18.79.0/24), the client in another.  The container
has an address on the bridge; after one untimed round trip it is moved there and
back (``echo hostb > state`` on hosta, ``echo hosta > state`` on hostb) ``--runs``
times (default 3); every move is one sample:

- total: the wall time of the state write (open, write, close) on the source; with
  post-copy it returns once every memory page is on the target;
- frozen: from the source's log line "migration: now on ..., frozen M ms": from its
  freeze to the target's answer that the restore there ran;
- client's longest gap: a client in the client namespace exchanges a numbered line
  with the echo server every 10 ms over one TCP connection (kept for a round trip);
  the longest time between two echoes around the move.  It includes TCP's
  retransmission back-off and the move of the address (gratuitous ARP).

raw CRIU (``--skip-raw`` leaves it out): the same workload in a third ctfsd that is
SIGKILLed once it runs (bench.criu_sides.RawPeer), moved there and back between two
more namespaces by criu dump / copy / criu restore -d, and criu dump --lazy-pages /
copy / criu lazy-pages / criu restore -d --lazy-pages (bench.migrate_raw says exactly
how: ctfs's criu options, TLS for the page server, the images over TCP, the
client's route pointed at the target).  Frozen: from the start of the dump until
restore -d returned; total: until the last criu exited; the same client.  It does
not include what ctfs does besides CRIU: sending the private area (btrfs send of a
snapshot while it runs, then of the difference while frozen; raw restores the same
root directory), packing, checking and syncing the dump file, the peer protocol
and cgroups made on the target, announcing the address.

Targets (printed with whether each was met): frozen <= 300 ms idle; with post-copy,
frozen for 1 GiB within 1.5x of idle; the client's longest gap <= frozen + 100 ms;
ctfs adds under 10 % to the raw CRIU move (frozen and total).

Run it as root from the repository root::

    sudo .venv/bin/python -m bench.migrate [--runs N] [--workloads idle,256,1024] [--skip-raw]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.common import (
    BenchError,
    interrupt_on_termination,
    must,
    print_log_tail,
    run_bench,
    safely,
    uninterrupted,
    write_state,
)
from bench.criu_sides import RawPeer
from bench.migrate_raw import ECHO_PORT, Client, MoveLab, RawHost, RawMover
from ctfs.kernel.criu import DEFAULT_BINARY
from tests.ctfsd_harness import CTFS, SYSTEM_TEMPLATE_CACHE, Ctfsd, wait_for, write_errno

PREFIX = "198.18.79"
HOSTS = ("pa", "pb", "sa", "sb", "ra", "rb", "client")
MODES = {"post-copy": ("pa", "pb", 701), "stop-and-copy": ("sa", "sb", 702)}
RAW_CTID = 703
PEER_PORT = 7385
WORKLOADS = {"idle": 0, "256": 256, "1024": 1024}
MOVE_TIMEOUT_S = 600.0
PIPE_MAX_SIZE, NEEDED_PIPE_MAX = Path("/proc/sys/fs/pipe-max-size"), 4 << 20
ROWS = ("ctfs post-copy", "raw post-copy", "ctfs stop-and-copy", "raw stop-and-copy")
DETAIL = re.compile(r"(?:frozen: freeze|migration: (?!to )).*")  # of the source, in its log
SUMMARY = re.compile(r"migration: now on \S+, total \d+ ms, frozen (\d+) ms \(restore there")


@dataclass
class Cell:
    """The samples of one row of a workload's table, in ms."""

    frozen: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    detail: str = ""  # what its last move took, step by step

    def median(self, name: str) -> float | None:
        values = getattr(self, name)
        return statistics.median(values) if values else None


def within(timeout: float, action: Callable[[], float], what: str) -> float:
    """``action()`` in a thread; BenchError if it takes longer than ``timeout``
    (cleanup then ends the ctfsd it waits for, which ends the wait)."""
    outcome: list[float | BaseException] = []

    def attempt() -> None:
        try:
            outcome.append(action())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise BenchError(f"{what} took more than {timeout:g} s")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def boot(daemon: Ctfsd, ctid: int, address: str, mib: int) -> None:
    """A running container with the echo server, and ``mib`` MiB held by awk."""
    ct = daemon.mount / str(ctid)
    ct.mkdir()
    (ct / "idmap").write_text("host\n")
    (ct / "ip").write_text(f"{address}\n")
    write_state(ct, "running")
    if not wait_for(lambda: len((ct / "procs").read_text().split()) >= 2, timeout=10):
        raise BenchError(f"container {ctid} did not boot")
    script = f"(while true; do nc -l -p {ECHO_PORT} -e cat; done) </dev/null >/dev/null 2>&1 &"
    if mib:
        script += (
            f' (awk \'BEGIN {{ s = sprintf("%{mib << 20}s", ""); print length(s) > "/tmp/len"; '
            'close("/tmp/len"); while (1) { n = length(s); system("sleep 0.5") } }\''
            ") </dev/null >/dev/null 2>&1 &"
        )
    must([str(CTFS), "--mount", str(daemon.mount), "exec", str(ctid), "--", "sh", "-c", script])
    held = daemon.state / str(ctid) / "root" / "tmp" / "len"
    if mib and not wait_for(
        lambda: held.exists() and held.read_text().strip() == str(mib << 20), 180, 0.5
    ):
        raise BenchError(f"container {ctid}: awk did not fill {mib} MiB within 180 s")


def ctfs_move(source: Ctfsd, ctid: int, to: str) -> tuple[float, float]:
    """``echo TO > state`` on ``source``: (frozen, total) in ms."""
    ct = source.mount / str(ctid)
    before = len(source.log_text())
    try:
        total = within(MOVE_TIMEOUT_S, lambda: write_state(ct, to), f"moving CT {ctid} to {to}")
    except BenchError as exc:
        events = (ct / "events").read_text() if ct.exists() else ""
        raise BenchError(f"{exc}; last events: {events.strip()[-600:]}") from exc
    found = SUMMARY.findall(source.log_text()[before:])
    if not found:
        raise BenchError(f"no 'migration: now on {to}' line in the source's log")
    return float(found[-1]), total * 1000


def round_trips(moves: list[Callable[[], tuple[float, float]]], lab: MoveLab, address: str,
                runs: int, cell: Cell) -> None:  # fmt: skip
    """One untimed round trip, then ``runs`` with a client, every move a sample."""
    for move in moves:
        os.sync()
        move()
    for _ in range(runs):
        client = Client(lab, address)
        try:
            for move in moves:
                os.sync()  # nothing of the last move's left to write back
                client.gap()  # from here on
                frozen, total = move()
                time.sleep(0.3)
                cell.frozen.append(frozen)
                cell.total.append(total)
                cell.gap.append(client.gap())
        finally:
            client.close()


def remove(daemons: tuple[Ctfsd, ...], ctid: int) -> None:
    """The container stopped and removed from whichever host has it."""
    for daemon in daemons:
        path = daemon.mount / str(ctid)
        if path.exists():
            if write_errno(path / "state", b"stopped") != 0:
                daemon.kill_container(ctid)
            with contextlib.suppress(OSError):
                path.rmdir()


def start_pair(lab: MoveLab, mode: str, started: list[Ctfsd]) -> tuple[Ctfsd, Ctfsd]:
    a_ns, b_ns, _ = MODES[mode]
    pair = []
    for ns, name in ((a_ns, "hosta"), (b_ns, "hostb")):
        extra = ("--uplink", "up0", "--peer-name", name, "--peer-address",
                 f"{lab.ip[ns]}:{PEER_PORT}", "--migrate-memory", mode)  # fmt: skip
        daemon = Ctfsd(wrapper=lab.enter(ns), extra=extra)
        started.append(daemon)
        daemon.start()
        pair.append(daemon)
    a, b = pair
    for here, there in ((a, b), (b, a)):
        if write_errno(here.mount / "peers", (there.mount / "identity").read_bytes()) != 0:
            raise BenchError("cannot make the two ctfsd trust each other")
    for daemon in pair:
        if not wait_for(lambda d=daemon: "peers: listening on" in d.log_text(), timeout=20):
            raise BenchError("a ctfsd does not listen for its peer")
    return a, b


def bench_ctfs(pair: tuple[Ctfsd, Ctfsd], lab: MoveLab, ctid: int, mib: int, runs: int,
               cell: Cell) -> None:  # fmt: skip
    a, b = pair
    address = f"{PREFIX}.{ctid - 600}"
    try:
        boot(a, ctid, address, mib)
        moves = [lambda: ctfs_move(a, ctid, "hostb"), lambda: ctfs_move(b, ctid, "hosta")]
        round_trips(moves, lab, address, runs, cell)
        last = b.log_text().rsplit("migration: to hosta", 1)[-1]
        cell.detail = "; ".join(d.removeprefix("migration: ") for d in DETAIL.findall(last))
    except BenchError:
        for daemon in pair:
            print_log_tail(daemon, 12)
        raise
    finally:
        remove(pair, ctid)


def bench_raw(lab: MoveLab, ctid: int, mib: int, runs: int, cells: dict[str, Cell]) -> None:
    address = f"{PREFIX}.{ctid - 600}"
    daemon = Ctfsd(wrapper=lab.enter("ra"), extra=("--uplink", "up0"))
    peer: RawPeer | None = None
    mover: RawMover | None = None
    try:
        daemon.start()
        boot(daemon, ctid, address, mib)
        peer = RawPeer(daemon, ctid, daemon.state / "raw-criu", lab.ns["ra"], (address,))
        peer.take_over()  # from here on only criu touches the tree
        hosts = (RawHost("ra", str(ctid)), RawHost("rb", str(ctid + 10000)))
        mover = RawMover(peer, lab, hosts, address)
        for lazy, row in ((True, "raw post-copy"), (False, "raw stop-and-copy")):
            moves: list[Callable[[], tuple[float, float]]] = [partial(mover.move, lazy)] * 2
            round_trips(moves, lab, address, runs, cells[row])
            cells[row].detail = mover.phases
    except BenchError:
        print_log_tail(daemon, 12)
        raise
    finally:
        if mover is not None:
            safely("ending the raw side's criu runs", mover.close)
        if peer is not None:
            safely("unmounting the raw peer's stand-ins", peer.close)
        safely("cleaning up the raw side's ctfsd", daemon.cleanup)


def memory_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def label(workload: str) -> str:
    mib = WORKLOADS[workload]
    return "idle" if not mib else ("1 GiB" if mib == 1024 else f"{mib} MiB") + " touched"


def print_table(name: str, runs: int, cells: dict[str, Cell]) -> None:
    print(f"\n{name}: medians of {2 * runs} moves (there and back, {runs} runs)")
    print(f"  {'':<20} {'frozen':>9} {'total':>9} {'client gap':>11} "
          f"{'ctfs/raw frozen':>16} {'ctfs/raw total':>15}")  # fmt: skip
    for row in ROWS:
        cell = cells[row]
        values = [cell.median(n) for n in ("frozen", "total", "gap")]
        text = "".join(f"{'-' if v is None else f'{v:.0f} ms':>{w}}"
                       for v, w in zip(values, (10, 10, 12), strict=True))  # fmt: skip
        raw = cells[row.replace("ctfs", "raw")]
        if row.startswith("ctfs"):
            for n, w in (("frozen", 17), ("total", 16)):
                ours, theirs = cell.median(n), raw.median(n)
                text += f"{'-' if not (ours and theirs) else f'{ours / theirs:.2f}':>{w}}"
        print(f"  {row:<20}{text}")
    for row in ROWS:
        if cells[row].detail:
            print(f"  {row}{', its last move' if cells[row].frozen else ''}: {cells[row].detail}")


def print_targets(results: dict[str, dict[str, Cell]]) -> None:
    print("\ntargets")

    def check(what: str, value: float | None, limit: float | None, unit: str) -> None:
        if value is None or limit is None:
            print(f"  {what}: not measured")
            return
        verdict = "met" if value <= limit else "NOT met"
        print(f"  {what}: {value:.{2 if unit == 'x' else 0}f}{unit} (limit "
              f"{limit:.{2 if unit == 'x' else 0}f}{unit}): {verdict}")  # fmt: skip

    idle = results.get("idle")
    for mode in MODES:
        frozen = idle[f"ctfs {mode}"].median("frozen") if idle else None
        check(f"frozen <= 300 ms, idle, ctfs {mode}", frozen, 300, " ms")
    big = results.get("1 GiB touched")
    if idle and big:
        idle_frozen = idle["ctfs post-copy"].median("frozen")
        big_frozen = big["ctfs post-copy"].median("frozen")
        ratio = big_frozen / idle_frozen if big_frozen and idle_frozen else None
        check("post-copy: frozen for 1 GiB within 1.5x of idle", ratio, 1.5, "x")
    for name, cells in results.items():
        for mode in MODES:
            cell = cells[f"ctfs {mode}"]
            frozen = cell.median("frozen")
            limit = frozen + 100 if frozen is not None else None
            check(f"client's gap <= frozen + 100 ms, {name}, ctfs {mode}",
                  cell.median("gap"), limit, " ms")  # fmt: skip
    for name, cells in results.items():
        for mode in MODES:
            for n in ("frozen", "total"):
                ours, raw = cells[f"ctfs {mode}"].median(n), cells[f"raw {mode}"].median(n)
                ratio = ours / raw if ours and raw else None
                check(f"ctfs/raw {n} <= 1.10, {name}, {mode}", ratio, 1.10, "x")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    choices = ", ".join(WORKLOADS)
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, of {choices} (MiB touched)")  # fmt: skip
    parser.add_argument("--skip-raw", action="store_true", help="leave raw CRIU out")
    args = parser.parse_args()
    args.workloads = [w for w in args.workloads.split(",") if w]
    if set(args.workloads) - set(WORKLOADS) or not args.workloads or args.runs < 1:
        parser.error(f"--workloads takes {', '.join(WORKLOADS)}; --runs at least 1")
    return args


def main() -> int:
    args = parse_args()
    interrupt_on_termination()  # SIGTERM and SIGHUP clean up as Ctrl-C does
    if os.geteuid() != 0:
        raise BenchError("run it as root (sudo .venv/bin/python -m bench.migrate)")
    if not DEFAULT_BINARY.exists() or not (SYSTEM_TEMPLATE_CACHE / "busybox.tar.gz").exists():
        raise BenchError(f"{DEFAULT_BINARY} or the busybox template is missing: run tools/setup")
    results: dict[str, dict[str, Cell]] = {}
    notes: list[str] = []
    started: list[Ctfsd] = []
    lab: MoveLab | None = None
    pipe_before = PIPE_MAX_SIZE.read_text().strip()
    try:
        lab = MoveLab(PREFIX, HOSTS)
        for ns in ("ra", "rb"):
            must([*lab.enter(ns), "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        if int(pipe_before) < NEEDED_PIPE_MAX:  # CRIU's page server (ctfs raises it too)
            PIPE_MAX_SIZE.write_text(str(NEEDED_PIPE_MAX))
        pairs = {mode: start_pair(lab, mode, started) for mode in MODES}
        for workload in args.workloads:
            mib, name = WORKLOADS[workload], label(workload)
            if memory_available_mib() < 3 * mib + 1024:
                notes.append(f"{name}: not measured, {memory_available_mib()} MiB available")
                continue
            cells = results[name] = {row: Cell() for row in ROWS}
            # CTIDs of their own: a container a failure left behind is in no one's way.
            offset = 10 * list(WORKLOADS).index(workload)
            for mode, pair in pairs.items():
                print(f"{name}: ctfs {mode}, {args.runs} runs ...", flush=True)
                row = f"ctfs {mode}"
                try:
                    bench_ctfs(pair, lab, MODES[mode][2] + offset, mib, args.runs, cells[row])
                except BenchError as exc:
                    cells[row] = Cell(detail=f"not measured, it failed: {exc}"[:600])
            if not args.skip_raw:
                print(f"{name}: raw CRIU, {args.runs} runs ...", flush=True)
                try:
                    bench_raw(lab, RAW_CTID + offset, mib, args.runs, cells)
                except BenchError as exc:
                    for row in ("raw post-copy", "raw stop-and-copy"):
                        cells[row] = Cell(detail=f"not measured, it failed: {exc}"[:600])
    finally:
        with uninterrupted():
            for daemon in started:
                safely("cleaning up a ctfsd", daemon.cleanup)
            if lab is not None:
                safely("deleting the network namespaces", lab.close)
            if PIPE_MAX_SIZE.read_text().strip() != pipe_before:
                safely("restoring fs.pipe-max-size", lambda: PIPE_MAX_SIZE.write_text(pipe_before))
    for name, cells in results.items():
        print_table(name, args.runs, cells)
    print_targets(results)
    for note in notes:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    run_bench("bench.migrate", main)
