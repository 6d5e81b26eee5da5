"""Files at the top of the mount: ``version`` and ``templates``."""

from __future__ import annotations

from ctfs import __version__
from ctfs.files.nodes import HostFile
from ctfs.model.caller import Caller
from ctfs.model.host import Host


async def _version(host: Host, caller: Caller) -> str:
    return f"ctfs {__version__}\n"


async def _templates(host: Host, caller: Caller) -> str:
    return "".join(f"{name}\n" for name in host.template_names())


FILES = (
    HostFile("version", _version),
    HostFile("templates", _templates),
)
