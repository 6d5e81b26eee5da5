"""The two sides of bench.checkpoint: ctfs's ``echo frozen`` / ``echo running``, and
``criu dump`` / ``criu restore`` by hand, and what is measured of each (``Side``).

The raw side's tree is a ctfs container whose ctfsd has been SIGKILLed (containers
do not depend on ctfsd), so that nothing but criu touches it.  The options are the ones
ctfs uses (ctfs.kernel.criu); what the tree has that plain criu cannot take as it
is, is declared to criu here, by hand, as a user of raw criu would have to:

- ctfs's views of the container (its own directory at /ctfs/CTID, /proc/meminfo
  and the other files in ctfs.model.views.BOUND) are bind mounts of ctfs's FUSE
  mount.  criu refuses a FUSE mount ("doesn't have a proper root mount"), so they
  are ``--external mnt[PATH]:KEY`` at dump, as ctfs does; at restore ctfs binds
  its own mount in again, but the peer's mount has no ctfsd to answer, so copies
  of the files (taken before ctfsd was killed) stand in for them.
- hugetlbfs (systemd's dev-hugepages.mount, in a container with the host's ids
  whose template does not mask it; the Debian templates now do): criu 4.2 cannot
  dump a hugetlbfs mount ("unsupported id"), so it is external too, and a fresh
  hugetlbfs with the same options is bound in at restore.
- the container's veth: ``--external veth[eth0]:ctfsCTID`` as ctfs; criu makes the
  pair again at restore, and an action script of a few ``ip`` commands routes the
  host end (ctfs does that in ctfsd: ctfs.kernel.criu_action).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BenchError, must, run, write_state
from ctfs.kernel.criu import DEFAULT_BINARY
from tests.ctfsd_harness import Ctfsd

DUMP_OPTIONS = ["--tcp-established", "--file-locks", "--link-remap", "--network-lock",
                "nftables"]  # fmt: skip
RESTORE_OPTIONS = ["--tcp-established", "--file-locks", "--link-remap",
                   "--manage-cgroups=soft", "--cgroup-yard", "/sys/fs/cgroup"]  # fmt: skip
# A raw criu user's own action script: the host end of the veth criu made again.
ACTION = """#!/bin/sh
[ "$CRTOOLS_SCRIPT_ACTION" = post-setup-namespaces ] || exit 0
echo 1 > /proc/sys/net/ipv4/conf/$VETH/proxy_arp || exit 1
ip link set "$VETH" up || exit 1
for a in $ADDRESSES; do ip route replace "$a/32" dev "$VETH" || exit 1; done
"""


@dataclass
class Side:
    freeze_ms: list[float] = field(default_factory=list)
    restore_ms: list[float] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    # raw only: making the images durable (fsync), which ctfs's freeze includes.
    sync_ms: list[float] = field(default_factory=list)
    # with a client: the longest time between two of its acknowledged inserts.
    gap_ms: list[float] = field(default_factory=list)

    def row(self, label: str) -> str:
        gap = f" {statistics.median(self.gap_ms):>8.0f} ms" if self.gap_ms else ""
        if not self.freeze_ms:
            return f"  {label:<34} {'-':>10} {'-':>10} {'-':>10} {'-':>10}"
        freeze = statistics.median(self.freeze_ms)
        restore = statistics.median(self.restore_ms)
        size = statistics.median(self.size) / 1024 / 1024
        return (
            f"  {label:<34} {freeze:>8.0f} ms {restore:>7.0f} ms {freeze + restore:>7.0f} ms "
            f"{size:>7.1f} MiB{gap}"
        )


def ctfs_cycle(ct: Path, state_dir: Path, into: Side) -> None:
    """echo frozen, then echo running: their times and the dump file's size."""
    into.freeze_ms.append(write_state(ct, "frozen") * 1000)
    into.size.append((state_dir / ct.name / "dump").stat().st_size)
    into.restore_ms.append(write_state(ct, "running") * 1000)


@dataclass
class Mount:
    """One mount of the container, from /proc/PID/mountinfo."""

    point: str
    fstype: str
    options: str  # the superblock's


def mounts_of(pid: int) -> list[Mount]:
    found = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        before, after = line.split(" - ", 1)
        fstype, _, options = after.split(" ", 2)
        point = before.split()[4].replace("\\040", " ")
        found.append(Mount(point, fstype, options))
    return found


@dataclass
class External:
    """A mount criu is told about by hand: where it is inside, the key, the stand-in."""

    point: str
    key: str
    stand_in: Path
    hugetlbfs: bool = False


