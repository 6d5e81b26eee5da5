"""limits and beancounters: OpenVZ's user beancounters, per container and for the host."""

from __future__ import annotations

from ctfs.files.nodes import ControlFile, HostFile
from ctfs.model import resources
from ctfs.model.caller import Caller
from ctfs.model.container import Container
from ctfs.model.host import Host
from ctfs.policy import beancounters


async def _limits(ct: Container, caller: Caller) -> str:
    return resources.limits_text(ct)


async def _set_limits(ct: Container, text: str, caller: Caller) -> None:
    await resources.set_limits(ct, beancounters.parse_limits(text))


async def own_beancounters(ct: Container, caller: Caller) -> str:
    """The container's block of /proc/user_beancounters (none while it does not run)."""
    counters = (await resources.counters([ct])).get(ct.ctid)
    if counters is None:  # not running: OpenVZ shows no block for a stopped container
        return beancounters.render([])
    return beancounters.render([beancounters.render_block(ct.ctid, counters)])


async def _host_beancounters(host: Host, caller: Caller) -> str:
    every = await host.beancounters(host.sorted_ctids())
    return beancounters.render(
        beancounters.render_block(ctid, every[ctid]) for ctid in sorted(every)
    )


FILES = (
    ControlFile("limits", _limits, _set_limits),
    ControlFile("beancounters", own_beancounters),
)

HOST_FILES = (HostFile("beancounters", _host_beancounters),)
