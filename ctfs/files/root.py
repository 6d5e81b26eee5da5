"""Files at the top of the mount: ``version``, ``templates``, ``identity``, ``peers``."""

from __future__ import annotations

from ctfs import __version__
from ctfs.files.nodes import HostFile
from ctfs.model.caller import Caller
from ctfs.model.host import Host


async def _version(host: Host, caller: Caller) -> str:
    return f"ctfs {__version__}\n"


async def _templates(host: Host, caller: Caller) -> str:
    return "".join(f"{name}\n" for name in host.template_names())


async def _identity(host: Host, caller: Caller) -> str:
    return host.peer_book().identity_text()


async def _peers(host: Host, caller: Caller) -> str:
    return host.peer_book().peers_text()


async def _set_peers(host: Host, text: str, caller: Caller) -> None:
    await host.peer_book().replace(text)


FILES = (
    HostFile("version", _version),
    HostFile("templates", _templates),
    HostFile("identity", _identity),
    HostFile("peers", _peers, _set_peers),
)
