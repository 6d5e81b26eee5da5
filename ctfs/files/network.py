"""ip and nameserver: the container's addresses and the name servers it is given."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctfs import netaddr
from ctfs.files.base import ContainerFile

if TYPE_CHECKING:
    from ctfs.container import Container


async def _addresses(ct: Container) -> str:
    return netaddr.render_lines(ct.addresses)


async def _set_addresses(ct: Container, text: str) -> None:
    await ct.set_addresses(text)


async def _nameservers(ct: Container) -> str:
    return netaddr.render_lines(ct.nameservers_in(ct.settings) or [])


async def _set_nameservers(ct: Container, text: str) -> None:
    await ct.set_nameservers(netaddr.parse_nameservers(text))


FILES = (
    ContainerFile("ip", _addresses, _set_addresses),
    ContainerFile("nameserver", _nameservers, _set_nameservers),
)
