"""User beancounters: OpenVZ's table, vzctl's limit syntax, the exact text of
/proc/user_beancounters (Version 2.5, 64-bit widths), and how limits map to the
kernel's memory and task limits.  Pure: no kernel here.

Every container has a barrier:limit pair per resource, saved in ctid.conf under the
resource's upper-case name (``NUMPROC="200:200"``), unlimited by default.

Which resources the kernel enforces depends on what the cgroup backend can enforce
(``enforced_by``); on a cgroup v1 host with memsw that is numproc, physpages (its
barrier is the soft limit), swappages, and tcpsndbuf+tcprcvbuf together.  Every
other resource is accounted: ctfs counts it and reports crossings, but nothing
refuses an allocation, so its failcnt stays 0.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ctfs.errors import CtfsError, invalid
from ctfs.kernel.api import (
    EVERYTHING,
    Counted,
    Enforceable,
    KernelCounters,
    MemoryLimits,
    ProcessCounts,
)
from ctfs.policy.sizes import PAGE_BYTES, UNLIMITED, parse_pair

BYTES, PAGES, COUNT = "bytes", "pages", "count"


@dataclass(frozen=True)
class Resource:
    name: str
    unit: str  # BYTES, PAGES or COUNT

    @property
    def conf_key(self) -> str:
        return self.name.upper()

    @property
    def unit_bytes(self) -> int:
        return PAGE_BYTES if self.unit == PAGES else 1


def _row(name: str) -> Resource:
    if name.startswith("num"):
        return Resource(name, COUNT)
    return Resource(name, PAGES if name.endswith("pages") else BYTES)


# The 24 rows of /proc/user_beancounters, in order; "dummy" rows are placeholders.
ROWS: tuple[str, ...] = (
    "kmemsize", "lockedpages", "privvmpages", "shmpages", "dummy", "numproc",
    "physpages", "vmguarpages", "oomguarpages", "numtcpsock", "numflock", "numpty",
    "numsiginfo", "tcpsndbuf", "tcprcvbuf", "othersockbuf", "dgramrcvbuf",
    "numothersock", "dcachesize", "numfile", "dummy", "dummy", "dummy", "numiptent",
)  # fmt: skip

# Every resource a limit can be set on: the real rows, and swappages (not a row).
RESOURCES: dict[str, Resource] = {
    name: _row(name) for name in (*ROWS, "swappages") if name != "dummy"
}


class Counter(NamedTuple):
    """One row's figures.  A named tuple: a thousand containers' reading makes 21,000."""

    held: int = 0
    maxheld: int = 0
    barrier: int = UNLIMITED
    limit: int = UNLIMITED
    failcnt: int = 0


def limits_of(settings: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """barrier:limit of every resource from ctid.conf; unset or unreadable is unlimited."""
    return {name: _pair(settings.get(key, "")) for name, key in _CONF_KEYS}


_CONF_KEYS = tuple((name, resource.conf_key) for name, resource in RESOURCES.items())


# Every reading of every container looks its limits up: 21 parses a container took
# 60 ms for 1000 containers whose ctid.conf spells every limit out.
@functools.lru_cache(maxsize=4096)
def _pair(raw: str) -> tuple[int, int]:
    if not raw:
        return UNLIMITED, UNLIMITED
    try:
        return parse_pair(raw, 1, allow_suffix=False)
    except CtfsError:  # a hand-edited value: fall back rather than fail a read
        return UNLIMITED, UNLIMITED


def conf_value(pair: tuple[int, int]) -> str:
    """How ctid.conf keeps a pair: numbers in the resource's unit, ``unlimited`` spelt out."""
    return ":".join("unlimited" if v >= UNLIMITED else str(v) for v in pair)


def parse_limits(text: str) -> dict[str, tuple[int, int]]:
    """One or more ``<resource> <barrier>[:<limit>]`` lines, as vzctl takes them.

    Sizes take K/M/G/T/P/B suffixes and fractions except on num* resources; a bare
    number is in the resource's own unit.  A trailing ``enforced``/``accounted``
    word (what reading the file shows) and ``#`` comments are ignored, so a file
    read can be written back.  All lines are checked before anything is returned.
    """
    changes: dict[str, tuple[int, int]] = {}
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise invalid("empty value; write a line such as 'numproc 200' or 'physpages 0:512M'")
    for line in lines:
        words = line.split()
        if len(words) == 3 and words[2] in ("enforced", "accounted"):
            words = words[:2]
        if len(words) != 2:
            raise invalid(f"{line!r}: write '<resource> <barrier>:<limit>' or '<resource> <value>'")
        name, value = words
        resource = RESOURCES.get(name.lower())
        if resource is None:
            raise invalid(f"{name!r} is not a beancounter; known: {', '.join(RESOURCES)}")
        try:
            pair = parse_pair(value, resource.unit_bytes, allow_suffix=resource.unit != COUNT)
        except CtfsError as exc:
            raise CtfsError(exc.errno_value, f"{resource.name}: {exc.sentence}") from None
        if resource.name in changes:
            raise invalid(f"{resource.name} is given twice")
        changes[resource.name] = pair
    return changes


