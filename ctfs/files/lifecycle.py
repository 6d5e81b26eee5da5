"""A container's identity and lifecycle: state, template, hostname, procs, events."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ctfs.files.base import ContainerFile
from ctfs.values import parse_hostname, single_word

if TYPE_CHECKING:
    from ctfs.container import Container


async def _state(ct: Container) -> str:
    return f"{ct.state.value}\n"


async def _set_state(ct: Container, text: str) -> None:
    await ct.request_state(single_word(text, "running, stopped or frozen"))


async def _template(ct: Container) -> str:
    return f"{ct.template_name}\n"


async def _set_template(ct: Container, text: str) -> None:
    await ct.set_template(single_word(text, "the name of an installed template"))


async def _hostname(ct: Container) -> str:
    return f"{ct.hostname}\n"


async def _set_hostname(ct: Container, text: str) -> None:
    await ct.set_hostname(parse_hostname(text))


async def _procs(ct: Container) -> str:
    return "".join(f"{pid}\n" for pid in ct.pids())


async def _events(ct: Container) -> str:
    return await trio.to_thread.run_sync(ct.events.render)


FILES = (
    ContainerFile("state", _state, _set_state, exclusive=True),
    ContainerFile("template", _template, _set_template),
    ContainerFile("hostname", _hostname, _set_hostname),
    ContainerFile("procs", _procs),
    ContainerFile("events", _events),
)
