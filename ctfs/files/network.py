"""ip and nameserver: the container's addresses and the name servers it is given."""

from __future__ import annotations

from ctfs.errors import not_permitted
from ctfs.files.nodes import ControlFile
from ctfs.model import apply, network
from ctfs.model.caller import Caller
from ctfs.model.container import Container
from ctfs.policy import netaddr


async def _addresses(ct: Container, caller: Caller) -> str:
    return netaddr.render_lines(ct.addresses)


async def _set_addresses(ct: Container, text: str, caller: Caller) -> None:
    await network.set_addresses(ct, text)


async def _nameservers(ct: Container, caller: Caller) -> str:
    return netaddr.render_lines(apply.nameservers_in(ct.settings) or [])


async def _set_nameservers(ct: Container, text: str, caller: Caller) -> None:
    value = netaddr.parse_nameservers(text)
    if value == netaddr.INHERIT and not caller.is_host:
        raise not_permitted("inherit copies the host's name servers; only the host may ask")
    await network.set_nameservers(ct, value)


FILES = (
    ControlFile("ip", _addresses, _set_addresses),
    ControlFile("nameserver", _nameservers, _set_nameservers),
)
