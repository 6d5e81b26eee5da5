"""The cgroup v2 (unified hierarchy) backend of ``ctfs.kernel.api.Cgroups``.

Every container gets ``<root>/<parent>/<ctid>``, with the cpuset, cpu, io,
memory and pids controllers enabled for it.  Its processes may live in that
cgroup itself (busybox) or in cgroups its init makes below it (systemd moves
itself to init.scope before it enables controllers there: v2 allows processes
only in leaves of the controlled tree).  The limits are the host's, at the top;
the subtree is delegated to the container's root as cgroup-v2.rst's
"Delegation" describes.  Device access is filtered by a BPF program
(``ctfs.kernel.device_filter``), since v2 has no devices controller.

The units are the Protocol's: CPU weight as a fraction of the largest (cpu.weight
1..10000), BFQ's I/O weight (io.bfq.weight, else io.weight scaled), bytes, tasks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ctfs import kernel
from ctfs.kernel import cgroup_files, device_filter, libc, v2_counters
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
from ctfs.kernel.cgroup_v1 import (
    CPUS_TTL_S,
    make_own_cgroups,
    own_cgroup_names,
    own_cgroup_paths,
    parse_cpu_list,
    remove_cgroup_dir,
)
from ctfs.policy.security import ALLOWED_DEVICES

CGROUP_ROOT = Path(kernel.CGROUP_ROOT)
CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")
# Files of the container's top cgroup that its root gets (cgroup-v2.rst,
# "Delegation Containment"): the rest, every limit among them, stay the host's.
DELEGATED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
# cpu.weight is 1..10000: a weight of 1 (the largest) is the kernel's maximum.
WEIGHT_MAX = 10_000
# How a dump from a cgroup v1 host names the unified hierarchy's cgroups.
UNIFIED = "unified"
# CRIU's --cgroup-yard holds one directory per hierarchy, cgroup2 as "unified"; one
# that is missing it makes (mkdir in our cgroupfs) and mounts there, and never
# unmounts.  The v2 yard is a directory whose "unified" is the root, bound there.
YARD_DIR = Path("/run/ctfs/criu-cgroup-yard")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class CgroupsV2:
    """cgroup v2: one directory per container, ``<root>/<parent>/<ctid>``."""

    def __init__(
        self, parent: str = "ctfs", root: Path = CGROUP_ROOT, yard: Path = YARD_DIR
    ) -> None:
        if not (root / "cgroup.controllers").exists():
            raise RuntimeError(f"no cgroup2 hierarchy at {root}")
        available = set((root / "cgroup.controllers").read_text().split())
        missing = set(CONTROLLERS) - available
        if missing:
            raise RuntimeError(f"cgroup2 controllers missing: {', '.join(sorted(missing))}")
        self.parent = parent
        self.root = root
        self.yard = yard
        self.top = root / parent
        self._cpus: tuple[float, list[int]] = (-CPUS_TTL_S, [])
        swap = (root / "init.scope" / "memory.swap.max").exists() or _has_swap_files(root)
        # v2 counts TCP buffers with the rest of the memory and limits them with it.
        self.enforces = (
            frozenset(Enforceable)
            - {Enforceable.TCP_BUFFERS}
            - (set() if swap else {Enforceable.SWAP})
        )
        _enable(root, CONTROLLERS)
        self.top.mkdir(exist_ok=True)
        _enable(self.top, CONTROLLERS)

    def _dir(self, ctid: int) -> Path:
        return self.top / str(ctid)

    def create(self, ctid: int) -> None:
        path = self._dir(ctid)
        path.mkdir(exist_ok=True)
        device_filter.attach(path, ALLOWED_DEVICES)

    def remove(self, ctid: int) -> None:
        top = self._dir(ctid)
        for directory, _, _ in os.walk(top, topdown=False):
            remove_cgroup_dir(Path(directory))

    def delegate(self, ctid: int, uid: int) -> None:
        top = self._dir(ctid)
        for path in (top, *(top / name for name in DELEGATED_FILES)):
            os.chown(path, uid, uid, follow_symlinks=False)

    def pids(self, ctid: int) -> list[int]:
        return cgroup_files.procs(str(self._dir(ctid)))

    def join_files(self, ctid: int) -> list[str]:
        return []  # a process is born into its cgroup (birth_cgroup), never moved

    def birth_cgroup(self, ctid: int) -> str | None:
        return str(self._dir(ctid))

    def freeze(self, ctid: int, timeout: float) -> None:
        top = self._dir(ctid)
        _write(top / "cgroup.freeze", "1")
        deadline = time.monotonic() + timeout
        while not _frozen(top):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all processes stopped within {timeout:g} s")
            time.sleep(0.001)

    def thaw(self, ctid: int) -> None:
        _write(self._dir(ctid) / "cgroup.freeze", "0")

    def kill_all(self, ctid: int) -> None:
        # cgroup.kill ends the whole subtree at once, forks under way included.
        top = self._dir(ctid)
        if top.exists():
            _write(top / "cgroup.kill", "1")

    def criu_options(self, ctid: int) -> CriuCgroups:
        make_yard(self.yard, self.root)
        return CriuCgroups(
            freeze_cgroup=str(self._dir(ctid)),
            yard=str(self.yard),
            roots=(f"/{self.parent}/{ctid}",),
        )

    def own_cgroups(self, ctid: int) -> list[str]:
        return own_cgroup_names({UNIFIED: self._dir(ctid)})

    def own_controllers(self, ctid: int) -> dict[str, list[str]]:
        top = self._dir(ctid)
        found = {}
        for name in (UNIFIED, *self.own_cgroups(ctid)):
            below = name.partition("/")[2]
            with contextlib.suppress(FileNotFoundError):
                enabled = (top / below / "cgroup.subtree_control").read_text().split()
                if enabled:
                    found[name] = enabled
        return found

    def make_own_cgroups(
        self,
        ctid: int,
        names: Sequence[str],
        uid: int | None,
        controllers: Mapping[str, Sequence[str]],
    ) -> SubtreeControls:
        top = self._dir(ctid)
        paths = own_cgroup_paths(names, {UNIFIED: top})
        known = {UNIFIED: top}
        for name, enabled in controllers.items():
            if (name != UNIFIED and name not in names) or not set(enabled) <= set(CONTROLLERS):
                raise ValueError(f"not controllers of the container's own: {name!r}")
            if name != UNIFIED:
                known[name] = own_cgroup_paths([name], {UNIFIED: top})[0]
        make_own_cgroups(paths, uid, lambda path, _: path.mkdir())
        # Parents first: a controller is enabled below only where it is above.
        ordered = sorted(controllers, key=lambda n: len(known[n].parts))
        return tuple((str(known[name]), tuple(controllers[name])) for name in ordered)

    def container_of(self, pid: int) -> int | None:
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
            if line.startswith(b"0::"):
                parts = line[3:].strip(b"/").split(b"/")
                if len(parts) >= 2 and parts[0] == parent and parts[1].isdigit():
                    return int(parts[1])
        return None

    def populated(self) -> list[int]:
        return sorted(int(e.name) for e in self.top.iterdir() if e.is_dir() and e.name.isdigit())

    def available_cpus(self) -> list[int]:
        now = time.monotonic()
        if now - self._cpus[0] > CPUS_TTL_S:
            text = (self.top / "cpuset.cpus.effective").read_text()
            self._cpus = now, parse_cpu_list(text)
        return list(self._cpus[1])

    def set_cpu_weight(self, ctid: int, weight: float) -> None:
        _write(self._dir(ctid) / "cpu.weight", str(cpu_weight(weight)))

    def set_cpu_cap(self, ctid: int, cap: CpuCap) -> None:
        quota = "max" if cap.quota_us is None else str(cap.quota_us)
        _write(self._dir(ctid) / "cpu.max", f"{quota} {cap.period_us}")

    def set_cpu_set(self, ctid: int, cpus: list[int]) -> None:
        _write(self._dir(ctid) / "cpuset.cpus", ",".join(str(c) for c in sorted(cpus)))

    def set_io_weight(self, ctid: int, weight: int) -> None:
        top = self._dir(ctid)
        if (top / "io.bfq.weight").exists():
            _write(top / "io.bfq.weight", str(weight))
        else:  # io.weight is 1..10000, BFQ's scale 1..1000
            _write(top / "io.weight", f"default {weight * 10}")

    def set_memory_limits(self, ctid: int, limits: MemoryLimits) -> None:
        top = self._dir(ctid)
        if limits.ram is not None:
            _reclaim_to(top, limits.ram)
        _write(top / "memory.max", _limit(limits.ram))
        _write(top / "memory.high", _limit(limits.ram_soft))
        if Enforceable.SWAP in self.enforces:
            # v2 limits swap apart from RAM.
            _write(top / "memory.swap.max", _limit(limits.swap))

    def set_task_limit(self, ctid: int, tasks: int | None) -> None:
        _write(self._dir(ctid) / "pids.max", _limit(tasks))

    def memory_detail(self, ctid: int) -> MemoryDetail:
        return v2_counters.memory_detail(str(self._dir(ctid)))

    def disk_io(self, ctid: int, disk: Disk) -> DiskIo:
        return v2_counters.disk_io(str(self._dir(ctid)), disk)

    def cpu_time(self, ctid: int) -> CpuTime:
        return v2_counters.cpu_time(str(self._dir(ctid)))

    def counters(self, ctid: int, wanted: frozenset[Counted] = EVERYTHING) -> KernelCounters:
        return v2_counters.read(str(self._dir(ctid)), wanted)


def cpu_weight(weight: float) -> int:
    """cpu.weight for a version-neutral CPU weight (a fraction of the largest)."""
    return max(1, min(WEIGHT_MAX, round(weight * WEIGHT_MAX)))


def _reclaim_to(cgroup: Path, limit: int) -> None:
    """Bring the cgroup's memory down to ``limit`` first, or refuse (EBUSY).

    v1 refuses a RAM limit it cannot reclaim down to (EBUSY); v2 takes any
    memory.max and then OOM-kills inside.  The same setting must mean the same on
    both, and a refused one must change nothing: so reclaim first (memory.reclaim)
    and write memory.max only if the usage fits.
    """
    with cgroup_files.directory(str(cgroup)) as fd:
        used = cgroup_files.number("memory.current", fd)
    if used <= limit:
        return
    with contextlib.suppress(OSError):  # EAGAIN: it could not reclaim all of it
        _write(cgroup / "memory.reclaim", str(used - limit))
    with cgroup_files.directory(str(cgroup)) as fd:
        used = cgroup_files.number("memory.current", fd)
    if used > limit:
        raise OSError(errno.EBUSY, f"{used} bytes in use cannot be reclaimed below {limit}")


def make_yard(yard: Path, root: Path) -> None:
    """``yard``/unified is a bind mount of ``root``; ``yard`` is ours alone.

    Not a link: CRIU moves a restored task into its cgroup from inside the
    container's root, where an absolute link would name the container's own
    /sys/fs/cgroup.  Made once; the mount stays for the next restore.
    """
    yard.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(yard)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise OSError(errno.EPERM, f"{yard} is not a directory of ctfsd's alone")
    unified = yard / UNIFIED
    if unified.is_symlink():
        unified.unlink()
    unified.mkdir(mode=0o700, exist_ok=True)
    if not os.path.ismount(unified):
        libc.mount(str(root), str(unified), None, libc.MS_BIND, None)


def _limit(value: int | None) -> str:
    return "max" if value is None else str(value)


def _enable(cgroup: Path, controllers: Sequence[str]) -> None:
    """Enable ``controllers`` for the children of ``cgroup`` (idempotent)."""
    enabled = set((cgroup / "cgroup.subtree_control").read_text().split())
    wanted = [c for c in controllers if c not in enabled]
    if wanted:
        _write(cgroup / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))


def _has_swap_files(root: Path) -> bool:
    return any(p.name == "memory.swap.max" for p in root.glob("*/memory.swap.max"))


def _frozen(cgroup: Path) -> bool:
    with cgroup_files.directory(str(cgroup)) as fd:
        return cgroup_files.keyed("cgroup.events", fd, b"frozen") == 1
