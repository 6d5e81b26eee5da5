"""Checkpoint and restore times of ctfs next to the raw criu commands, in one run.

Workloads (``--workloads``, default all): ``busybox`` and ``debian``.

busybox: for two workloads of the busybox template, ``--runs`` times each (default 5):

- idle: init and syslogd;
- 256 MiB: the same plus a busybox awk holding 256 MiB of touched memory;

each twice, the ctfs container with the host's ids and then with a private id
range (the raw peer always with the host's: raw criu would need the idmapped
root and the fresh /dev that ctfs makes for a private container's restore);

it measures, alternating between the two sides,

1. ctfs: ``echo frozen > state`` (freeze, criu dump, dump file written and synced)
   and ``echo running > state`` (dump file checked and unpacked, cgroups made,
   criu restore), and the dump file's size;
2. raw CRIU: ``criu dump`` and ``criu restore -d`` with the same options ctfs uses
   (ctfs.kernel.criu), by hand, on an equivalent process tree: a second container
   of the same template and workload, whose ctfsd has been SIGKILLed first so that
   nothing but criu touches it (containers do not depend on ctfsd); and the size of
   its image directory.  What plain criu cannot take as it is (ctfs's views, FUSE
   bind mounts) is declared to it by hand (bench.criu_sides says how);
3. ``lxc-checkpoint`` on an LXC busybox container (network type empty), if LXC and
   its CRIU support work here; otherwise the reason is printed.

debian: Debian 12 with PostgreSQL 15 and a client inserting a row every 100 ms over
TCP, ctfs (private and host ids) next to raw criu, the client's longest gap
included (bench.checkpoint_debian).

Run it as root from the repository root::

    sudo .venv/bin/python -m bench.checkpoint [--runs N] [--skip-lxc]
                                              [--workloads busybox,debian]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.checkpoint_debian import RAW_LABEL, DebianResult, bench_debian
from bench.common import (
    BenchError,
    ensure_packages,
    must,
    print_log_tail,
    run_bench,
    safely,
    write_state,
)
from bench.criu_sides import RawPeer, Side, ctfs_cycle
from bench.lxc import LxcContainer
from ctfs.kernel.criu import DEFAULT_BINARY
from tests.ctfsd_harness import CTFS, Ctfsd, wait_for

HOG_MIB = 256
# busybox awk pads a string to 256 MiB (touching every page), then waits forever.
HOG = (
    f'awk \'BEGIN {{ s = sprintf("%{HOG_MIB * 1024 * 1024}s", ""); '
    'system("exec sleep 1000000") }\' </dev/null >/dev/null 2>&1 &'
)


def exec_in(mount: Path, ctid: str, script: str) -> None:
    must([str(CTFS), "--mount", str(mount), "exec", ctid, "--", "sh", "-c", script])


def booted(ct: Path) -> bool:
    return len((ct / "procs").read_text().split()) >= 2


def prepare(mount: Path, ctid: str, hog: bool, ids: str) -> Path:
    ct = mount / ctid
    ct.mkdir()
    # The raw peer is always restored with the host's ids: raw criu would need the
    # idmapped root and the fresh /dev ctfs gives a private container's restore.
    (ct / "idmap").write_text(f"{ids}\n")
    write_state(ct, "running")
    if not wait_for(lambda: booted(ct), timeout=10):
        raise BenchError(f"container {ctid} did not boot")
    if hog:
        exec_in(mount, ctid, HOG)
        time.sleep(3)  # awk fills its string
    return ct


def lxc_cycle(lxc: LxcContainer, work: Path, into: Side) -> None:
    images = work / "lxc-images"
    shutil.rmtree(images, ignore_errors=True)
    env_path = f"{DEFAULT_BINARY.parent}:{os.environ.get('PATH', '')}"
    for argv, bucket in (
        (["lxc-checkpoint", "-n", lxc.name, "-D", str(images), "-s"], into.freeze_ms),
        (["lxc-checkpoint", "-n", lxc.name, "-D", str(images), "-r"], into.restore_ms),
    ):
        began = time.perf_counter()
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": env_path}
        )
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()[-400:]}")
        bucket.append((time.perf_counter() - began) * 1000)
        if bucket is into.freeze_ms:
            into.size.append(sum(p.stat().st_size for p in images.rglob("*") if p.is_file()))


def bench_workload(hog: bool, runs: int, ids: str) -> tuple[Side, Side, str]:
    ours, raw = Side(), Side()
    daemon = Ctfsd()
    peer_daemon = Ctfsd()
    peer: RawPeer | None = None
    try:
        daemon.start()
        peer_daemon.start()
        ct = prepare(daemon.mount, "201", hog, ids)
        prepare(peer_daemon.mount, "202", hog, "host")
        # Raw images on the same kind of filesystem as ctfs's dump: the peer's pool.
        peer = RawPeer(peer_daemon, 202, peer_daemon.state / "raw-criu")
        peer.take_over()  # from here on nothing but criu touches the peer's tree
        ctfs_cycle(ct, daemon.state, Side())  # warm-up, both sides
        peer.cycle(Side())
        for _ in range(runs):
            # Each side starts with nothing of the other's left to write back.
            os.sync()
            ctfs_cycle(ct, daemon.state, ours)
            os.sync()
            peer.cycle(raw)
        breakdown = [
            line.split("Z ", 1)[1]
            for line in (ct / "events").read_text().splitlines()
            if " frozen: " in line or " restored: " in line
        ][-2:]
    except BenchError:
        print_log_tail(daemon)
        raise
    finally:
        if peer is not None:
            safely("unmounting the raw peer's stand-ins", peer.close)
        safely("cleaning up ctfsd", daemon.cleanup)
        safely("cleaning up the peer", peer_daemon.cleanup)
    return ours, raw, "; ".join(breakdown)


WORKLOADS = ("busybox", "debian")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-lxc", action="store_true")
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, of {', '.join(WORKLOADS)} (default all)",
    )
    args = parser.parse_args()
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown or not args.workloads or args.runs < 1:
        parser.error(f"--workloads takes {', '.join(WORKLOADS)}; --runs at least 1")
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        raise BenchError("run it as root (sudo .venv/bin/python -m bench.checkpoint)")
    if not DEFAULT_BINARY.exists():
        raise BenchError(f"{DEFAULT_BINARY} is missing; run sudo tools/setup")
    work = Path(tempfile.mkdtemp(prefix="ctfs-bench-criu-"))
    results: dict[str, tuple[Side, Side, str]] = {}
    lxc_side, lxc_note = Side(), ""
    debian: DebianResult | None = None
    try:
        if "busybox" in args.workloads:
            for ids in ("host", "private"):
                for name, hog in (("idle", False), (f"{HOG_MIB} MiB", True)):
                    label = f"{name}, ctfs with {ids} ids"
                    print(f"{label}: {args.runs} freeze/restore cycles each ...", flush=True)
                    results[label] = bench_workload(hog, args.runs, ids)
            if not args.skip_lxc:
                lxc_side, lxc_note = bench_lxc(work, args.runs)
        if "debian" in args.workloads:
            print(f"Debian 12 + PostgreSQL: {args.runs} cycles each with a client ...", flush=True)
            try:
                debian = bench_debian(args.runs)
            except BenchError as exc:
                debian = DebianResult(notes=[f"not measured: {exc}"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if results:
        print_busybox(args.runs, results, lxc_side, lxc_note)
    if debian is not None:
        print_debian(args.runs, debian)
    return 0


def header(runs: int, gap: bool = False) -> str:
    return (
        f"medians of {runs} runs   {'freeze':>11} {'restore':>10} {'round trip':>10}"
        f" {'image':>11}" + (f" {'client gap':>11}" if gap else "")
    )


def print_fsync(raw: Side) -> None:
    if raw.sync_ms:
        print(f"  {'  + fsync of the raw images':<34} {statistics.median(raw.sync_ms):>8.0f} ms"
              "  (ctfs's freeze includes making its dump durable)")  # fmt: skip


def difference(ours: Side, raw: Side) -> str:
    """How much ctfs adds to raw CRIU's round trip, or nothing if one is missing."""
    if not (ours.freeze_ms and raw.freeze_ms):
        return ""
    total = statistics.median(ours.freeze_ms) + statistics.median(ours.restore_ms)
    raw_total = statistics.median(raw.freeze_ms) + statistics.median(raw.restore_ms)
    return f"ctfs adds {100 * (total / raw_total - 1):+.1f} % to raw CRIU's round trip"


