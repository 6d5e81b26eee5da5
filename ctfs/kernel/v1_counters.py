"""The counters of a container's cgroup v1 directories, read as cheaply as the kernel allows.

``CgroupsV1.counters`` and ``CgroupsV1.pids`` come here, and the readings of a
container's views (``memory_detail``, ``cpu_time``, ``disk_io``).  The beancounters of a
thousand containers read 14 files of their cgroups each, so every microsecond per
file is 14 ms: files are read with plain os calls on bytes, relative to their
opened directory, and only the groups a reading wants.  A cgroup that is not
there (any more) reads as zeros.
"""

from __future__ import annotations

from ctfs.kernel import cgroup_files
from ctfs.kernel.api import Counted, CpuTime, Disk, DiskIo, KernelCounters, MemoryDetail

_MEMORY_GROUPS = frozenset(
    {Counted.MEMORY, Counted.KERNEL_MEMORY, Counted.TCP_BUFFERS, Counted.SHARED_MEMORY}
)


def _memory_counters(memory: int | None, wanted: frozenset[Counted]) -> dict[str, int]:
    """KernelCounters' figures from the memory cgroup open as ``memory``."""
    found: dict[str, int] = {}
    if Counted.MEMORY in wanted:
        ram = cgroup_files.number("memory.usage_in_bytes", memory)
        found.update(
            ram=ram,
            ram_peak=cgroup_files.number("memory.max_usage_in_bytes", memory),
            ram_failcnt=cgroup_files.number("memory.failcnt", memory),
            swap=max(0, cgroup_files.number("memory.memsw.usage_in_bytes", memory) - ram),
        )
    if Counted.KERNEL_MEMORY in wanted:
        found.update(
            kmem=cgroup_files.number("memory.kmem.usage_in_bytes", memory),
            kmem_peak=cgroup_files.number("memory.kmem.max_usage_in_bytes", memory),
        )
    if Counted.TCP_BUFFERS in wanted:
        found.update(
            tcp=cgroup_files.number("memory.kmem.tcp.usage_in_bytes", memory),
            tcp_peak=cgroup_files.number("memory.kmem.tcp.max_usage_in_bytes", memory),
            tcp_failcnt=cgroup_files.number("memory.kmem.tcp.failcnt", memory),
        )
    if Counted.SHARED_MEMORY in wanted:
        found["shmem"] = cgroup_files.keyed("memory.stat", memory, b"total_shmem")
    return found


def read(root: str, tail: str, wanted: frozenset[Counted]) -> KernelCounters:
    """The ``wanted`` groups of the cgroups ``root/<hierarchy>/tail``; the others are 0."""
    found: dict[str, int] = {}
    if not wanted.isdisjoint(_MEMORY_GROUPS):
        with cgroup_files.directory(f"{root}/memory/{tail}") as memory:
            found.update(_memory_counters(memory, wanted))
    if Counted.TASKS in wanted:
        with cgroup_files.directory(f"{root}/pids/{tail}") as pids:
            found.update(
                tasks=cgroup_files.number("pids.current", pids),
                tasks_peak=cgroup_files.number("pids.peak", pids),
                tasks_refused=cgroup_files.keyed("pids.events", pids, b"max"),
            )
    if Counted.CPU in wanted:
        with cgroup_files.directory(f"{root}/cpuacct/{tail}") as cpuacct:
            found["cpu_ns"] = cgroup_files.number("cpuacct.usage", cpuacct)
    return KernelCounters(**found)


# MemoryDetail's fields by the names memory.stat gives them (with "total_": the
# cgroup and those below it).
_MEMORY_STAT = {
    "cache": b"total_cache",
    "anon": b"total_rss",
    "shmem": b"total_shmem",
    "mapped": b"total_mapped_file",
    "active_anon": b"total_active_anon",
    "inactive_anon": b"total_inactive_anon",
    "active_file": b"total_active_file",
    "inactive_file": b"total_inactive_file",
    "unevictable": b"total_unevictable",
    "dirty": b"total_dirty",
    "writeback": b"total_writeback",
}


def memory_detail(root: str, tail: str) -> MemoryDetail:
    """How the memory of the cgroup ``root/memory/tail`` is used, as /proc/meminfo shows it."""
    with cgroup_files.directory(f"{root}/memory/{tail}") as memory:
        stat = cgroup_files.pairs("memory.stat", memory)
        used = cgroup_files.number("memory.usage_in_bytes", memory)
        with_swap = cgroup_files.number("memory.memsw.usage_in_bytes", memory)
        kernel = cgroup_files.number("memory.kmem.usage_in_bytes", memory)
    return MemoryDetail(
        used=used,
        swap=max(0, with_swap - used),
        kernel=kernel,
        **{field: stat.get(key, 0) for field, key in _MEMORY_STAT.items()},
    )


def cpu_time(root: str, tail: str) -> CpuTime:
    with cgroup_files.directory(f"{root}/cpuacct/{tail}") as cpuacct:
        ticks = cgroup_files.pairs("cpuacct.stat", cpuacct)
    return CpuTime(user=ticks.get(b"user", 0), system=ticks.get(b"system", 0))


def disk_io(root: str, tail: str, disk: Disk) -> DiskIo:
    device = f"{disk.major}:{disk.minor}".encode()
    with cgroup_files.directory(f"{root}/blkio/{tail}") as blkio:
        # BFQ counts every request of the cgroup; the throttling layer counts only
        # where a throttle is set (its files read "Total 0" otherwise).
        for kind in ("bfq", "throttle"):
            done = _per_device(f"blkio.{kind}.io_serviced_recursive", blkio, device)
            moved = _per_device(f"blkio.{kind}.io_service_bytes_recursive", blkio, device)
            if done:
                break
    return DiskIo(
        reads=done.get(b"Read", 0),
        read_bytes=moved.get(b"Read", 0),
        writes=done.get(b"Write", 0),
        write_bytes=moved.get(b"Write", 0),
    )


def _per_device(name: str, directory: int | None, device: bytes) -> dict[bytes, int]:
    """One device's lines of a blkio file ("7:1 Read 4096"), by operation."""
    found = {}
    for line in cgroup_files.read(name, directory).splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == device and fields[2].isdigit():
            found[fields[1]] = int(fields[2])
    return found
