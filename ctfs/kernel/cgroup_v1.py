"""The cgroup v1 backend of ``ctfs.kernel.api.Cgroups``.

Every container gets a cgroup named after its CTID under one parent (``ctfs`` by
default) in every controller.  The model talks to the Protocol only; nothing
outside this module knows the v1 hierarchy layout or its units.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ctfs import kernel
from ctfs.kernel import cgroup_files, v1_counters
from ctfs.kernel.api import (
    EVERYTHING,
    Counted,
    CpuCap,
    CpuTime,
    CriuCgroups,
    Disk,
    DiskIo,
    Enforceable,
    KernelCounters,
    MemoryDetail,
    MemoryLimits,
    SubtreeControls,
)
from ctfs.policy.security import ALLOWED_DEVICES

CGROUP_ROOT = Path(kernel.CGROUP_ROOT)
# How long the list of CPUs for containers is kept (see available_cpus).
CPUS_TTL_S = 1.0

# The v1 controllers a container is placed in.  The named "systemd" hierarchy
# and cgroup2 are left alone: they belong to the host's init.
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")
# Hierarchies without controllers that the host's init uses: the container gets a
# cgroup of its own there too, so that a systemd inside (whose cgroup namespace is
# rooted there) manages its own units under it, never at the host's root.
NAMED_HIERARCHIES = ("systemd", "unified")
# What a container's root may write at the top of its own cgroups: making and
# removing cgroups below (the directory), and moving its processes between them.
# Every limit file stays the host root's.
DELEGATED_FILES = (
    "cgroup.procs",
    "tasks",
    "cgroup.clone_children",
    "notify_on_release",
    "cgroup.subtree_control",
    "cgroup.threads",
)
# Bounds on the cgroups a dump file may ask to be made for a container: a dump
# is input.  systemd makes a few dozen; the kernel's own default max.depth is
# unlimited, so these are ours.
OWN_CGROUPS_MAX = 4096
OWN_CGROUPS_DEPTH = 32
# cpu.shares is 2..262144: a weight of 1 (the largest) is the kernel's maximum.
SHARES_MAX = 262_144


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class CgroupsV1:
    """cgroup v1: one directory per controller, ``<mount>/<parent>/<ctid>``."""

    def __init__(self, parent: str = "ctfs", root: Path = CGROUP_ROOT) -> None:
        self.parent = parent
        self.controllers = [c for c in V1_CONTROLLERS if (root / c / "cgroup.procs").exists()]
        missing = set(V1_CONTROLLERS) - set(self.controllers)
        if missing:
            raise RuntimeError(
                f"cgroup v1 controllers not mounted under {root}: {', '.join(sorted(missing))}"
            )
        self.root = root
        # The CPUs for containers, and when (monotonic seconds) they were read.
        self._cpus: tuple[float, list[int]] = (-CPUS_TTL_S, [])
        memsw = (root / "memory" / "memory.memsw.limit_in_bytes").exists()
        self.enforces = frozenset(Enforceable) - (set() if memsw else {Enforceable.SWAP})
        self.hierarchies = self.controllers + [
            name for name in NAMED_HIERARCHIES if (root / name / "cgroup.procs").exists()
        ]
        for hierarchy in self.hierarchies:
            self._ensure_dir(root / hierarchy / parent, root / hierarchy)

    def _dirs(self, ctid: int) -> list[Path]:
        """The container's top cgroup in every hierarchy."""
        return [self.root / h / self.parent / str(ctid) for h in self.hierarchies]

    def _subtree(self, top: Path) -> list[Path]:
        """``top`` and every cgroup below it, deepest first."""
        found: list[Path] = []
        for directory, subdirs, _ in os.walk(top, topdown=False):
            found.extend(Path(directory) / name for name in subdirs)
        if top.is_dir():
            found.append(top)
        return found

    def _dir(self, controller: str, ctid: int) -> Path:
        return self.root / controller / self.parent / str(ctid)

    @staticmethod
    def _ensure_dir(path: Path, parent: Path) -> None:
        if path.is_dir():
            return
        path.mkdir()
        if (path / "cpuset.cpus").exists():
            # cpuset children start empty; a task cannot join until both are set.
            for name in ("cpuset.cpus", "cpuset.mems"):
                _write(path / name, (parent / name).read_text().strip() or "\n")

    def create(self, ctid: int) -> None:
        for hierarchy in self.hierarchies:
            self._ensure_dir(self._dir(hierarchy, ctid), self.root / hierarchy / self.parent)
        devices = self._dir("devices", ctid)
        _write(devices / "devices.deny", "a")
        for rule in ALLOWED_DEVICES:
            _write(devices / "devices.allow", rule)

    def delegate(self, ctid: int, uid: int) -> None:
        for top in self._dirs(ctid):
            for path in (top, *(top / name for name in DELEGATED_FILES)):
                if os.path.lexists(path):
                    os.chown(path, uid, uid, follow_symlinks=False)

    def remove(self, ctid: int) -> None:
        """Remove the container's cgroups, the ones made below them inside included."""
        for top in self._dirs(ctid):
            for path in self._subtree(top):
                remove_cgroup_dir(path)

    def pids(self, ctid: int) -> list[int]:
        """Every process in the container's cgroup or in any cgroup below it."""
        return cgroup_files.procs(f"{self.root}/pids/{self.parent}/{ctid}")

    def join_files(self, ctid: int) -> list[str]:
        # Not cgroup.procs: moving a whole process takes the kernel's global
        # threadgroup lock and waits for an RCU grace period (10-20 ms here), while
        # a thread moving itself through "tasks" skips it (0.05 ms).  For a
        # single-threaded process the two are the same.
        # The unified hierarchy has no tasks file: a process is born there instead.
        return [str(d / "tasks") for d in self._dirs(ctid) if (d / "tasks").exists()]

    def birth_cgroup(self, ctid: int) -> str | None:
        if "unified" not in self.hierarchies:
            return None
        return str(self._dir("unified", ctid))

    def freeze(self, ctid: int, timeout: float) -> None:
        state = self._dir("freezer", ctid) / "freezer.state"
        _write(state, "FROZEN")
        deadline = time.monotonic() + timeout
        while state.read_text().strip() != "FROZEN":
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all processes stopped within {timeout:g} s")
            time.sleep(0.001)

    def thaw(self, ctid: int) -> None:
        _write(self._dir("freezer", ctid) / "freezer.state", "THAWED")

    def criu_options(self, ctid: int) -> CriuCgroups:
        return CriuCgroups(
            freeze_cgroup=str(self._dir("freezer", ctid)),
            yard=str(self.root),
            # Per hierarchy: the named ones too (CRIU's names: "name=systemd", and
            # "" for a hybrid host's cgroup2), or a container restored under
            # another CTID or cgroup parent (a migration) lands in the old paths there.
            roots=tuple(f"{_criu_name(h)}:/{self.parent}/{ctid}" for h in self.hierarchies),
        )

    def own_cgroups(self, ctid: int) -> list[str]:
        return own_cgroup_names({h: self._dir(h, ctid) for h in self.hierarchies})

    def own_controllers(self, ctid: int) -> dict[str, list[str]]:
        return {}  # v1 hierarchies have none; a hybrid host's cgroup2 holds no controller

    def make_own_cgroups(
        self,
        ctid: int,
        names: Sequence[str],
        uid: int | None,
        controllers: Mapping[str, Sequence[str]],
    ) -> SubtreeControls:
        if controllers:
            raise ValueError("controllers of its own cgroups: a dump of a cgroup v2 host")
        tops = {h: self._dir(h, ctid) for h in self.hierarchies}
        make_own_cgroups(own_cgroup_paths(names, tops), uid, self._ensure_dir)
        return ()

    def container_of(self, pid: int) -> int | None:
        # Asked on every request from inside a container: bytes from os.read rather
        # than a text file, 11.7 µs against 15.8 here (the kernel writing the file
        # is the rest).
        try:
            fd = os.open(f"/proc/{pid}/cgroup", os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, 1 << 16)
            finally:
                os.close(fd)
        except OSError:
            return None
        parent = self.parent.encode()
        for line in data.splitlines():
            _, controllers, path = line.split(b":", 2)
            if b"pids" in controllers.split(b","):
                parts = path.strip(b"/").split(b"/")
                if len(parts) >= 2 and parts[0] == parent and parts[1].isdigit():
                    return int(parts[1])
        return None

    def kill_all(self, ctid: int) -> None:
        # Freeze first so nothing can fork between listing and killing.
        freezer = self._dir("freezer", ctid)
        _write(freezer / "freezer.state", "FROZEN")
        try:
            deadline = time.monotonic() + 5
            while (freezer / "freezer.state").read_text().strip() != "FROZEN":
                if time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            _signal_all(self.pids(ctid), signal.SIGKILL)
        finally:
            _write(freezer / "freezer.state", "THAWED")

    def available_cpus(self) -> list[int]:
        # They change only with the host's cpuset, and reading them was 5 % of
        # ctfsd's time when a container read its /proc/uptime in a loop (py-spy).
        now = time.monotonic()
        if now - self._cpus[0] > CPUS_TTL_S:
            path = self.root / "cpuset" / self.parent / "cpuset.cpus"
            self._cpus = now, parse_cpu_list(path.read_text())
        return list(self._cpus[1])

    def set_cpu_weight(self, ctid: int, weight: float) -> None:
        _write(self._dir("cpu", ctid) / "cpu.shares", str(cpu_shares(weight)))

    def set_cpu_cap(self, ctid: int, cap: CpuCap) -> None:
        cpu = self._dir("cpu", ctid)
        # Lift the cap before changing the period, so no step is refused as too tight.
        _write(cpu / "cpu.cfs_quota_us", "-1")
        _write(cpu / "cpu.cfs_period_us", str(cap.period_us))
        if cap.quota_us is not None:
            _write(cpu / "cpu.cfs_quota_us", str(cap.quota_us))

    def set_cpu_set(self, ctid: int, cpus: list[int]) -> None:
        _write(self._dir("cpuset", ctid) / "cpuset.cpus", _format_cpus(cpus))

    def set_io_weight(self, ctid: int, weight: int) -> None:
        _write(self._dir("blkio", ctid) / "blkio.bfq.weight", str(weight))

    def set_memory_limits(self, ctid: int, limits: MemoryLimits) -> None:
        memory = self._dir("memory", ctid)
        # memsw may never be below the RAM limit: lift it first, set RAM, then memsw.
        if (memory / "memory.memsw.limit_in_bytes").exists():
            _write(memory / "memory.memsw.limit_in_bytes", "-1")
        _write(memory / "memory.limit_in_bytes", _limit(limits.ram))
        _write(memory / "memory.soft_limit_in_bytes", _limit(limits.ram_soft))
        if limits.ram is not None and limits.swap is not None and Enforceable.SWAP in self.enforces:
            # v1 limits RAM and swap together.
            _write(memory / "memory.memsw.limit_in_bytes", str(limits.ram + limits.swap))
        _write(memory / "memory.kmem.tcp.limit_in_bytes", _limit(limits.tcp_buffers))

    def set_task_limit(self, ctid: int, tasks: int | None) -> None:
        _write(self._dir("pids", ctid) / "pids.max", "max" if tasks is None else str(tasks))

    def memory_detail(self, ctid: int) -> MemoryDetail:
        return v1_counters.memory_detail(str(self.root), f"{self.parent}/{ctid}")

    def disk_io(self, ctid: int, disk: Disk) -> DiskIo:
        return v1_counters.disk_io(str(self.root), f"{self.parent}/{ctid}", disk)

    def cpu_time(self, ctid: int) -> CpuTime:
        return v1_counters.cpu_time(str(self.root), f"{self.parent}/{ctid}")

    def counters(self, ctid: int, wanted: frozenset[Counted] = EVERYTHING) -> KernelCounters:
        return v1_counters.read(str(self.root), f"{self.parent}/{ctid}", wanted)

    def populated(self) -> list[int]:
        found: list[int] = []
        parent = self.root / "pids" / self.parent
        for entry in parent.iterdir():
            if entry.is_dir() and entry.name.isdigit():
                found.append(int(entry.name))
        return sorted(found)


