"""Facts from the host's /proc that the views of a container are computed from.

Standard library only; every reader tolerates a process that is gone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from ctfs.kernel.api import TaskStates

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(b")") + 2 :].decode().split()


def task_states(pids: Iterable[int]) -> TaskStates:
    running = blocked = total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        total += 1
        running += fields[0] == "R"
        blocked += fields[0] == "D"
    return TaskStates(running=running, blocked=blocked, total=total)


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


BOOT_TIME = _boot_time()


def started_at(pid: int) -> float | None:
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # Field 22 of stat, the 20th after the name: start time in ticks since boot.
    return BOOT_TIME + int(fields[19]) / _TICKS


# The host's RAM and swap, and when they were read (monotonic seconds).
_MEMORY: tuple[float, tuple[int, int]] | None = None
# RAM changes only by hotplug and swap by swapon/swapoff: reading /proc/meminfo for
# every view a container reads cost 25 µs each time (of about 400 µs per read).
_MEMORY_TTL_S = 10.0


def host_memory() -> tuple[int, int]:
    global _MEMORY
    now = time.monotonic()
    if _MEMORY is None or now - _MEMORY[0] > _MEMORY_TTL_S:
        found = {"MemTotal": 0, "SwapTotal": 0}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in found:
                    found[key] = int(rest.split()[0]) * 1024
        _MEMORY = now, (found["MemTotal"], found["SwapTotal"])
    return _MEMORY[1]


_CPUINFO: str | None = None


def cpuinfo() -> str:
    """The host's /proc/cpuinfo, read once: it does not change while ctfsd runs
    (CPU hotplug aside, which containers are not told of either)."""
    global _CPUINFO
    if _CPUINFO is None:
        with open("/proc/cpuinfo") as f:
            _CPUINFO = f.read()
    return _CPUINFO


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def under(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is an ancestor of ``pid`` now (its parent's parent...)."""
    seen = 0
    parent = parent_of(pid)
    while parent is not None and parent > 1 and seen < 64:
        if parent == ancestor:
            return True
        parent, seen = parent_of(parent), seen + 1
    return parent == ancestor
