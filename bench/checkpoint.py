"""Checkpoint and restore times of ctfs next to the raw criu commands, in one run.

For two workloads of the busybox template, ``--runs`` times each (default 5):

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
   its image directory;
3. ``lxc-checkpoint`` on an LXC busybox container (network type empty), if LXC and
   its CRIU support work here; otherwise the reason is printed.

Run it as root from the repository root::

    sudo .venv/bin/python -m bench.checkpoint [--runs N] [--skip-lxc]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    BenchError,
    ensure_packages,
    must,
    print_log_tail,
    run_bench,
    safely,
    write_state,
)
from bench.start_stop import LxcContainer
from ctfs.kernel.criu import DEFAULT_BINARY
from tests.ctfsd_harness import CTFS, Ctfsd, wait_for

HOG_MIB = 256
# busybox awk pads a string to 256 MiB (touching every page), then waits forever.
HOG = (
    f'awk \'BEGIN {{ s = sprintf("%{HOG_MIB * 1024 * 1024}s", ""); '
    'system("exec sleep 1000000") }\' </dev/null >/dev/null 2>&1 &'
)
CRIU_DUMP_OPTIONS = ["--tcp-established", "--file-locks", "--link-remap", "--network-lock",
                     "nftables"]  # fmt: skip
CRIU_RESTORE_OPTIONS = ["--tcp-established", "--file-locks", "--link-remap",
                        "--manage-cgroups=soft", "--cgroup-yard", "/sys/fs/cgroup"]  # fmt: skip


@dataclass
class Side:
    freeze_ms: list[float] = field(default_factory=list)
    restore_ms: list[float] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    # raw only: making the images durable (fsync), which ctfs's freeze includes.
    sync_ms: list[float] = field(default_factory=list)

    def row(self, label: str) -> str:
        if not self.freeze_ms:
            return f"  {label:<34} {'-':>10} {'-':>10} {'-':>10} {'-':>10}"
        freeze = statistics.median(self.freeze_ms)
        restore = statistics.median(self.restore_ms)
        size = statistics.median(self.size) / 1024 / 1024
        return (
            f"  {label:<34} {freeze:>8.0f} ms {restore:>7.0f} ms {freeze + restore:>7.0f} ms "
            f"{size:>7.1f} MiB"
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


def raw_cycle(daemon: Ctfsd, ctid: int, root: Path, pid: int, work: Path, into: Side) -> int:
    """criu dump then criu restore -d of the tree of ``pid``; the restored init's PID."""
    images = work / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    freezer = daemon.cgroup_dir("freezer", ctid)
    dumped = must(
        [str(DEFAULT_BINARY), "dump", "-t", str(pid), "-D", str(images), "--work-dir",
         str(work), "-o", "dump.log", "--freeze-cgroup", str(freezer), *CRIU_DUMP_OPTIONS],
        timeout=300,
    )  # fmt: skip
    into.freeze_ms.append(dumped * 1000)
    into.size.append(sum(p.stat().st_size for p in images.iterdir()))
    began = time.perf_counter()
    for path in images.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    into.sync_ms.append((time.perf_counter() - began) * 1000)
    pidfile = work / "init.pid"
    pidfile.unlink(missing_ok=True)
    restored = must(
        [str(DEFAULT_BINARY), "restore", "-d", "-D", str(images), "--work-dir", str(work),
         "-o", "restore.log", "--pidfile", str(pidfile), "--root", str(root),
         *CRIU_RESTORE_OPTIONS],
        timeout=300,
    )  # fmt: skip
    into.restore_ms.append(restored * 1000)
    return int(pidfile.read_text())


def ctfs_cycle(ct: Path, state_dir: Path, into: Side) -> None:
    into.freeze_ms.append(write_state(ct, "frozen") * 1000)
    into.size.append((state_dir / ct.name / "dump").stat().st_size)
    into.restore_ms.append(write_state(ct, "running") * 1000)


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
    try:
        daemon.start()
        peer_daemon.start()
        ct = prepare(daemon.mount, "201", hog, ids)
        peer = prepare(peer_daemon.mount, "202", hog, "host")
        peer_pid = int((peer / "procs").read_text().split()[0])
        # From here on nothing but criu touches the peer's tree.
        peer_daemon.kill()
        root = peer_daemon.state / "202" / "root"
        # Raw images on the same kind of filesystem as ctfs's dump: the peer's pool.
        work = peer_daemon.state / "raw-criu"
        ctfs_cycle(ct, daemon.state, Side())  # warm-up, both sides
        peer_pid = raw_cycle(peer_daemon, 202, root, peer_pid, work, Side())
        for _ in range(runs):
            # Each side starts with nothing of the other's left to write back.
            os.sync()
            ctfs_cycle(ct, daemon.state, ours)
            os.sync()
            peer_pid = raw_cycle(peer_daemon, 202, root, peer_pid, work, raw)
        breakdown = [
            line.split("Z ", 1)[1]
            for line in (ct / "events").read_text().splitlines()
            if " frozen: " in line or " restored: " in line
        ][-2:]
        shutil.rmtree(work, ignore_errors=True)
    except BenchError:
        print_log_tail(daemon)
        raise
    finally:
        safely("cleaning up ctfsd", daemon.cleanup)
        safely("cleaning up the peer", peer_daemon.cleanup)
    return ours, raw, "; ".join(breakdown)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-lxc", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise BenchError("run it as root (sudo .venv/bin/python -m bench.checkpoint)")
    if not DEFAULT_BINARY.exists():
        raise BenchError(f"{DEFAULT_BINARY} is missing; run sudo tools/setup")
    work = Path(tempfile.mkdtemp(prefix="ctfs-bench-criu-"))
    results: dict[str, tuple[Side, Side, str]] = {}
    lxc_side, lxc_note = Side(), ""
    try:
        for ids in ("host", "private"):
            for name, hog in (("idle", False), (f"{HOG_MIB} MiB", True)):
                label = f"{name}, ctfs with {ids} ids"
                print(f"{label}: {args.runs} freeze/restore cycles each ...", flush=True)
                results[label] = bench_workload(hog, args.runs, ids)
        if not args.skip_lxc:
            lxc_side, lxc_note = bench_lxc(work, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmedians of {args.runs} runs   {'freeze':>11} {'restore':>10} {'round trip':>10}"
          f" {'image':>11}")  # fmt: skip
    for name, (ours, raw, breakdown) in results.items():
        print(f"{name}")
        print(ours.row("ctfs (echo frozen / echo running)"))
        print(raw.row("raw criu dump / criu restore -d"))
        if raw.sync_ms:
            print(f"  {'  + fsync of the raw images':<34} {statistics.median(raw.sync_ms):>8.0f} ms"
                  "  (ctfs's freeze includes making its dump durable)")  # fmt: skip
        if ours.freeze_ms and raw.freeze_ms:
            total = statistics.median(ours.freeze_ms) + statistics.median(ours.restore_ms)
            raw_total = statistics.median(raw.freeze_ms) + statistics.median(raw.restore_ms)
            print(f"  ctfs adds {100 * (total / raw_total - 1):+.1f} % to raw CRIU's round trip")
            print(f"  ctfs's last cycle, from events: {breakdown}")
    print("idle, LXC")
    print(lxc_side.row("lxc-checkpoint -s / -r"))
    if lxc_note:
        print(f"  lxc-checkpoint: {lxc_note}")
    return 0


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
