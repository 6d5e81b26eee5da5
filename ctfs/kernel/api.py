"""What the model asks of the kernel: the backend Protocols and the values they speak.

Pure: Protocols and frozen dataclasses, no I/O, so every layer may import it.  The
model holds one ``Backends`` built at startup (``ctfs.kernel.backends.real``) and
never imports an implementation.  What the kernel reports (counters, the readings
of the views) is in ``ctfs.kernel.readings``, and what ctfsd asks the launcher in
``ctfs.kernel.launch_values``, and what it asks CRIU for in
``ctfs.kernel.criu_values``, all re-exported here.  Units are
version-neutral: a cgroup v1 and a v2 backend take the same values and translate
them to their own files.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ctfs.kernel import criu_values, launch_values, peer_values, readings

# What the kernel reports, re-exported (see ctfs.kernel.readings).
Counted = readings.Counted
EVERYTHING = readings.EVERYTHING
KernelCounters = readings.KernelCounters
MemoryDetail = readings.MemoryDetail
CpuTime = readings.CpuTime
TaskStates = readings.TaskStates
ProcessCounts = readings.ProcessCounts
Disk = readings.Disk
DiskIo = readings.DiskIo

# What ctfsd sends the launcher and gets back, re-exported (see ctfs.kernel.launch_values).
LaunchRequest = launch_values.LaunchRequest
LaunchReply = launch_values.LaunchReply

# What ctfsd asks CRIU for, re-exported (see ctfs.kernel.criu_values).
SubtreeControls = criu_values.SubtreeControls
CriuCgroups = criu_values.CriuCgroups
Veth = criu_values.Veth
CriuError = criu_values.CriuError
CriuDump = criu_values.CriuDump
CriuRestore = criu_values.CriuRestore
CriuTls = criu_values.CriuTls
LazyPages = criu_values.LazyPages
Checkpointer = criu_values.Checkpointer

# What the peer link speaks, re-exported (see ctfs.kernel.peer_values).
Identity = peer_values.Identity
PeerLinkError = peer_values.PeerLinkError
PeerLinks = peer_values.PeerLinks
AreaStreams = peer_values.AreaStreams

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ------------------------------------------------------------------ cgroups


class Enforceable(enum.Enum):
    """Limits a cgroup backend may or may not be able to enforce on a given host."""

    RAM = "ram"
    RAM_SOFT = "ram_soft"
    SWAP = "swap"
    TCP_BUFFERS = "tcp_buffers"
    TASKS = "tasks"


@dataclass(frozen=True)
class MemoryLimits:
    """Memory limits in bytes; None is no limit."""

    ram: int | None = None  # hard limit on RAM in use
    ram_soft: int | None = None  # reclaimed down to this first under pressure
    swap: int | None = None  # swap on top of RAM
    tcp_buffers: int | None = None  # TCP send and receive buffers together


@dataclass(frozen=True)
class CpuCap:
    """At most ``quota_us`` of CPU time per ``period_us``; no quota: no cap."""

    quota_us: int | None
    period_us: int


class Cgroups(Protocol):
    """Every container's cgroups under one parent, whatever the cgroup version.

    Invariant: a container's processes, its own sub-cgroups included, are exactly
    the processes ``pids`` lists; ``kill_all`` ends all of them.
    """

    parent: str  # the parent cgroup of every container, e.g. "ctfs"
    enforces: frozenset[Enforceable]

    def create(self, ctid: int) -> None:
        """Create the container's cgroups (idempotent) with the devices baseline."""

    def remove(self, ctid: int) -> None:
        """Remove the container's cgroups; they must be empty."""

    def delegate(self, ctid: int, uid: int) -> None:
        """Let host user ``uid`` (a container's root) manage the cgroups below the
        container's own, and move its processes among them; its limits stay the host's."""

    def pids(self, ctid: int) -> list[int]:
        """Host PIDs of every process in the container, unsorted."""

    def container_of(self, pid: int) -> int | None:
        """The CTID whose cgroups hold ``pid``, or None."""

    def join_files(self, ctid: int) -> list[str]:
        """The files a single-threaded process writes ``0`` to, to move itself in."""

    def birth_cgroup(self, ctid: int) -> str | None:
        """A cgroup2 directory of the container that new processes are born into
        (clone3) rather than moved into: a move there costs an RCU grace period."""

    def kill_all(self, ctid: int) -> None:
        """SIGKILL every process of the container, with no chance to fork away."""

    def freeze(self, ctid: int, timeout: float) -> None:
        """Stop every process of the container; TimeoutError if they are not all stopped."""

    def thaw(self, ctid: int) -> None:
        """Let the container's processes run again (a no-op if they were not frozen)."""

    def criu_options(self, ctid: int) -> CriuCgroups: ...

    def own_cgroups(self, ctid: int) -> list[str]:
        """The cgroups made inside below the container's own, parents first, as names
        only ``make_own_cgroups`` reads (CRIU restores only those holding tasks)."""

    def own_controllers(self, ctid: int) -> dict[str, list[str]]:
        """The controllers the container enabled for the children of its own cgroups
        (cgroup v2's cgroup.subtree_control), by the names ``own_cgroups`` gives and
        the bare hierarchy name for its top; those with none are left out."""

    def make_own_cgroups(
        self,
        ctid: int,
        names: Sequence[str],
        uid: int | None,
        controllers: Mapping[str, Sequence[str]],
    ) -> SubtreeControls:
        """Make those of ``names`` that are missing, owned by host user ``uid`` (the
        container's root) if given; return where ``controllers`` (as
        ``own_controllers`` gave them) are to be enabled, parents first.  Not now:
        CRIU moves the restored init through the container's top cgroup, which
        cgroup v2 refuses once it enables controllers for its children.
        ValueError, before making any, for a name or controller that
        ``own_cgroups`` or ``own_controllers`` could not have given (a dump file is
        input)."""

    def populated(self) -> list[int]:
        """CTIDs whose cgroups exist under the parent (running or left over)."""

    def available_cpus(self) -> list[int]:
        """The CPUs containers may be given (the parent's cpuset)."""

    def set_cpu_weight(self, ctid: int, weight: float) -> None:
        """Relative CPU weight, as a fraction of the largest weight (0 < weight <= 1)."""

    def set_cpu_cap(self, ctid: int, cap: CpuCap) -> None: ...

    def set_cpu_set(self, ctid: int, cpus: list[int]) -> None:
        """The CPUs the container's processes may run on."""

    def set_io_weight(self, ctid: int, weight: int) -> None:
        """Relative disk-bandwidth weight on BFQ's scale, 1..1000."""

    def set_memory_limits(self, ctid: int, limits: MemoryLimits) -> None:
        """Apply every memory limit at once (None lifts one)."""

    def set_task_limit(self, ctid: int, tasks: int | None) -> None:
        """At most ``tasks`` processes and threads; None lifts the limit."""

    def memory_detail(self, ctid: int) -> MemoryDetail:
        """The container's memory use broken down; zeros where unknown."""

    def cpu_time(self, ctid: int) -> CpuTime:
        """The CPU time the container's tasks used since its cgroups were made."""

    def disk_io(self, ctid: int, disk: Disk) -> DiskIo:
        """What the container's tasks asked of ``disk`` since its cgroups were made."""

    def counters(self, ctid: int, wanted: frozenset[Counted] = EVERYTHING) -> KernelCounters:
        """Usage, peaks and refusal counts of the ``wanted`` groups (others are 0);
        zeros for a container with no cgroups."""


