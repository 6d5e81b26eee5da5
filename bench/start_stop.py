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
   running container, in-process, next to the raw cgroup file ``pids.current``
   of that container and ``/proc/uptime`` of a private LXCFS instance (``lxcfs``
   installed when missing, run in the foreground on a temporary directory); and
   the same three read by a spawned ``cat``, as a shell user would.
5. Debian 12 with systemd (``--debian-runs``, default 5; 0 leaves it out): boot to
   ``running`` and graceful stop, ctfs next to an LXC container of the same
   debian-12 template tarball (bench.debian_boot says how each is measured).

Every system runs one untimed warm-up cycle first, and the container is left
``--settle`` seconds between its first command and the stop.  The ctfs side uses a
private ctfsd (``tests.ctfsd_harness.Ctfsd``: own state dir, mount and cgroup
parent).  Everything made is removed at the end, also on failure or Ctrl-C:
containers, ctfsd, the LXC containers and the empty ``lxc.pivot`` cgroups LXC
leaves, the LXCFS instance (ended by its PID) and its mount, temporary
directories.  Packages it installs stay installed, but no service is started
(policy-rc.d) and the ones their maintainer scripts enabled for boot are
disabled again, so lxc-net never makes its bridge.

Run it as root from the repository root::

    sudo .venv/bin/python -m bench.start_stop [--runs N] [--reads N] [--cat-reads N]
                                              [--settle SECONDS] [--debian-runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from bench.debian import DEBIAN, offer_templates
from bench.debian_boot import Boots, bench_ctfs_debian, bench_lxc_debian
from bench.debian_boot import report as debian_report
from bench.lxc import LXCFS_PACKAGES, LxcContainer, Lxcfs
from bench.samples import (
    Samples,
    bench_reads,
    fmt,
    print_table,
    read_in_process,
    read_with_cat,
)
from tests.ctfsd_harness import CTFS, UNIFIED, Ctfsd, write_errno

CTID = 101
LXC_PACKAGES = ("lxc", "busybox-static")


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


def lxc_cycle(lxc: LxcContainer, settle: float, results: LxcResults | None) -> None:
    began = time.perf_counter()
    started = lxc.start()
    attached = lxc.attach_true()
    first = time.perf_counter() - began
    time.sleep(settle)
    stopped = lxc.stop()
    if results is not None:
        results.start.values.append(started)
        results.attach.values.append(attached)
        results.first.values.append(first)
        results.stop.values.append(stopped)


def bench_lxc(workdir: Path, runs: int, settle: float) -> LxcResults:
    ensure_packages(LXC_PACKAGES)
    lxc = LxcContainer(workdir)
    try:
        print(f"lxc: creating {lxc.name} (busybox template, lxc.net.0.type = empty) ...")
        lxc.create()
        print(f"lxc: {runs} start/attach/stop cycles ...", flush=True)
        try:
            lxc_cycle(lxc, settle, None)  # warm-up
            results = LxcResults()
            for _ in range(runs):
                lxc_cycle(lxc, settle, results)
        except BenchError as exc:
            log = lxc.log.read_text(errors="replace")[-2000:] if lxc.log.exists() else ""
            raise BenchError(f"{exc}\nlxc-start log:\n{log}" if log else str(exc)) from exc
        return results
    finally:
        safely("destroying the LXC container", lxc.destroy)


# -------------------------------------------------------------------- LXCFS


# ------------------------------------------------------------------ summary


def summary(pairs: Sequence[tuple[str, Samples | None, Samples | None]]) -> None:
    print("\nSummary (medians; ratio = ctfs / peer, below 1 means ctfs is faster)")
    print(f"  {'metric':<28} {'ctfs':>11}  {'peer':<30} {'peer med.':>11} {'ratio':>7}")
    for metric, ours, peer in pairs:
        if ours is None or not ours.values:
            continue
        mine = fmt(ours.median(), ours.unit)
        if peer is None or not peer.values:
            print(f"  {metric:<28} {mine:>11}  {'(not measured)':<30} {'-':>11} {'-':>7}")
            continue
        ratio = ours.median() / peer.median() if peer.median() else float("inf")
        theirs = fmt(peer.median(), peer.unit)
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
        "--debian-runs",
        type=int,
        default=5,
        help="boot/stop cycles of Debian 12, ctfs and LXC (default 5; 0: none)",
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
    if args.debian_runs < 0:
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


@dataclass
class Measured:
    """Everything one run measured; what is None was not measured (see the problems)."""

    ctfs: CtfsResults | None = None
    lxc: LxcResults | None = None
    reads: list[Samples] = field(default_factory=list)
    cats: list[Samples] = field(default_factory=list)
    debian_ctfs: Boots | None = None
    debian_lxc: Boots | None = None
    problems: dict[str, str] = field(default_factory=dict)  # who -> why not measured


def not_measured(measured: Measured, who: str, exc: BaseException) -> None:
    measured.problems[who] = str(exc)
    print(f"{who}: not measured: {exc}", file=sys.stderr)


def measure_debian(
    args: argparse.Namespace, workdir: Path, daemon: Ctfsd, measured: Measured
) -> None:
    if DEBIAN not in (daemon.mount / "templates").read_text().split():
        measured.problems["Debian"] = f"template {DEBIAN} is not built (tools/build-template)"
        return
    runs = args.debian_runs
    measured.debian_ctfs = bench_ctfs_debian(daemon.mount, args.ids, runs, args.settle)
    try:
        measured.debian_lxc = bench_lxc_debian(workdir, runs, args.settle)
    except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
        not_measured(measured, "LXC Debian", exc)


def measure(args: argparse.Namespace, workdir: Path, daemon: Ctfsd, measured: Measured) -> None:
    container = daemon.mount / str(CTID)
    container.mkdir()
    write_errno(container / "idmap", f"{args.ids}\n".encode())
    print(f"ctfs: CT {CTID} with {args.ids} ids: {(container / 'idmap').read_text().strip()}")
    measured.ctfs = bench_ctfs(container, args.runs, args.settle)
    try:
        measured.lxc = bench_lxc(workdir, args.runs, args.settle)
    except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
        not_measured(measured, "LXC", exc)
    if args.debian_runs:
        measure_debian(args, workdir, daemon, measured)

    write_state(container, "running")
    version = "v2" if UNIFIED else "v1"
    sources: list[tuple[str, Path]] = [
        ("ctfs MOUNT/CT/state", container / "state"),
        (f"cgroup {version} pids.current", daemon.cgroup_dir("pids", CTID) / "pids.current"),
    ]
    lxcfs = Lxcfs(workdir)
    try:
        try:
            ensure_packages(LXCFS_PACKAGES)
            lxcfs.start()
            sources.append(("lxcfs /proc/uptime", lxcfs.uptime))
        except (BenchError, OSError) as exc:
            not_measured(measured, "lxcfs", exc)
        print(f"reads: {args.reads} in-process and {args.cat_reads} cat reads per file ...")
        measured.reads = bench_reads(sources, args.reads, read_in_process, "read", "µs")
        cat = shutil.which("cat") or "/bin/cat"
        measured.cats = bench_reads(
            sources, args.cat_reads, lambda path: read_with_cat(cat, path), "cat", "ms"
        )
    finally:
        with uninterrupted():
            safely("stopping lxcfs", lxcfs.stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.start_stop: run it as root (sudo)", file=sys.stderr)
        return 2
    interrupt_on_termination()
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, runs={args.runs}, {load_average()}")

    workdir = Path(tempfile.mkdtemp(prefix="ctfs-bench-"))
    # A systemd shutdown takes well under a second; ctfsd's default timeout (60 s)
    # rather than the harness's 3 s, so that a slow one is measured, not cut short.
    daemon = Ctfsd(stop_timeout=60)
    measured = Measured()
    try:
        if args.debian_runs:
            try:
                offer_templates(daemon, DEBIAN)
            except BenchError as exc:
                not_measured(measured, "Debian", exc)
        daemon.start()
        measure(args, workdir, daemon, measured)
    except Exception:
        print_log_tail(daemon)
        raise
    finally:
        with uninterrupted():
            container = daemon.mount / str(CTID)
            if daemon.proc is not None:
                safely(f"removing CT {CTID}", lambda: remove_ctfs_container(container))
            safely("ctfsd cleanup", daemon.cleanup)
            safely("removing the work directory", lambda: shutil.rmtree(workdir))
    report(args, measured)
    return 0


def report(args: argparse.Namespace, measured: Measured) -> None:
    print(f"\nStart and stop, {args.runs} runs each after one warm-up, settle {args.settle} s")
    print(f"at the end: {load_average()}")
    ours = measured.ctfs or CtfsResults()
    peer = measured.lxc or LxcResults()
    rows = [ours.first, ours.start, ours.exec, ours.stop]
    rows += [peer.first, peer.start, peer.attach, peer.stop]
    print_table("Start / first command / stop", rows)
    if "LXC" in measured.problems:
        print(f"  LXC not measured: {measured.problems['LXC']}")
    if args.debian_runs:
        debian_report(args.debian_runs, measured.debian_ctfs, measured.debian_lxc)
        for who in ("Debian", "LXC Debian"):
            if who in measured.problems:
                print(f"  {who} not measured: {measured.problems[who]}")
    reads, cats = measured.reads, measured.cats
    print_table(f"Control-file reads, open+read+close in-process, {args.reads} each", reads)
    print_table(f"Control-file reads by a spawned cat, {args.cat_reads} each", cats)

    def pick(samples: Sequence[Samples], index: int) -> Samples | None:
        return samples[index] if len(samples) > index else None

    deb = measured.debian_ctfs or Boots.named("ctfs", "", "")
    deb_lxc = measured.debian_lxc or Boots.named("LXC", "", "")
    summary(
        [
            ("start to first command", ours.first, peer.first),
            ("start (state write)", ours.start, peer.start),
            ("first command (exec)", ours.exec, peer.attach),
            ("graceful stop", ours.stop, peer.stop),
            ("Debian: boot to running", deb.outside, deb_lxc.outside),
            ("Debian: same, systemd clock", deb.systemd, deb_lxc.systemd),
            ("Debian: graceful stop", deb.stop, deb_lxc.stop),
            ("read state, in-process", pick(reads, 0), pick(reads, 1)),
            ("read state, in-process", pick(reads, 0), pick(reads, 2)),
            ("cat state", pick(cats, 0), pick(cats, 1)),
            ("cat state", pick(cats, 0), pick(cats, 2)),
        ]
    )
    print(NOTES)


if __name__ == "__main__":
    run_bench("bench.start_stop", main)
