"""A container's views of itself: which files of ctfs it is shown, where, and the
readings they are rendered from (see ``ctfs.policy.procviews``).

Inside a running container, ``/ctfs/CTID`` is its own directory of ctfs, and the
files in ``BOUND`` lie over the kernel's /proc and /sys files of the same name.
Uptime is the container's own: ``UPTIME_CARRIED`` in ctid.conf holds the seconds
it ran before its current init (carried through checkpoints in the dump file),
and its init's age adds the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, cast

import trio

from ctfs.kernel.api import CpuTime, DiskIo, MemoryDetail, TaskStates
from ctfs.model.container import Container, State
from ctfs.policy import beancounters, procviews
from ctfs.policy.procviews import Reading
from ctfs.policy.scheduling import Scheduling

# Where a container finds its own directory of ctfs inside: HOME/CTID.
HOME = "/ctfs"
# (file of its ctfs directory, the file inside it lies over)
BOUND = (
    ("proc/meminfo", "/proc/meminfo"),
    ("proc/cpuinfo", "/proc/cpuinfo"),
    ("proc/stat", "/proc/stat"),
    ("proc/uptime", "/proc/uptime"),
    ("proc/loadavg", "/proc/loadavg"),
    ("proc/swaps", "/proc/swaps"),
    ("proc/diskstats", "/proc/diskstats"),
    ("sys/devices/system/cpu/online", "/sys/devices/system/cpu/online"),
)
UPTIME_KEY = "UPTIME_CARRIED"
T = TypeVar("T")
# A view reuses its container's memory and CPU readings for this long.  No truer
# figure can be had sooner: cpuacct.stat counts in 1/100 s ticks, and the
# kernel flushes memory cgroup statistics at most every 2 s unless asked
# (Linux 6.x).  Each reading costs a cgroup directory and a file or four
# (memory.stat is long): 20-60 µs of the 130-250 µs a read of a view cost here.
READING_TTL_S = 0.01
# Counting the state of every task costs a read of /proc/PID/stat each (10 µs);
# beyond this many it is done off the trio loop.
_TASKS_ON_LOOP = 64


def now() -> float:
    return time.time()


def own_dir(ct: Container) -> str:
    return f"{HOME}/{ct.ctid}"


def launch_views(ct: Container) -> list[list[str]] | None:
    """[host path, path inside] of every view, for the launcher; None without a mount."""
    mount = ct.ctx.mountpoint
    if mount is None:
        return None
    home = mount / str(ct.ctid)
    return [[str(home), own_dir(ct)], *([str(home / rel), inside] for rel, inside in BOUND)]


def restore_views(ct: Container) -> tuple[tuple[str, str], ...]:
    """(path inside, host path) of every view, for CRIU; none without a mount."""
    return tuple((inside, source) for source, inside in launch_views(ct) or [])


def carried_uptime(ct: Container) -> float:
    try:
        return max(0.0, float(ct.settings.get(UPTIME_KEY, "0")))
    except ValueError:
        return 0.0


def uptime(ct: Container) -> float:
    """Seconds the container has run, checkpoints included; 0 when it does not run."""
    init = ct.init
    if init is None or init.exited.is_set():
        return 0.0
    # An init's start never changes: read once (/proc/PID/stat, about 20 µs a read).
    known = ct.usage.init_started
    if known is not None and known[0] == init.pid:
        started: float | None = known[1]
    else:
        started = ct.backends.processes.started_at(init.pid)
        if started is not None:
            ct.usage.init_started = (init.pid, started)
    if started is None:
        return 0.0
    return carried_uptime(ct) + max(0.0, time.time() - started)


async def reading(
    ct: Container,
    memory: bool = False,
    tasks: bool = False,
    clock: bool = False,
    disk: bool = False,
) -> Reading:
    """What the views are rendered from; ``memory``, ``tasks`` and ``clock`` (uptime
    and CPU time) cost extra reads, so each view asks only for what it shows.

    Reads of cgroup files and /proc are answered from kernel memory (tens of µs), so
    they run on the trio loop: handing them to a thread would cost more.
    """
    cgroups, processes = ct.backends.cgroups, ct.backends.processes
    running = ct.state is State.RUNNING
    limits = beancounters.memory_limits(beancounters.limits_of(ct.settings)) if memory else None
    host_ram, host_swap = processes.host_memory() if memory else (0, 0)
    wanted = Scheduling.from_settings(ct.settings)
    cpu_set = wanted.cpu_set(ct.ctid, cgroups.available_cpus())
    states = TaskStates()
    pool_disk = ct.backends.storage.pool_disk() if disk else None
    if tasks and running:
        pids = ct.pids()
        if len(pids) > _TASKS_ON_LOOP:
            states = await trio.to_thread.run_sync(processes.task_states, pids)
        else:
            states = processes.task_states(pids)
        now = time.monotonic()
        # As the kernel's: tasks that run or wait to, and those blocked in it.
        active = states.running + states.blocked
        ct.usage.load = procviews.decay(ct.usage.load, active, now - ct.usage.load_at)
        ct.usage.load_at = now
    return Reading(
        memory=_recent(ct, "memory", cgroups.memory_detail)
        if memory and running
        else MemoryDetail(),
        ram_limit=limits.ram if limits is not None else None,
        swap_limit=limits.swap if limits is not None else None,
        host_ram=host_ram,
        host_swap=host_swap,
        cpus=procviews.visible_cpus(cpu_set, wanted.cpu_cap()),
        uptime=uptime(ct) if clock else 0.0,
        cpu=_recent(ct, "cpu", cgroups.cpu_time) if clock and running else CpuTime(),
        tasks=states,
        load=ct.usage.load,
        disk=pool_disk,
        io=cgroups.disk_io(ct.ctid, pool_disk) if pool_disk and running else DiskIo(),
    )


def _recent(ct: Container, kind: str, read: Callable[[int], T]) -> T:
    """``read(ct.ctid)``, or what it gave less than READING_TTL_S ago."""
    now = time.monotonic()
    last = ct.usage.readings.get(kind)
    if last is not None and now - last[0] < READING_TTL_S:
        return cast(T, last[1])
    value = read(ct.ctid)
    ct.usage.readings[kind] = (now, value)
    return value
