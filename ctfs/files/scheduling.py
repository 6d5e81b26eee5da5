"""cpuunits, cpulimit, cpus and ioprio: one number each, applied live and saved."""

from __future__ import annotations

from collections.abc import Callable

from ctfs.files.nodes import ControlFile
from ctfs.model import resources
from ctfs.model.caller import Caller
from ctfs.model.container import Container
from ctfs.policy.scheduling import (
    CPUUNITS_MAX,
    CPUUNITS_MIN,
    IOPRIO_MAX,
    IOPRIO_MIN,
    Scheduling,
    parse_number,
)

Limits = Callable[[Container], tuple[int, int]]


def _knob(name: str, key: str, field: str, limits: Limits) -> ControlFile:
    """A file holding one integer setting ``field`` saved as ``key`` in ctid.conf."""

    async def render(ct: Container, caller: Caller) -> str:
        return f"{getattr(Scheduling.from_settings(ct.settings), field)}\n"

    async def write(ct: Container, text: str, caller: Caller) -> None:
        low, high = limits(ct)
        value = parse_number(text, name, low, high)
        old = getattr(Scheduling.from_settings(ct.settings), field)
        await resources.set_number(ct, name, key, old, value)

    return ControlFile(name, render, write)


def _fixed(low: int, high: int) -> Limits:
    return lambda ct: (low, high)


FILES: tuple[ControlFile, ...] = (
    _knob("cpuunits", "CPUUNITS", "cpuunits", _fixed(CPUUNITS_MIN, CPUUNITS_MAX)),
    # cpulimit is a percent of one CPU: 200 is two full CPUs.
    _knob("cpulimit", "CPULIMIT", "cpulimit", lambda ct: (0, 100 * resources.cpu_count(ct))),
    _knob("cpus", "CPUS", "cpus", lambda ct: (0, resources.cpu_count(ct))),
    _knob("ioprio", "IOPRIO", "ioprio", _fixed(IOPRIO_MIN, IOPRIO_MAX)),
)