# The kernel's own printf format, kept as it is so the two can be compared.
HEADER = "%10s  %-12s %20s %20s %20s %20s %20s\n" % (  # noqa: UP031
    "uid", "resource", "held", "maxheld", "barrier", "limit", "failcnt",
)  # fmt: skip


_DUMMY = Counter(0, 0, 0, 0, 0)
_UNSEEN = Counter()
# Every row's uid and resource columns, the uid blank (the first row gets the CTID),
# and its numbers: %-formatting of prepared rows halves the cost of a block (20 µs
# against 42 here), and /ctfs/beancounters renders a thousand of them.
_PREFIXES = tuple(f"{'':>10}  {name:<12} " for name in ROWS)
_NUMBERS = "%20d %20d %20d %20d %20d\n"


def render_block(ctid: int, counters: Mapping[str, Counter]) -> str:
    """One container's 24 rows, exactly as /proc/user_beancounters prints them."""
    lines = [f"{ctid}:".rjust(10) + _PREFIXES[0][10:]]
    for index, name in enumerate(ROWS):
        c = counters.get(name, _UNSEEN) if name != "dummy" else _DUMMY
        if index:
            lines.append(_PREFIXES[index])
        lines.append(_NUMBERS % tuple(v if v < UNLIMITED else UNLIMITED for v in c))
    return "".join(lines)


def render(blocks: Iterable[str]) -> str:
    """The whole file: version line, header, then every block given."""
    return "Version: 2.5\n" + HEADER + "".join(blocks)


# The kernel limit that enforces each resource, where one does.
_ENFORCED_BY: dict[str, Enforceable] = {
    "numproc": Enforceable.TASKS,
    "physpages": Enforceable.RAM,
    "swappages": Enforceable.SWAP,
    "tcpsndbuf": Enforceable.TCP_BUFFERS,
    "tcprcvbuf": Enforceable.TCP_BUFFERS,
}


def enforced_by(enforces: Iterable[Enforceable]) -> frozenset[str]:
    """The resources the kernel enforces, given the limits the cgroups can enforce."""
    can = set(enforces)
    return frozenset(name for name, limit in _ENFORCED_BY.items() if limit in can)


def _finite(value: int) -> int | None:
    return None if value >= UNLIMITED else value


def memory_limits(limits: Mapping[str, tuple[int, int]]) -> MemoryLimits:
    phys_barrier, phys_limit = limits["physpages"]
    ram = _finite(phys_limit)
    soft = _finite(phys_barrier)
    swap = _finite(limits["swappages"][1])
    snd, rcv = _finite(limits["tcpsndbuf"][1]), _finite(limits["tcprcvbuf"][1])
    return MemoryLimits(
        ram=ram * PAGE_BYTES if ram is not None else None,
        # A barrier of 0 is OpenVZ's "no guarantee", not "reclaim to nothing".
        ram_soft=soft * PAGE_BYTES if soft else None,
        swap=swap * PAGE_BYTES if swap is not None else None,
        tcp_buffers=snd + rcv if snd is not None and rcv is not None else None,
    )


def task_limit(limits: Mapping[str, tuple[int, int]]) -> int | None:
    return _finite(limits["numproc"][1])


# Where each resource's figures come from: what a reading of it must count.
SOURCES: dict[str, frozenset[Counted]] = {
    name: frozenset(groups)
    for name, groups in {
        "kmemsize": {Counted.KERNEL_MEMORY},
        "lockedpages": {Counted.PROCESSES},
        "privvmpages": {Counted.PROCESSES},
        "shmpages": {Counted.SHARED_MEMORY},
        "numproc": {Counted.TASKS},
        "physpages": {Counted.MEMORY},
        "vmguarpages": {Counted.PROCESSES},
        "oomguarpages": {Counted.MEMORY},
        "numtcpsock": {Counted.TCP_SOCKETS},
        "numflock": {Counted.FILE_LOCKS},
        "numpty": {Counted.PTYS},
        "numsiginfo": {Counted.PROCESSES},
        "tcpsndbuf": {Counted.TCP_BUFFERS},
        "tcprcvbuf": {Counted.TCP_BUFFERS},
        "othersockbuf": {Counted.UDP_QUEUES},
        "dgramrcvbuf": {Counted.UDP_QUEUES},
        "numothersock": {Counted.OPEN_FILES, Counted.TCP_SOCKETS},
        "dcachesize": set(),
        "numfile": {Counted.OPEN_FILES},
        "numiptent": {Counted.FIREWALL_RULES},
        "swappages": {Counted.MEMORY},
    }.items()
}