# ------------------------------------------------------------ storage, quota


class StorageError(Exception):
    """The pool or a subvolume operation failed; the text says what and why."""


@dataclass(frozen=True)
class Template:
    name: str
    root: Path
    init: str
    halt_signal: int
    description: str


class Templates(Protocol):
    def names(self) -> list[str]: ...

    def get(self, name: str) -> Template | None: ...


class Storage(Protocol):
    """Private areas: subvolumes in the pool, and the files ctfs keeps inside them.

    Invariant: nothing here follows a link a container planted.
    """

    def snapshot(self, source: Path, dest: Path) -> None: ...

    def delete(self, path: Path) -> None:
        """Delete a subvolume, or a plain directory an interrupted create left."""

    def update_etc_file(self, root: Path, name: str, render: Callable[[str], str]) -> bool:
        """Replace ``root/etc/name`` by ``render(old text)`` atomically; True if changed."""

    def pool_disk(self) -> Disk | None:
        """The block device the private areas live on; None if there is none."""


@dataclass(frozen=True)
class SpaceUsage:
    """A private area's bytes referenced and exclusive, and its referenced limit."""

    referenced: int
    exclusive: int
    limit: int | None


class Quota(Protocol):
    def space_usage(self, area: Path) -> SpaceUsage: ...

    def set_space_limit(self, area: Path, hard_bytes: int | None) -> None: ...

    def count_inodes(self, area: Path) -> int: ...


# ------------------------------------------------------------------ network


class NetworkError(OSError):
    """A network change the kernel or nft refused; the text says which and why."""


class SegmentCapture(Protocol):
    def stop(self) -> list[bytes]:
        """End the capture; the IP packets kept."""


