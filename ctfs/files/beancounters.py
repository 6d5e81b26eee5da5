"""limits and beancounters: OpenVZ's user beancounters, per container and for the host."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctfs import beancounters, ubc
from ctfs.files.base import ContainerFile, RootFile

if TYPE_CHECKING:
    from ctfs.container import Container
    from ctfs.host import Host


async def _limits(ct: Container) -> str:
    return beancounters.limits_text(ct.settings)


async def _set_limits(ct: Container, text: str) -> None:
    changes = ubc.parse_limits(text)
    summary = ", ".join(f"{name} {ubc.conf_value(pair)}" for name, pair in changes.items())
    await ct.update_settings(
        {ubc.RESOURCES[name].conf_key: ubc.conf_value(pair) for name, pair in changes.items()},
        f"limits: {summary}",
        lambda settings: beancounters.apply(ct.host.cgroups, ct.ctid, settings),
    )


async def _block(ct: Container) -> str:
    counters = (await ct.host.beancounters([ct.ctid])).get(ct.ctid)
    if counters is None:  # not running: OpenVZ shows no block for a stopped container
        return ubc.render([])
    return ubc.render([ubc.render_block(ct.ctid, counters)])


async def _host_beancounters(host: Host) -> str:
    every = await host.beancounters(host.sorted_ctids())
    return ubc.render(ubc.render_block(ctid, every[ctid]) for ctid in sorted(every))


FILES = (
    ContainerFile("limits", _limits, _set_limits),
    ContainerFile("beancounters", _block),
)

ROOT_FILES = (RootFile("beancounters", _host_beancounters),)