def needed_for(resources: Iterable[str]) -> frozenset[Counted]:
    """What a reading of ``resources`` must count."""
    return frozenset().union(*(SOURCES[name] for name in resources))


# Resources whose held the kernel keeps at or below the limit it enforces
# (pids.max, memory.limit_in_bytes).  Only a barrier below that limit can be
# crossed, or a limit lowered under what is held, which is looked at when set.
_KEPT_WITHIN_LIMIT = frozenset({"numproc", "physpages"})


def watched(
    limits: Mapping[str, tuple[int, int]], crossed: Iterable[str], enforced: frozenset[str]
) -> set[str]:
    """The resources whose crossings can change by themselves: those with a bound
    that held can go above (a barrier of 0 is none; the kernel keeps an enforced
    numproc and physpages within their limits), and those above one now (its bound
    may have been lifted).  An unlimited resource is never above anything."""
    found = set(crossed)
    for name, (barrier, limit) in limits.items():
        if name in _KEPT_WITHIN_LIMIT and name in enforced:
            if 0 < barrier < limit:
                found.add(name)
        elif limit < UNLIMITED or 0 < barrier < UNLIMITED:
            found.add(name)
    return found


def held_now(
    kernel: KernelCounters, procs: ProcessCounts, counted: frozenset[Counted] = EVERYTHING
) -> dict[str, tuple[int, int, int]]:
    """(held, kernel's maxheld or 0, failcnt) per resource, in the resource's unit:
    every resource whose sources are all in ``counted`` (what was read)."""
    rows = _rows(kernel, procs)
    if counted == EVERYTHING:
        return rows
    return {name: row for name, row in rows.items() if SOURCES[name] <= counted}


def _rows(kernel: KernelCounters, procs: ProcessCounts) -> dict[str, tuple[int, int, int]]:
    pages = PAGE_BYTES
    private = procs.private_pages
    return {
        "kmemsize": (kernel.kmem, kernel.kmem_peak, 0),
        "lockedpages": (procs.locked_pages, 0, 0),
        "privvmpages": (private, 0, 0),
        "shmpages": (kernel.shmem // pages, 0, 0),
        "numproc": (kernel.tasks, kernel.tasks_peak, kernel.tasks_refused),
        "physpages": (kernel.ram // pages, kernel.ram_peak // pages, kernel.ram_failcnt),
        "vmguarpages": (private, 0, 0),
        "oomguarpages": ((kernel.ram + kernel.swap) // pages, 0, 0),
        "numtcpsock": (procs.tcp_sockets, 0, 0),
        "numflock": (procs.file_locks, 0, 0),
        "numpty": (procs.ptys, 0, 0),
        "numsiginfo": (procs.pending_signals, 0, 0),
        # The kernel charges TCP send and receive buffers together: all of it shows
        # here, and the limit it enforces is tcpsndbuf's plus tcprcvbuf's.
        "tcpsndbuf": (kernel.tcp, kernel.tcp_peak, kernel.tcp_failcnt),
        "tcprcvbuf": (0, 0, 0),
        "othersockbuf": (procs.udp_send_bytes, 0, 0),
        "dgramrcvbuf": (procs.udp_receive_bytes, 0, 0),
        "numothersock": (max(0, procs.sockets - procs.tcp_sockets), 0, 0),
        "dcachesize": (0, 0, 0),
        "numfile": (procs.files, 0, 0),
        "numiptent": (procs.firewall_rules, 0, 0),
        "swappages": (kernel.swap // pages, 0, 0),
    }


def limits_text(settings: Mapping[str, str], enforced: frozenset[str]) -> str:
    """The ``limits`` file: every settable resource, its pair, who enforces it."""
    lines = []
    for name, pair in limits_of(settings).items():
        how = "enforced" if name in enforced else "accounted"
        lines.append(f"{name} {conf_value(pair)} {how}\n")
    return "".join(lines)


def crossing(held: int, barrier: int, limit: int) -> str:
    """Which bound ``held`` is above: "limit", "barrier" or "" (within).

    A barrier of 0 is OpenVZ's "no guarantee" (physpages 0:...), not a threshold.
    """
    return "limit" if held > limit else "barrier" if 0 < barrier < held else ""
