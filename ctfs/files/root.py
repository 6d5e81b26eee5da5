"""Files at the top of the mount: ``version`` and ``templates``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctfs import __version__
from ctfs.files.base import RootFile

if TYPE_CHECKING:
    from ctfs.host import Host


async def _version(host: Host) -> str:
    return f"ctfs {__version__}\n"


async def _templates(host: Host) -> str:
    return "".join(f"{name}\n" for name in host.templates.names())


FILES = (
    RootFile("version", _version),
    RootFile("templates", _templates),
)