def own_cgroup_names(tops: dict[str, Path]) -> list[str]:
    """Every cgroup below the container's ``tops`` (by hierarchy), parents first,
    as "HIERARCHY/a/b": the names ``own_cgroup_paths`` reads back."""
    names: list[str] = []
    for hierarchy, top in tops.items():
        for directory, subdirs, _ in os.walk(top):
            subdirs.sort()
            below = Path(directory).relative_to(top)
            names.extend(f"{hierarchy}/{below / name}" for name in subdirs)
    return names


def own_cgroup_paths(names: Sequence[str], tops: dict[str, Path]) -> list[Path]:
    """Where the cgroups ``names`` ("HIERARCHY/a/b") go below the container's
    ``tops``, parents first; ValueError, before anything is made, for a name that
    could leave them (a dump file is input)."""
    if len(names) > OWN_CGROUPS_MAX:
        raise ValueError(f"{len(names)} cgroups of its own; at most {OWN_CGROUPS_MAX}")
    paths = []
    for name in names:
        hierarchy, _, below = name.partition("/")
        parts = below.split("/")
        if (
            hierarchy not in tops
            or any(part in ("", ".", "..") or "\0" in part for part in parts)
            or len(parts) > OWN_CGROUPS_DEPTH
        ):
            raise ValueError(f"not a cgroup of the container's own: {name!r}")
        paths.append(tops[hierarchy].joinpath(*parts))
    return sorted(paths, key=lambda p: len(p.parts))


