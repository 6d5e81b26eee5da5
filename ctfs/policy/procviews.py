"""What a container's /proc and /sys files say of it: its memory, CPUs, time, load.

Pure renderers.  Software inside sizes itself from these files (glibc counts CPUs
in /sys/devices/system/cpu/online, runtimes and databases read /proc/meminfo),
so each tells the container's truth, computed from its limits and usage:

- memory: MemTotal is the RAM limit (the host's RAM if none is lower), MemFree
  what of it is not used, MemAvailable adds the page cache the kernel can drop;
  swap is the swap limit (the host's swap if none);
- CPUs: as many as ``cpus`` and ``cpulimit`` allow (a cap of 150 % shows 2);
- time: uptime counts the container's own running time, across checkpoints;
  /proc/stat's CPU time is the container's; idle is what its CPUs did not use;
- load: an exponentially decaying average of its runnable tasks, as the kernel
  keeps one for the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ctfs.kernel.api import CpuCap, CpuTime, Disk, DiskIo, MemoryDetail, TaskStates

USER_HZ = 100
# The kernel's load average time constants: 1, 5 and 15 minutes.
LOAD_PERIODS_S = (60.0, 300.0, 900.0)

Load = tuple[float, float, float]


@dataclass(frozen=True)
class Reading:
    """Everything the views of one running container are computed from."""

    ram_limit: int | None  # bytes; None: no limit
    swap_limit: int | None
    host_ram: int
    host_swap: int
    cpus: Sequence[int]  # the host CPUs it is shown, as many as it may use
    uptime: float = 0.0  # seconds it has run
    memory: MemoryDetail = field(default_factory=MemoryDetail)
    cpu: CpuTime = field(default_factory=CpuTime)
    tasks: TaskStates = field(default_factory=TaskStates)
    load: Load = (0.0, 0.0, 0.0)
    disk: Disk | None = None  # the disk its private area lives on
    io: DiskIo = field(default_factory=DiskIo)


def visible_cpus(cpu_set: Sequence[int], cap: CpuCap) -> list[int]:
    """The CPUs a container is shown: those of its set, no more than its cap allows."""
    count = len(cpu_set)
    if cap.quota_us is not None:
        count = min(count, max(1, math.ceil(cap.quota_us / cap.period_us)))
    return list(cpu_set[: max(1, count)])


def decay(load: Load, runnable: int, elapsed: float) -> Load:
    """The load averages ``elapsed`` seconds on, with ``runnable`` tasks meanwhile."""
    if elapsed <= 0:
        return load
    factors = [math.exp(-elapsed / period) for period in LOAD_PERIODS_S]
    one, five, fifteen = (
        old * f + runnable * (1 - f) for old, f in zip(load, factors, strict=True)
    )
    return one, five, fifteen


def memory_total(r: Reading) -> int:
    return min(r.ram_limit, r.host_ram) if r.ram_limit is not None else r.host_ram


def swap_total(r: Reading) -> int:
    return min(r.swap_limit, r.host_swap) if r.swap_limit is not None else r.host_swap


def _kb(value: int) -> int:
    return max(0, value) // 1024


def meminfo(r: Reading) -> str:
    m = r.memory
    total = memory_total(r)
    free = max(0, total - m.used)
    reclaimable = m.active_file + m.inactive_file
    swap = swap_total(r)
    rows = (
        ("MemTotal", total),
        ("MemFree", free),
        ("MemAvailable", min(total, free + reclaimable)),
        ("Buffers", 0),
        ("Cached", m.cache),
        ("SwapCached", 0),
        ("Active", m.active_anon + m.active_file),
        ("Inactive", m.inactive_anon + m.inactive_file),
        ("Active(anon)", m.active_anon),
        ("Inactive(anon)", m.inactive_anon),
        ("Active(file)", m.active_file),
        ("Inactive(file)", m.inactive_file),
        ("Unevictable", m.unevictable),
        ("Mlocked", 0),
        ("SwapTotal", swap),
        ("SwapFree", max(0, swap - m.swap)),
        ("Dirty", m.dirty),
        ("Writeback", m.writeback),
        ("AnonPages", m.anon),
        ("Mapped", m.mapped),
        ("Shmem", m.shmem),
        ("Slab", m.kernel),
        ("SReclaimable", 0),
        ("SUnreclaim", m.kernel),
    )
    return "".join(f"{name + ':':<16}{_kb(value):>8} kB\n" for name, value in rows)


def swaps(r: Reading) -> str:
    header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    size = swap_total(r)
    if not size:
        return header
    return header + f"none\t\t\t\t\tvirtual\t\t{_kb(size)}\t\t{_kb(r.memory.swap)}\t\t0\n"


def cpuinfo(host: str, cpus: Sequence[int]) -> str:
    """The host's blocks of the CPUs shown, numbered from 0 as the container sees them."""
    blocks = {}
    for block in host.strip("\n").split("\n\n"):
        first, _, rest = block.partition("\n")
        key, _, number = first.partition(":")
        if key.strip() == "processor" and number.strip().isdigit():
            blocks[int(number)] = rest
    shown = [n for n in cpus if n in blocks]
    return "".join(f"processor\t: {index}\n{blocks[n]}\n\n" for index, n in enumerate(shown))


