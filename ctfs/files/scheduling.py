"""cpuunits, cpulimit, cpus and ioprio: one number each, applied live and saved."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ctfs import scheduling
from ctfs.files.base import ContainerFile
from ctfs.scheduling import (
    CPUUNITS_MAX,
    CPUUNITS_MIN,
    IOPRIO_MAX,
    IOPRIO_MIN,
    Scheduling,
    parse_number,
)

if TYPE_CHECKING:
    from ctfs.container import Container


Limits = Callable[["Container"], tuple[int, int]]


def _cpu_count(ct: Container) -> int:
    return len(ct.host.cgroups.available_cpus())


def _knob(name: str, key: str, field: str, limits: Limits) -> ContainerFile:
    """A file holding one integer setting ``field`` saved as ``key`` in ctid.conf."""

    async def render(ct: Container) -> str:
        return f"{getattr(Scheduling.from_settings(ct.settings), field)}\n"

    async def write(ct: Container, text: str) -> None:
        low, high = limits(ct)
        value = parse_number(text, name, low, high)
        old = getattr(Scheduling.from_settings(ct.settings), field)
        await ct.update_settings(
            {key: str(value)},
            f"{name}: {old} -> {value}",
            lambda settings: scheduling.apply(ct.host.cgroups, ct.ctid, settings),
        )

    return ContainerFile(name, render, write)


def _fixed(low: int, high: int) -> Limits:
    return lambda ct: (low, high)


FILES: tuple[ContainerFile, ...] = (
    _knob("cpuunits", "CPUUNITS", "cpuunits", _fixed(CPUUNITS_MIN, CPUUNITS_MAX)),
    # cpulimit is a percent of one CPU: 200 is two full CPUs.
    _knob("cpulimit", "CPULIMIT", "cpulimit", lambda ct: (0, 100 * _cpu_count(ct))),
    _knob("cpus", "CPUS", "cpus", lambda ct: (0, _cpu_count(ct))),
    _knob("ioprio", "IOPRIO", "ioprio", _fixed(IOPRIO_MIN, IOPRIO_MAX)),
)