@dataclass
class RawPeer:
    """The peer container's tree, dumped and restored by criu alone.

    ``netns``: the network namespace ctfsd ran in (criu must run there: it makes
    the host end of the veth in its own); ``addresses``: the container's.
    """

    daemon: Ctfsd
    ctid: int
    work: Path
    netns: str | None = None
    addresses: tuple[str, ...] = ()
    pid: int = 0
    externals: list[External] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def images(self) -> Path:
        return self.work / "images"

    def take_over(self) -> None:
        """Note the tree's mounts, copy its views, then SIGKILL its ctfsd."""
        ct = self.daemon.mount / str(self.ctid)
        self.pid = int((ct / "procs").read_text().split()[0])
        self.work.mkdir(parents=True, exist_ok=True)
        for n, mount in enumerate(mounts_of(self.pid)):
            if mount.fstype.startswith("fuse"):
                stand_in = self.work / "views" / f"view{n}"
                self._copy_view(Path(f"/proc/{self.pid}/root{mount.point}"), stand_in)
                self.externals.append(External(mount.point, f"view{n}", stand_in))
            elif mount.fstype == "hugetlbfs":
                stand_in = self.work / "hugepages" / f"fs{n}"
                stand_in.mkdir(parents=True)
                must(["mount", "-t", "hugetlbfs", "-o", _sb_options(mount.options), "hugetlbfs",
                      str(stand_in)])  # fmt: skip
                self.externals.append(External(mount.point, f"hugetlbfs{n}", stand_in, True))
        views = [e.point for e in self.externals if not e.hugetlbfs]
        if views:
            self.notes.append(
                f"criu cannot dump ctfs's views, {len(views)} bind mounts of ctfs's FUSE "
                f"mount ({', '.join(views)}): it refuses FUSE (\"doesn't have a proper root "
                'mount"); they are --external at dump as in ctfs, and at restore copies '
                "stand in for them (the peer's mount has no ctfsd left to answer)"
            )
        huge = [e.point for e in self.externals if e.hugetlbfs]
        if huge:
            self.notes.append(
                f'criu 4.2 cannot dump hugetlbfs ({", ".join(huge)}: "unsupported id"); '
                "--external at dump, a fresh hugetlbfs bound in at restore"
            )
        if self.addresses:
            script = self.work / "action"
            script.write_text(ACTION)
            script.chmod(0o700)
        self.daemon.kill()

    @staticmethod
    def _copy_view(source: Path, stand_in: Path) -> None:
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            stand_in.mkdir()
        else:
            stand_in.write_bytes(source.read_bytes())

    def _criu(self, argv: list[str], env: dict[str, str] | None = None) -> float:
        wrapper = ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []
        command = [*wrapper, str(DEFAULT_BINARY), *argv]
        if env is None:
            return must(command, timeout=300)
        began = time.perf_counter()
        done = subprocess.run(command, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=300, check=False)  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"{' '.join(command)} exited with {done.returncode}: "
                             f"{self.log_reason('restore.log')}")  # fmt: skip
        return time.perf_counter() - began

    def log_reason(self, name: str) -> str:
        try:
            lines = (self.work / name).read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return " | ".join([line for line in lines if "Error" in line][-4:] or lines[-2:])

    def dump(self) -> tuple[float, int, float]:
        """criu dump; its time, the images' size and the time to fsync them."""
        shutil.rmtree(self.images, ignore_errors=True)
        self.images.mkdir(parents=True)
        argv = ["dump", "-t", str(self.pid), "-D", str(self.images), "--work-dir",
                str(self.work), "-o", "dump.log", "--freeze-cgroup",
                str(self.daemon.cgroup_dir("freezer", self.ctid)), *DUMP_OPTIONS]  # fmt: skip
        if self.addresses:
            argv += ["--external", f"veth[eth0]:ctfs{self.ctid}"]
        for ext in self.externals:
            argv += ["--external", f"mnt[{ext.point}]:{ext.key}"]
        try:
            dumped = self._criu(argv)
        except BenchError as exc:
            raise BenchError(f"{exc} | dump.log: {self.log_reason('dump.log')}") from exc
        size = sum(p.stat().st_size for p in self.images.iterdir())
        began = time.perf_counter()
        for path in self.images.iterdir():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return dumped, size, time.perf_counter() - began

    def restore(self) -> float:
        """criu restore -d onto the private area; its time.  The new init's PID is kept."""
        pidfile = self.work / "init.pid"
        pidfile.unlink(missing_ok=True)
        root = self.daemon.state / str(self.ctid) / "root"
        argv = ["restore", "-d", "-D", str(self.images), "--work-dir", str(self.work),
                "-o", "restore.log", "--pidfile", str(pidfile), "--root", str(root),
                *RESTORE_OPTIONS]  # fmt: skip
        for ext in self.externals:
            argv += ["--external", f"mnt[{ext.key}]:{ext.stand_in}"]
        env: dict[str, str] = {}
        if self.addresses:
            argv += ["--external", f"veth[eth0]:ctfs{self.ctid}",
                     "--action-script", str(self.work / "action")]  # fmt: skip
            env = {"VETH": f"ctfs{self.ctid}", "ADDRESSES": " ".join(self.addresses)}
        restored = self._criu(argv, env)
        self.pid = int(pidfile.read_text())
        return restored

    def cycle(self, into: Side) -> None:
        dumped, size, synced = self.dump()
        into.freeze_ms.append(dumped * 1000)
        into.size.append(size)
        into.sync_ms.append(synced * 1000)
        into.restore_ms.append(self.restore() * 1000)

    def close(self) -> None:
        """Unmount the hugetlbfs stand-ins (the container keeps its binds of them)."""
        for ext in self.externals:
            if ext.hugetlbfs:
                with contextlib.suppress(OSError):
                    run(["umount", "-l", str(ext.stand_in)], timeout=30)


def _sb_options(options: str) -> str:
    """hugetlbfs's own options (pagesize, size, mode...), without rw/ro."""
    kept = [o for o in options.split(",") if o not in ("rw", "ro")]
    return ",".join(kept) or "defaults"