def cpu_online(cpus: Sequence[int]) -> str:
    count = max(1, len(cpus))
    return "0\n" if count == 1 else f"0-{count - 1}\n"


def uptime(r: Reading) -> str:
    used = (r.cpu.user + r.cpu.system) / USER_HZ
    idle = max(0.0, r.uptime * max(1, len(r.cpus)) - used)
    return f"{r.uptime:.2f} {idle:.2f}\n"


def stat(r: Reading, now: float) -> str:
    """/proc/stat: the container's CPU time, spread evenly over the CPUs it is shown."""
    count = max(1, len(r.cpus))
    idle = max(0, int(r.uptime * USER_HZ) * count - r.cpu.user - r.cpu.system)
    lines = [_cpu_line("cpu", r.cpu.user, r.cpu.system, idle)]
    for index in range(count):
        lines.append(
            _cpu_line(f"cpu{index}", r.cpu.user // count, r.cpu.system // count, idle // count)
        )
    lines += [
        "intr 0",
        "ctxt 0",
        f"btime {int(now - r.uptime)}",
        f"processes {r.tasks.total}",
        f"procs_running {r.tasks.running}",
        f"procs_blocked {r.tasks.blocked}",
        "softirq 0",
    ]
    return "\n".join(lines) + "\n"


def _cpu_line(name: str, user: int, system: int, idle: int) -> str:
    return f"{name} {user} 0 {system} {idle} 0 0 0 0 0 0"


def loadavg(load: Load, tasks: TaskStates) -> str:
    """/proc/loadavg.  Its reader counts as running, as it would with the kernel's
    file: here it waits for ctfs in the kernel, so its state says otherwise."""
    one, five, fifteen = load
    running = max(1, tasks.running) if tasks.total else 0
    return f"{one:.2f} {five:.2f} {fifteen:.2f} {running}/{tasks.total} 0\n"


def veinfo(ctid: int, processes: int, addresses: Sequence[str]) -> str:
    """The container's line of OpenVZ's /proc/vz/veinfo: CTID, class, processes, IPs."""
    return f"{ctid:>10} {0:>5} {processes:>5}" + "".join(f" {a:>15}" for a in addresses) + "\n"


def diskstats(r: Reading) -> str:
    """/proc/diskstats: one line, the disk its private area lives on, with what its
    own tasks asked of it (requests and 512-byte sectors; times are not kept)."""
    if r.disk is None:
        return ""
    d, io = r.disk, r.io
    fields = [io.reads, 0, io.read_bytes // 512, 0, io.writes, 0, io.write_bytes // 512]
    fields += [0] * 10
    return f"{d.major:>4} {d.minor:>7} {d.name} " + " ".join(map(str, fields)) + "\n"
