"""The counters of a container's cgroup (v2, unified) directory.

The same figures as ``ctfs.kernel.v1_counters`` from the unified hierarchy's
files, all in one directory.  Where v2 has no such figure (the kernel-memory and
TCP-buffer peaks, TCP-buffer refusals) it reads 0; ``CgroupsV2.enforces`` says
which limits v2 can enforce.  A refused RAM allocation is counted as v2's
``max`` event (the usage hit memory.max), OpenVZ's failcnt.
"""

from __future__ import annotations

from ctfs.kernel import cgroup_files
from ctfs.kernel.api import Counted, CpuTime, Disk, DiskIo, KernelCounters, MemoryDetail

# USER_HZ, in which /proc/stat and v1's cpuacct.stat count; cpu.stat is in µs.
USEC_PER_TICK = 10_000

# MemoryDetail's fields by the names v2's memory.stat gives them (the cgroup and
# those below it: v2's figures are hierarchical).
_MEMORY_STAT = {
    "cache": b"file",
    "anon": b"anon",
    "shmem": b"shmem",
    "mapped": b"file_mapped",
    "active_anon": b"active_anon",
    "inactive_anon": b"inactive_anon",
    "active_file": b"active_file",
    "inactive_file": b"inactive_file",
    "unevictable": b"unevictable",
    "dirty": b"file_dirty",
    "writeback": b"file_writeback",
    "kernel": b"kernel",
}


def _memory_counters(memory: int | None, wanted: frozenset[Counted]) -> dict[str, int]:
    found: dict[str, int] = {}
    stat = (
        cgroup_files.pairs("memory.stat", memory)
        if wanted & {Counted.KERNEL_MEMORY, Counted.TCP_BUFFERS, Counted.SHARED_MEMORY}
        else {}
    )
    if Counted.MEMORY in wanted:
        found.update(
            ram=cgroup_files.number("memory.current", memory),
            ram_peak=cgroup_files.number("memory.peak", memory),
            ram_failcnt=cgroup_files.keyed("memory.events", memory, b"max"),
            swap=cgroup_files.number("memory.swap.current", memory),
        )
    if Counted.KERNEL_MEMORY in wanted:
        found["kmem"] = stat.get(b"kernel", 0)
    if Counted.TCP_BUFFERS in wanted:
        found["tcp"] = stat.get(b"sock", 0)
    if Counted.SHARED_MEMORY in wanted:
        found["shmem"] = stat.get(b"shmem", 0)
    return found


def read(top: str, wanted: frozenset[Counted]) -> KernelCounters:
    """The ``wanted`` groups of the cgroup ``top``; the others are 0."""
    found: dict[str, int] = {}
    with cgroup_files.directory(top) as cgroup:
        found.update(_memory_counters(cgroup, wanted))
        if Counted.TASKS in wanted:
            found.update(
                tasks=cgroup_files.number("pids.current", cgroup),
                tasks_peak=cgroup_files.number("pids.peak", cgroup),
                tasks_refused=cgroup_files.keyed("pids.events", cgroup, b"max"),
            )
        if Counted.CPU in wanted:
            found["cpu_ns"] = cgroup_files.keyed("cpu.stat", cgroup, b"usage_usec") * 1000
    return KernelCounters(**found)


def memory_detail(top: str) -> MemoryDetail:
    """How the memory of the cgroup ``top`` is used, as /proc/meminfo shows it."""
    with cgroup_files.directory(top) as cgroup:
        stat = cgroup_files.pairs("memory.stat", cgroup)
        used = cgroup_files.number("memory.current", cgroup)
        swap = cgroup_files.number("memory.swap.current", cgroup)
    return MemoryDetail(
        used=used, swap=swap, **{field: stat.get(key, 0) for field, key in _MEMORY_STAT.items()}
    )


def cpu_time(top: str) -> CpuTime:
    with cgroup_files.directory(top) as cgroup:
        stat = cgroup_files.pairs("cpu.stat", cgroup)
    return CpuTime(
        user=stat.get(b"user_usec", 0) // USEC_PER_TICK,
        system=stat.get(b"system_usec", 0) // USEC_PER_TICK,
    )


def disk_io(top: str, disk: Disk) -> DiskIo:
    """io.stat's line for ``disk``: "MAJ:MIN rbytes=N wbytes=N rios=N wios=N ..."."""
    device = f"{disk.major}:{disk.minor}".encode()
    with cgroup_files.directory(top) as cgroup:
        lines = cgroup_files.read("io.stat", cgroup).splitlines()
    fields: dict[bytes, int] = {}
    for line in lines:
        words = line.split()
        if words and words[0] == device:
            for word in words[1:]:
                key, _, value = word.partition(b"=")
                if value.isdigit():
                    fields[key] = int(value)
    return DiskIo(
        reads=fields.get(b"rios", 0),
        read_bytes=fields.get(b"rbytes", 0),
        writes=fields.get(b"wios", 0),
        write_bytes=fields.get(b"wbytes", 0),
    )