def make_own_cgroups(
    paths: Sequence[Path], uid: int | None, make: Callable[[Path, Path], None]
) -> None:
    """Make the missing ones of ``paths`` (parents first) with ``make(path, parent)``,
    owned by ``uid`` as the kernel makes them for a delegatee: the directory and
    every file in it."""
    for path in paths:
        if path.is_dir():
            continue
        make(path, path.parent)
        if uid is not None:
            for entry in (path, *path.iterdir()):
                os.chown(entry, uid, uid, follow_symlinks=False)


def cpu_shares(weight: float) -> int:
    """cpu.shares for a version-neutral CPU weight (a fraction of the largest)."""
    return max(2, round(weight * SHARES_MAX))


def _criu_name(hierarchy: str) -> str:
    """How CRIU names a hierarchy in --cgroup-root (criu/cgroup.c, cgroup_contains)."""
    return {"systemd": "name=systemd", "unified": ""}.get(hierarchy, hierarchy)


def remove_cgroup_dir(path: Path, wait_s: float = 2.0) -> None:
    """rmdir an empty cgroup, waiting out EBUSY; a missing one is already gone.

    A task that has just exited can keep a v1 cgroup busy for a moment.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _limit(value: int | None) -> str:
    return "-1" if value is None else str(value)


def _format_cpus(cpus: list[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def parse_cpu_list(text: str) -> list[int]:
    """``0-3,5`` as the kernel writes cpu lists, to ``[0, 1, 2, 3, 5]``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
