"""What the kernel reports of a container: its counters and the readings of its views.

Frozen values, no I/O (part of ``ctfs.kernel.api``, which re-exports them): the
cgroups and processes backends fill them, the model and policy read them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Counted(enum.Enum):
    """The groups of figures a container's counters are read in.

    A reading names the groups it needs and only those are read; the figures of
    the others are left at 0.  The first six come from the cgroups
    (``Cgroups.counters``), the rest from /proc and the container's network
    namespace (``Processes.count``).
    """

    MEMORY = "memory"  # RAM and swap in use, the RAM peak and hits of the RAM limit
    KERNEL_MEMORY = "kmem"  # kernel memory and its peak
    TCP_BUFFERS = "tcp_buffers"  # TCP buffer memory, its peak and refusals
    SHARED_MEMORY = "shmem"
    TASKS = "tasks"  # tasks, their peak and refused forks
    CPU = "cpu"  # CPU time
    PROCESSES = "processes"  # per process: pending signals, locked and private memory
    OPEN_FILES = "open_files"  # per process: open files, and sockets among them
    FILE_LOCKS = "file_locks"
    TCP_SOCKETS = "tcp_sockets"
    UDP_QUEUES = "udp_queues"
    FIREWALL_RULES = "firewall_rules"
    PTYS = "ptys"


EVERYTHING = frozenset(Counted)


@dataclass(frozen=True)
class KernelCounters:
    """What the kernel counts for a container: bytes, tasks, peaks and refusals."""

    ram: int = 0
    ram_peak: int = 0
    ram_failcnt: int = 0
    swap: int = 0
    kmem: int = 0
    kmem_peak: int = 0
    tcp: int = 0
    tcp_peak: int = 0
    tcp_failcnt: int = 0
    shmem: int = 0
    tasks: int = 0
    tasks_peak: int = 0
    tasks_refused: int = 0
    cpu_ns: int = 0  # CPU time used since the cgroups were made


@dataclass(frozen=True)
class MemoryDetail:
    """How a container's memory is used, in bytes, as /proc/meminfo breaks it down."""

    used: int = 0  # everything charged to it, page cache included
    swap: int = 0
    cache: int = 0  # page cache, shared memory included
    anon: int = 0
    shmem: int = 0
    mapped: int = 0
    active_anon: int = 0
    inactive_anon: int = 0
    active_file: int = 0
    inactive_file: int = 0
    unevictable: int = 0
    dirty: int = 0
    writeback: int = 0
    kernel: int = 0  # kernel memory (slab and the like)


@dataclass(frozen=True)
class CpuTime:
    """CPU time a container used, in clock ticks (USER_HZ) as /proc/stat counts."""

    user: int = 0
    system: int = 0


@dataclass(frozen=True)
class TaskStates:
    """How many of a container's tasks run (or wait to) and are blocked in the kernel."""

    running: int = 0
    blocked: int = 0
    total: int = 0


@dataclass(frozen=True)
class ProcessCounts:
    """What ctfs counts itself from /proc and the container's network namespace."""

    files: int = 0
    sockets: int = 0
    tcp_sockets: int = 0
    file_locks: int = 0
    ptys: int = 0
    pending_signals: int = 0
    locked_pages: int = 0
    private_pages: int = 0
    udp_send_bytes: int = 0
    udp_receive_bytes: int = 0
    firewall_rules: int = 0


@dataclass(frozen=True)
class Disk:
    """A block device: the one the containers' private areas live on."""

    name: str
    major: int
    minor: int


@dataclass(frozen=True)
class DiskIo:
    """What a container's tasks asked of one disk: requests and bytes, each way."""

    reads: int = 0
    read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0
