"""Beancounters of one container: limits to the kernel, counters from it and from /proc.

On this host (cgroup v1) the kernel enforces numproc (pids.max), physpages
(memory.limit_in_bytes; its barrier is the soft limit), swappages (memsw, RAM +
swap) and tcpsndbuf+tcprcvbuf together (kmem.tcp).  Every other resource is
accounted: ctfs counts it, keeps its maxheld and records in ``events`` when it
crosses its barrier or limit, but nothing refuses an allocation, so its failcnt
stays 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ctfs import ubc
from ctfs.kernel.accounting import ProcessCounts
from ctfs.kernel.cgroups import Cgroups, KernelCounters, MemoryLimits
from ctfs.sizes import PAGE_BYTES, UNLIMITED

ENFORCED = frozenset({"numproc", "physpages", "swappages", "tcpsndbuf", "tcprcvbuf"})


def _finite(value: int) -> int | None:
    return None if value >= UNLIMITED else value


def memory_limits(limits: Mapping[str, tuple[int, int]]) -> MemoryLimits:
    phys_barrier, phys_limit = limits["physpages"]
    ram = _finite(phys_limit)
    ram = ram * PAGE_BYTES if ram is not None else None
    soft = _finite(phys_barrier)
    swap = _finite(limits["swappages"][1])
    snd, rcv = _finite(limits["tcpsndbuf"][1]), _finite(limits["tcprcvbuf"][1])
    return MemoryLimits(
        ram=ram,
        # A barrier of 0 is OpenVZ's "no guarantee", not "reclaim to nothing".
        ram_soft=soft * PAGE_BYTES if soft else None,
        ram_and_swap=ram + swap * PAGE_BYTES if ram is not None and swap is not None else None,
        tcp_buffers=snd + rcv if snd is not None and rcv is not None else None,
    )


def apply(cgroups: Cgroups, ctid: int, settings: Mapping[str, str]) -> None:
    """Hand every kernel-enforced limit in ``settings`` to the container's cgroups."""
    limits = ubc.limits_of(settings)
    cgroups.set_memory_limits(ctid, memory_limits(limits))
    cgroups.set_task_limit(ctid, _finite(limits["numproc"][1]))


def held_now(kernel: KernelCounters, procs: ProcessCounts) -> dict[str, tuple[int, int, int]]:
    """(held, kernel's maxheld or 0, failcnt) per resource, in the resource's unit."""
    pages = PAGE_BYTES
    private = procs.private_pages
    return {
        "kmemsize": (kernel.kmem, kernel.kmem_max, 0),
        "lockedpages": (procs.locked_pages, 0, 0),
        "privvmpages": (private, 0, 0),
        "shmpages": (kernel.shmem // pages, 0, 0),
        "numproc": (kernel.tasks, kernel.tasks_max, kernel.tasks_refused),
        "physpages": (kernel.ram // pages, kernel.ram_max // pages, kernel.ram_failcnt),
        "vmguarpages": (private, 0, 0),
        "oomguarpages": (max(kernel.ram_and_swap, kernel.ram) // pages, 0, 0),
        "numtcpsock": (procs.tcp_sockets, 0, 0),
        "numflock": (procs.file_locks, 0, 0),
        "numpty": (procs.ptys, 0, 0),
        "numsiginfo": (procs.pending_signals, 0, 0),
        # The kernel charges TCP send and receive buffers together: all of it shows
        # here, and the limit it enforces is tcpsndbuf's plus tcprcvbuf's.
        "tcpsndbuf": (kernel.tcp, kernel.tcp_max, kernel.tcp_failcnt),
        "tcprcvbuf": (0, 0, 0),
        "othersockbuf": (procs.udp_send_bytes, 0, 0),
        "dgramrcvbuf": (procs.udp_receive_bytes, 0, 0),
        "numothersock": (max(0, procs.sockets - procs.tcp_sockets), 0, 0),
        "dcachesize": (0, 0, 0),
        "numfile": (procs.files, 0, 0),
        "numiptent": (procs.firewall_rules, 0, 0),
        "swappages": (max(0, kernel.ram_and_swap - kernel.ram) // pages, 0, 0),
    }


@dataclass
class Tracker:
    """maxheld since the container started, and which thresholds are crossed now.

    ``record`` is how crossings reach the container's events.
    """

    record: Callable[[str, int], None]
    maxheld: dict[str, int] = field(default_factory=dict)
    crossed: dict[str, str] = field(default_factory=dict)

    def reset(self) -> None:
        self.maxheld.clear()
        self.crossed.clear()

    def update(
        self, now: Mapping[str, tuple[int, int, int]], limits: Mapping[str, tuple[int, int]]
    ) -> dict[str, ubc.Counter]:
        counters: dict[str, ubc.Counter] = {}
        for name, (held, kernel_max, failcnt) in now.items():
            maxheld = max(self.maxheld.get(name, 0), held, kernel_max)
            self.maxheld[name] = maxheld
            barrier, limit = limits[name]
            self._watch(name, held, barrier, limit)
            counters[name] = ubc.Counter(held, maxheld, barrier, limit, failcnt)
        return counters

    def _watch(self, name: str, held: int, barrier: int, limit: int) -> None:
        # A barrier of 0 is OpenVZ's "no guarantee" (physpages 0:...), not a threshold.
        level = "limit" if held > limit else "barrier" if 0 < barrier < held else ""
        if level == self.crossed.get(name, ""):
            return
        if level:
            self.crossed[name] = level
            bound = limit if level == "limit" else barrier
            how = "enforced by the kernel" if name in ENFORCED else "accounted only"
            self.record(
                f"{name}: held {held} is above its {level} {bound} ({how})", logging.WARNING
            )
        else:
            self.crossed.pop(name, None)
            self.record(f"{name}: held {held} is back within its barrier {barrier}", logging.INFO)


def limits_text(settings: Mapping[str, str]) -> str:
    """The ``limits`` file: every settable resource, its pair, who enforces it."""
    lines = []
    for name, pair in ubc.limits_of(settings).items():
        how = "enforced" if name in ENFORCED else "accounted"
        lines.append(f"{name} {ubc.conf_value(pair)} {how}\n")
    return "".join(lines)
