"""A container's identity and lifecycle: state, template, hostname, idmap, procs,
events, and which of its files it may write from inside (delegated)."""

from __future__ import annotations

import trio

from ctfs.files.nodes import ControlFile
from ctfs.model import network, settings, state
from ctfs.model.caller import Caller
from ctfs.model.container import Container
from ctfs.policy import delegation, idmap
from ctfs.policy.values import parse_hostname, single_word


async def _state(ct: Container, caller: Caller) -> str:
    return f"{ct.state.value}\n"


async def _set_state(ct: Container, text: str, caller: Caller) -> None:
    await state.request(ct, single_word(text, "running, stopped or frozen"))


async def _template(ct: Container, caller: Caller) -> str:
    return f"{ct.template_name}\n"


async def _set_template(ct: Container, text: str, caller: Caller) -> None:
    await state.set_template(ct, single_word(text, "the name of an installed template"))


async def _hostname(ct: Container, caller: Caller) -> str:
    return f"{ct.hostname}\n"


async def _set_hostname(ct: Container, text: str, caller: Caller) -> None:
    await network.set_hostname(ct, parse_hostname(text))


async def _idmap(ct: Container, caller: Caller) -> str:
    return idmap.render(ct.settings)


async def _set_idmap(ct: Container, text: str, caller: Caller) -> None:
    await state.set_id_range(ct, idmap.parse_mode(text))


async def _delegated(ct: Container, caller: Caller) -> str:
    return delegation.render(ct.settings)


async def _set_delegated(ct: Container, text: str, caller: Caller) -> None:
    names = delegation.parse(text)
    await settings.update(ct, {delegation.KEY: names}, f"delegated: {names or 'none'}")


async def _procs(ct: Container, caller: Caller) -> str:
    return "".join(f"{pid}\n" for pid in ct.pids())


async def _events(ct: Container, caller: Caller) -> str:
    return await trio.to_thread.run_sync(ct.events.render)


FILES = (
    ControlFile("state", _state, _set_state, exclusive=True, settings_only=False),
    ControlFile("template", _template, _set_template, settings_only=False),
    ControlFile("hostname", _hostname, _set_hostname),
    ControlFile("idmap", _idmap, _set_idmap),
    ControlFile("delegated", _delegated, _set_delegated),
    ControlFile("procs", _procs),
    ControlFile("events", _events),
)