class Network(Protocol):
    """The host side of the containers' routed networks (veths, routes, proxies)."""

    def host_addresses(self) -> set[IPAddress]: ...

    def configure(self, ctid: int, pid: int, addresses: Sequence[IPAddress]) -> None:
        """Make container ``ctid`` (init ``pid``) reachable at exactly ``addresses``."""

    def remove(self, ctid: int) -> None:
        """Remove everything ``configure`` made; nothing left on the host."""

    def remove_link(self, ctid: int) -> None:
        """Remove only the veth; proxies stay (a frozen container keeps them)."""

    def adopt(self, running: Mapping[int, Sequence[IPAddress]]) -> None: ...

    def forget(self, ctid: int, addresses: Sequence[IPAddress]) -> None:
        """Remove what an earlier ctfsd left for a container that stopped meanwhile."""

    def veth(self, ctid: int) -> Veth: ...

    def announce(self, addresses: Sequence[IPAddress]) -> None:
        """Tell the uplinks' neighbours that ``addresses`` are reached here now."""

    def capture_segments(self, addresses: Sequence[IPAddress]) -> SegmentCapture:
        """Start keeping the TCP segments with data arriving on the uplinks for
        ``addresses`` (see ``ctfs.kernel.tcp_replay``)."""

    def destination_of(self, packet: bytes) -> IPAddress | None:
        """Where an IP packet that is a TCP segment with data goes; None for others."""

    def replay_segments(self, packets: Sequence[bytes]) -> int:
        """Send captured segments again, to the containers here; how many went."""

    def traffic(self, ctid: int) -> Traffic | None:
        """Bytes the container received and sent on its eth0; None without one."""


@dataclass(frozen=True)
class Traffic:
    received: int
    sent: int


class Firewall(Protocol):
    """The host's source-address filter: a container sends only from its addresses."""

    def allow(self, ctid: int, addresses: Sequence[IPAddress]) -> None: ...

    def adopt(self, allowed: Mapping[int, Sequence[IPAddress]]) -> None: ...


# ---------------------------------------------------------------- processes


class Processes(Protocol):
    """Facts about a container's processes, and what ctfs does in its namespaces."""

    def find_init(self, pids: Iterable[int]) -> int | None: ...

    def outside_pid_namespace(self, init_pid: int, pids: Iterable[int]) -> list[int]:
        """Host PIDs of what joined the container from outside (ctfs exec, enter):
        those of ``pids`` not in init's pid namespace, and the parents outside it of
        those in it (on cgroup v2 only the joined command is in the cgroup)."""

    def lock_holders(self) -> dict[int, int]: ...

    def task_states(self, pids: Iterable[int]) -> TaskStates:
        """How many of ``pids`` run or wait to run, and how many are blocked."""

    def will_be_ours(self, pid: int) -> bool:
        """Whether ``pid``, not ctfsd's child, has a parent that descends from ctfsd:
        when that parent ends, ctfsd (a subreaper) adopts it."""

    def started_at(self, pid: int) -> float | None:
        """When ``pid`` started, in seconds since the epoch; None if it is gone."""

    def host_memory(self) -> tuple[int, int]:
        """The host's RAM and swap, in bytes."""

    def cpuinfo(self) -> str:
        """The host's /proc/cpuinfo."""

    def count(
        self,
        pids: Iterable[int],
        init: int | None,
        locks: dict[int, int],
        wanted: frozenset[Counted] = EVERYTHING,
    ) -> ProcessCounts:
        """The ``wanted`` figures ctfs counts for the container whose processes are
        ``pids`` (the others are 0)."""

    def set_hostname(self, init_pid: int, name: str) -> None: ...

    def same_pid_namespace(self, pid: int) -> bool | None:
        """Whether ``pid`` is in ctfsd's own pid namespace; None if it is gone."""

    def tree(self, pid: int) -> list[int]:
        """``pid`` and all its descendants (those that are still there)."""

    def placement(self, pid: int) -> Placement | None:
        """Where process ``pid`` lives; None if it is gone."""

    def own_placement(self) -> Placement:
        """Where ctfsd itself lives: the host's namespaces."""

    def resume(self, pids: Iterable[int]) -> None:
        """SIGCONT each of ``pids`` (stopped by a restore that left them stopped)."""

    def uid_map(self, pid: int) -> str | None:
        """/proc/PID/uid_map as the host reads it; None if the process is gone."""


@dataclass(frozen=True)
class Placement:
    """A process's namespaces (by inode, as /proc/PID/ns shows them) and its root."""

    namespaces: dict[str, str]
    root: tuple[int, int]  # device and inode of its root directory
    pid_depth: int  # how many pid namespaces deep it is (1: the host's)


# --------------------------------------------------------- launcher, CRIU


BeforeExec = Callable[[int], Awaitable[None]]


class Launcher(Protocol):
    async def launch(
        self, request: LaunchRequest, before_exec: BeforeExec | None = None
    ) -> LaunchReply: ...

    def close(self) -> None: ...


@dataclass
class Backends:
    """Every kernel backend the model uses; built once at startup."""

    cgroups: Cgroups
    storage: Storage
    templates: Templates
    quota: Quota
    network: Network
    firewall: Firewall
    processes: Processes
    launcher: Launcher
    checkpointer: Checkpointer
    peer_links: PeerLinks
    area_streams: AreaStreams
