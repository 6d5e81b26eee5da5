"""Container cgroups: one Protocol, and the cgroup v1 implementation.

Every container gets a cgroup named after its CTID under one parent (``ctfs`` by
default) in every controller.  Families and the container model talk to the
``Cgroups`` Protocol only; nothing outside this module knows the hierarchy layout
or the cgroup version.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ctfs import kernel
from ctfs.kernel.security import ALLOWED_DEVICES

CGROUP_ROOT = Path(kernel.CGROUP_ROOT)

# The v1 controllers a container is placed in.  The named "systemd" hierarchy
# and cgroup2 are left alone: they belong to the host's init.
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")


@dataclass(frozen=True)
class MemoryLimits:
    """Memory limits in bytes; None is no limit."""

    ram: int | None = None  # hard limit on RAM in use
    ram_soft: int | None = None  # reclaimed down to this first under pressure
    ram_and_swap: int | None = None
    tcp_buffers: int | None = None


@dataclass(frozen=True)
class KernelCounters:
    """What the kernel counts for a container: bytes, tasks, refusals."""

    ram: int = 0
    ram_max: int = 0
    ram_failcnt: int = 0
    ram_and_swap: int = 0
    ram_and_swap_max: int = 0
    kmem: int = 0
    kmem_max: int = 0
    kmem_failcnt: int = 0
    tcp: int = 0
    tcp_max: int = 0
    tcp_failcnt: int = 0
    shmem: int = 0
    tasks: int = 0
    tasks_max: int = 0
    tasks_refused: int = 0


class Cgroups(Protocol):
    """What ctfs needs from a cgroup hierarchy, whatever its version."""

    parent: str  # the parent cgroup of every container, e.g. "ctfs"

    def create(self, ctid: int) -> None:
        """Create the container's cgroups (idempotent) with the devices baseline."""

    def remove(self, ctid: int) -> None:
        """Remove the container's cgroups; they must be empty."""

    def exists(self, ctid: int) -> bool: ...

    def pids(self, ctid: int) -> list[int]:
        """Host PIDs of every process in the container, unsorted."""

    def join_files(self, ctid: int) -> list[str]:
        """The files a single-threaded process writes ``0`` to, to move itself in."""

    def kill_all(self, ctid: int) -> None:
        """SIGKILL every process of the container, with no chance to fork away."""

    def freeze(self, ctid: int, timeout: float) -> None:
        """Stop every process of the container; TimeoutError if they are not all stopped."""

    def thaw(self, ctid: int) -> None:
        """Let the container's processes run again (a no-op if they were not frozen)."""

    def freezer_path(self, ctid: int) -> str:
        """The container's freezer cgroup, as CRIU's --freeze-cgroup takes it."""

    def restore_roots(self, ctid: int) -> list[str]:
        """CRIU --cgroup-root mappings that put restored processes in ``ctid``'s cgroups."""

    def populated(self) -> list[int]:
        """CTIDs whose cgroups exist under the parent (running or left over)."""

    def available_cpus(self) -> list[int]:
        """The CPUs containers may be given (the parent's cpuset)."""

    def set_cpu_weight(self, ctid: int, weight: int) -> None:
        """Relative CPU weight among containers, in the kernel's cpu.shares units."""

    def set_cpu_cap(self, ctid: int, quota_us: int | None, period_us: int) -> None:
        """At most ``quota_us`` of CPU time per ``period_us``; None lifts the cap."""

    def set_cpu_set(self, ctid: int, cpus: list[int]) -> None:
        """The CPUs the container's processes may run on."""

    def set_io_weight(self, ctid: int, weight: int) -> None:
        """Relative disk-bandwidth weight (BFQ, 1..1000)."""

    def set_memory_limits(self, ctid: int, limits: MemoryLimits) -> None:
        """Apply every memory limit at once (None lifts one)."""

    def set_task_limit(self, ctid: int, tasks: int | None) -> None:
        """At most ``tasks`` processes and threads; None lifts the limit."""

    def counters(self, ctid: int) -> KernelCounters:
        """Usage, peaks and refusal counts; zeros for a container with no cgroups."""


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
        for controller in self.controllers:
            self._ensure_dir(root / controller / parent, root / controller)

    def _dirs(self, ctid: int) -> list[Path]:
        return [self.root / c / self.parent / str(ctid) for c in self.controllers]

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
        for controller in self.controllers:
            self._ensure_dir(self._dir(controller, ctid), self.root / controller / self.parent)
        devices = self._dir("devices", ctid)
        _write(devices / "devices.deny", "a")
        for rule in ALLOWED_DEVICES:
            _write(devices / "devices.allow", rule)

    def exists(self, ctid: int) -> bool:
        return any(d.is_dir() for d in self._dirs(ctid))

    def remove(self, ctid: int) -> None:
        for path in self._dirs(ctid):
            remove_cgroup_dir(path)

    def pids(self, ctid: int) -> list[int]:
        try:
            text = (self._dir("pids", ctid) / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return [int(line) for line in text.split()]

    def join_files(self, ctid: int) -> list[str]:
        # Not cgroup.procs: moving a whole process takes the kernel's global
        # threadgroup lock and waits for an RCU grace period (10-20 ms here), while
        # a thread moving itself through "tasks" skips it (0.05 ms).  For a
        # single-threaded process the two are the same.
        return [str(d / "tasks") for d in self._dirs(ctid)]

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

    def freezer_path(self, ctid: int) -> str:
        return str(self._dir("freezer", ctid))

    def restore_roots(self, ctid: int) -> list[str]:
        # Per controller: a bare --cgroup-root would also move named hierarchies.
        return [f"{c}:/{self.parent}/{ctid}" for c in V1_CONTROLLERS]

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
        return parse_cpu_list((self.root / "cpuset" / self.parent / "cpuset.cpus").read_text())

    def set_cpu_weight(self, ctid: int, weight: int) -> None:
        _write(self._dir("cpu", ctid) / "cpu.shares", str(weight))

    def set_cpu_cap(self, ctid: int, quota_us: int | None, period_us: int) -> None:
        cpu = self._dir("cpu", ctid)
        # Lift the cap before changing the period, so no step is refused as too tight.
        _write(cpu / "cpu.cfs_quota_us", "-1")
        _write(cpu / "cpu.cfs_period_us", str(period_us))
        if quota_us is not None:
            _write(cpu / "cpu.cfs_quota_us", str(quota_us))

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
        if limits.ram_and_swap is not None and (memory / "memory.memsw.limit_in_bytes").exists():
            _write(memory / "memory.memsw.limit_in_bytes", str(limits.ram_and_swap))
        _write(memory / "memory.kmem.tcp.limit_in_bytes", _limit(limits.tcp_buffers))

    def set_task_limit(self, ctid: int, tasks: int | None) -> None:
        _write(self._dir("pids", ctid) / "pids.max", "max" if tasks is None else str(tasks))

    def counters(self, ctid: int) -> KernelCounters:
        memory, pids = self._dir("memory", ctid), self._dir("pids", ctid)

        def number(path: Path) -> int:
            try:
                return int(path.read_text().split()[0])
            except (FileNotFoundError, IndexError, ValueError):
                return 0

        def keyed(path: Path, key: str) -> int:
            try:
                for line in path.read_text().splitlines():
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
            except (FileNotFoundError, ValueError):
                pass
            return 0

        return KernelCounters(
            ram=number(memory / "memory.usage_in_bytes"),
            ram_max=number(memory / "memory.max_usage_in_bytes"),
            ram_failcnt=number(memory / "memory.failcnt"),
            ram_and_swap=number(memory / "memory.memsw.usage_in_bytes"),
            ram_and_swap_max=number(memory / "memory.memsw.max_usage_in_bytes"),
            kmem=number(memory / "memory.kmem.usage_in_bytes"),
            kmem_max=number(memory / "memory.kmem.max_usage_in_bytes"),
            kmem_failcnt=number(memory / "memory.kmem.failcnt"),
            tcp=number(memory / "memory.kmem.tcp.usage_in_bytes"),
            tcp_max=number(memory / "memory.kmem.tcp.max_usage_in_bytes"),
            tcp_failcnt=number(memory / "memory.kmem.tcp.failcnt"),
            shmem=keyed(memory / "memory.stat", "total_shmem"),
            tasks=number(pids / "pids.current"),
            tasks_max=number(pids / "pids.peak"),
            tasks_refused=keyed(pids / "pids.events", "max"),
        )

    def populated(self) -> list[int]:
        found: list[int] = []
        parent = self.root / "pids" / self.parent
        for entry in parent.iterdir():
            if entry.is_dir() and entry.name.isdigit():
                found.append(int(entry.name))
        return sorted(found)


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