def print_busybox(
    runs: int, results: dict[str, tuple[Side, Side, str]], lxc_side: Side, lxc_note: str
) -> None:
    print(f"\n{header(runs)}")
    for name, (ours, raw, breakdown) in results.items():
        print(f"{name}")
        print(ours.row("ctfs (echo frozen / echo running)"))
        print(raw.row("raw criu dump / criu restore -d"))
        print_fsync(raw)
        if difference(ours, raw):
            print(f"  {difference(ours, raw)}")
            print(f"  ctfs's last cycle, from events: {breakdown}")
    print("idle, LXC")
    print(lxc_side.row("lxc-checkpoint -s / -r"))
    if lxc_note:
        print(f"  lxc-checkpoint: {lxc_note}")


def print_debian(runs: int, result: DebianResult) -> None:
    print("\nDebian 12 + PostgreSQL 15 (systemd 252), a client inserting a row every 100 ms")
    print(f"{header(runs, gap=True)}")
    print("  (ctfs: echo frozen / echo running; client gap: its longest wait for an insert)")
    raw = result.sides.get(RAW_LABEL, Side())
    for label, side in result.sides.items():
        print(side.row(label))
    print_fsync(raw)
    for label, side in result.sides.items():
        if label != RAW_LABEL and difference(side, raw):
            print(f"  {label}: {difference(side, raw)}")
    for label, side in result.sides.items():
        if side.gap_ms:
            gaps = ", ".join(f"{gap:.0f}" for gap in side.gap_ms)
            print(f"  client gaps, {label}: {gaps} ms (every row there once, one session)")
    for note in result.notes:
        print(f"  {note}")


def bench_lxc(work: Path, runs: int) -> tuple[Side, str]:
    side = Side()
    try:
        ensure_packages(["lxc"])
    except BenchError as exc:
        return side, f"not measured: {exc}"
    lxc = LxcContainer(work)
    try:
        lxc.create()
        lxc.start()
        time.sleep(1)
        for _ in range(runs):
            lxc_cycle(lxc, work, side)
    except BenchError as exc:
        return Side(), f"does not work here: {exc}"
    finally:
        safely("destroying the LXC container", lxc.destroy)
    return side, ""


if __name__ == "__main__":
    run_bench("bench.checkpoint", main)
