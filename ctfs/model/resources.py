"""Resources: CPU and I/O scheduling, beancounters and disk quota — verbs and readings.

Changes go through ``ctfs.model.settings`` (which decides the kernel knobs);
readings fold the kernel's figures into what the files show, and note in
``events`` when usage crosses a limit.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import trio

from ctfs.errors import kernel_failed
from ctfs.kernel.api import EVERYTHING, Counted, KernelCounters
from ctfs.model import settings
from ctfs.model.container import Container, State
from ctfs.policy import beancounters
from ctfs.policy import quota as disk_quota
from ctfs.policy.beancounters import Counter
from ctfs.policy.quota import INODES, KIB, SPACE, limits_in
from ctfs.policy.sizes import UNLIMITED

# The kernel's figures, and (held, kernel's maxheld, failcnt) per resource measured.
Measured = tuple[KernelCounters, dict[str, tuple[int, int, int]]]


# ------------------------------------------------------------- scheduling


def cpu_count(ct: Container) -> int:
    return len(ct.backends.cgroups.available_cpus())


async def set_number(ct: Container, name: str, key: str, old: int, value: int) -> None:
    """One scheduling number (cpuunits, cpulimit, cpus, ioprio), already in range."""
    await settings.update(ct, {key: str(value)}, f"{name}: {old} -> {value}")


# ----------------------------------------------------------- beancounters


def enforced(ct: Container) -> frozenset[str]:
    return beancounters.enforced_by(ct.backends.cgroups.enforces)


def limits_text(ct: Container) -> str:
    return beancounters.limits_text(ct.settings, enforced(ct))


async def set_limits(ct: Container, changes: dict[str, tuple[int, int]]) -> None:
    summary = ", ".join(f"{name} {beancounters.conf_value(p)}" for name, p in changes.items())
    await settings.update(
        ct,
        {
            beancounters.RESOURCES[n].conf_key: beancounters.conf_value(p)
            for n, p in changes.items()
        },
        f"limits: {summary}",
    )
    if ct.state is State.RUNNING:
        # A limit set under what is held is above it now: say so at once, since
        # the sampler does not watch what the kernel keeps within its limit.
        await _read([(ct, beancounters.needed_for(changes))])


@dataclass(frozen=True)
class Reading:
    """One container's beancounters as just read, and the kernel's figures behind them."""

    counters: dict[str, Counter]
    kernel: KernelCounters


# What needs the list of the container's processes.
_PER_PROCESS = frozenset({Counted.PROCESSES, Counted.OPEN_FILES, Counted.FILE_LOCKS})
# Longer than a scheduler tick (4 ms at HZ=250): see _FilesSeen.
_STILL_AFTER_S = 0.01


@dataclass(frozen=True)
class _FilesSeen:
    """A container's open files and sockets as last counted, and the CPU time its
    cgroups had used and the processes it had just before.

    Only a process itself (or one sharing its descriptor table, which ctfs never
    makes across containers) changes its descriptors, and that takes CPU time.
    So while the CPU time and the processes are the same, the count still holds:
    the descriptor scan, a tenth of a reading (43 of 420 ms for 1000 idle
    containers), is skipped.  A task that runs on without a pause is charged at
    every scheduler tick, hence the wait of more than a tick before trusting it.
    """

    cpu_ns: int
    pids: tuple[int, ...]
    at: float  # time.monotonic()
    files: int
    sockets: int

    def still(self, cpu_ns: int, pids: tuple[int, ...], now: float) -> bool:
        return cpu_ns == self.cpu_ns and pids == self.pids and now - self.at > _STILL_AFTER_S


# The last count of each container's descriptors (kept on the trio loop only).
_files_seen: weakref.WeakKeyDictionary[Container, _FilesSeen] = weakref.WeakKeyDictionary()


def _measure(
    ct: Container, wanted: frozenset[Counted], locks: dict[int, int], seen: _FilesSeen | None
) -> tuple[Measured, _FilesSeen | None]:
    """What the kernel and /proc say now of ``wanted`` (slow: call off the trio loop),
    and what to remember of the descriptors."""
    backends = ct.backends
    if Counted.OPEN_FILES in wanted:
        wanted |= {Counted.CPU}  # read before the processes: see _FilesSeen
    kernel = backends.cgroups.counters(ct.ctid, wanted)
    pids = sorted(backends.cgroups.pids(ct.ctid)) if not wanted.isdisjoint(_PER_PROCESS) else []
    now = time.monotonic()
    if (
        Counted.OPEN_FILES in wanted
        and seen is not None
        and seen.still(kernel.cpu_ns, tuple(pids), now)
    ):
        counts = backends.processes.count(pids, ct.init_pid, locks, wanted - {Counted.OPEN_FILES})
        counts = dataclasses.replace(counts, files=seen.files, sockets=seen.sockets)
    else:
        counts = backends.processes.count(pids, ct.init_pid, locks, wanted)
        if Counted.OPEN_FILES in wanted:
            seen = _FilesSeen(kernel.cpu_ns, tuple(pids), now, counts.files, counts.sockets)
    return (kernel, beancounters.held_now(kernel, counts, wanted)), seen


async def _read(plans: Sequence[tuple[Container, frozenset[Counted]]]) -> dict[int, Reading]:
    """Measure each container for what its plan wants, off the loop; fold it in."""
    if not plans:
        return {}
    processes = plans[0][0].backends.processes
    # /proc/locks only when asked: each read takes the kernel's file-lock rwsem for
    # writing, an RCU grace period (8 ms here) during which nobody can lock a file.
    lock_file = any(Counted.FILE_LOCKS in wanted for _, wanted in plans)
    seen = [_files_seen.get(ct) for ct, _ in plans]

    def measure_all() -> list[tuple[Measured, _FilesSeen | None]]:
        locks = processes.lock_holders() if lock_file else {}
        return [_measure(ct, w, locks, s) for (ct, w), s in zip(plans, seen, strict=True)]

    measured = await trio.to_thread.run_sync(measure_all)
    kept = enforced(plans[0][0])
    readings = {}
    for (ct, _), ((kernel, now), files) in zip(plans, measured, strict=True):
        if files is not None:
            _files_seen[ct] = files
        folded = ct.fold_counters(now, beancounters.limits_of(ct.settings), kept)
        readings[ct.ctid] = Reading(folded, kernel)
    return readings


# Every row of a beancounters block, and nothing else.
ROWS = EVERYTHING - {Counted.CPU}


async def read(
    containers: Sequence[Container], wanted: frozenset[Counted] = ROWS
) -> dict[int, Reading]:
    """Every row of the running ones among ``containers``, and the kernel's ``wanted``
    figures behind them (``Counted.CPU`` too, if asked)."""
    return await _read([(ct, wanted) for ct in containers if ct.state is State.RUNNING])


async def counters(containers: Sequence[Container]) -> dict[int, dict[str, Counter]]:
    """Current beancounters of the running ones among ``containers``."""
    return {ctid: reading.counters for ctid, reading in (await read(containers)).items()}


async def sample(containers: Sequence[Container], in_full: Collection[Container]) -> None:
    """Fold into maxheld and ``events`` what can cross a bound now: of every running
    container its watched resources (``beancounters.watched``), and all of the
    running ones among ``in_full``.  A container with nothing watched costs nothing."""
    plans = []
    for ct in containers:
        if ct.state is not State.RUNNING:
            continue
        if ct in in_full:
            plans.append((ct, ROWS))
            continue
        limits = beancounters.limits_of(ct.settings)
        resources = beancounters.watched(limits, ct.usage.crossed, enforced(ct))
        if resources:
            plans.append((ct, beancounters.needed_for(resources)))
    await _read(plans)


# ------------------------------------------------------------- disk quota


async def set_quota(ct: Container, changes: dict[str, str]) -> None:
    summary = disk_quota.describe_change(ct.settings, changes)
    await settings.update(ct, changes, f"quota: {summary}")


async def quota_usage(ct: Container) -> dict[str, tuple[int, int, int]]:
    """(used, soft, hard) of diskspace (1K blocks) and diskinodes, noting crossings."""
    backend = ct.backends.quota

    def measure() -> tuple[int, int | None, int]:
        usage = backend.space_usage(ct.root)
        return usage.referenced, usage.limit, backend.count_inodes(ct.root)

    try:
        referenced, limit, inodes = await trio.to_thread.run_sync(measure)
    except OSError as exc:
        raise kernel_failed(f"cannot read the disk quota: {exc}") from exc
    space_soft, _saved_hard = limits_in(ct.settings, SPACE)
    # The hard limit is shown as the kernel has it: it lives on the subvolume.
    space_hard = UNLIMITED if limit is None else min(limit // KIB, UNLIMITED)
    inode_soft, inode_hard = limits_in(ct.settings, INODES)
    figures = {
        SPACE.name: (-(-referenced // KIB), space_soft, space_hard),
        INODES.name: (inodes, inode_soft, inode_hard),
    }
    for resource in (SPACE, INODES):
        _note_quota_level(ct, resource, *figures[resource.name])
    return figures


def _note_quota_level(
    ct: Container, resource: disk_quota.Resource, used: int, soft: int, hard: int
) -> None:
    now = disk_quota.level(used, soft, hard)
    before = ct.usage.quota_levels.get(resource.name, disk_quota.WITHIN)
    ct.usage.quota_levels[resource.name] = now
    if now != before:
        sentence = disk_quota.crossing_sentence(resource, used, soft, hard, before, now)
        level = logging.WARNING if now > before or now == disk_quota.ABOVE_HARD else logging.INFO
        ct.events.record(sentence, level)
