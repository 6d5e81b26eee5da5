"""Resources: CPU and I/O scheduling, beancounters and disk quota — verbs and readings.

Changes go through ``ctfs.model.settings`` (which decides the kernel knobs);
readings fold the kernel's figures into what the files show, and note in
``events`` when usage crosses a limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from ctfs.errors import kernel_failed
from ctfs.model import settings
from ctfs.model.container import Container, State
from ctfs.policy import beancounters
from ctfs.policy import quota as disk_quota
from ctfs.policy.beancounters import Counter
from ctfs.policy.quota import INODES, KIB, SPACE, limits_in
from ctfs.policy.sizes import UNLIMITED

Measured = dict[str, tuple[int, int, int]]


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


def _measure(ct: Container, locks: dict[int, int]) -> Measured:
    """What the kernel and /proc say now (slow: call off the trio loop)."""
    processes = ct.backends.processes
    counts = processes.count(ct.pids(), ct.init_pid, locks)
    return beancounters.held_now(ct.backends.cgroups.counters(ct.ctid), counts)


async def counters(containers: Sequence[Container]) -> dict[int, dict[str, Counter]]:
    """Current beancounters of the running ones among ``containers``."""
    running = [ct for ct in containers if ct.state is State.RUNNING]
    if not running:
        return {}
    processes = running[0].backends.processes

    def measure_all() -> list[Measured]:
        locks = processes.lock_holders()
        return [_measure(ct, locks) for ct in running]

    measured = await trio.to_thread.run_sync(measure_all)
    return {
        ct.ctid: ct.fold_counters(m, beancounters.limits_of(ct.settings), enforced(ct))
        for ct, m in zip(running, measured, strict=True)
    }


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
