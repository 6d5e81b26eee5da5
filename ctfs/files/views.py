"""proc/ and sys/: the container's own /proc and /sys files, as it sees them inside.

Each is bound over the kernel's file of the same name inside the running container
(``ctfs.model.views.BOUND``); the host reads them here.  ``proc/user_beancounters``
and ``proc/vz/veinfo`` are OpenVZ's files, which procfs has no entry for: inside
they are at /ctfs/CTID/proc/.
"""

from __future__ import annotations

from ctfs.files.beancounters import own_beancounters
from ctfs.files.nodes import ControlFile, Directory
from ctfs.model import views
from ctfs.model.caller import Caller
from ctfs.model.container import Container
from ctfs.policy import procviews


async def _meminfo(ct: Container, caller: Caller) -> str:
    return procviews.meminfo(await views.reading(ct, memory=True))


async def _swaps(ct: Container, caller: Caller) -> str:
    return procviews.swaps(await views.reading(ct, memory=True))


async def _diskstats(ct: Container, caller: Caller) -> str:
    return procviews.diskstats(await views.reading(ct, disk=True))


async def _cpuinfo(ct: Container, caller: Caller) -> str:
    reading = await views.reading(ct)
    return procviews.cpuinfo(ct.backends.processes.cpuinfo(), reading.cpus)


async def _online(ct: Container, caller: Caller) -> str:
    return procviews.cpu_online((await views.reading(ct)).cpus)


async def _uptime(ct: Container, caller: Caller) -> str:
    return procviews.uptime(await views.reading(ct, clock=True))


async def _stat(ct: Container, caller: Caller) -> str:
    return procviews.stat(await views.reading(ct, tasks=True, clock=True), views.now())


async def _loadavg(ct: Container, caller: Caller) -> str:
    reading = await views.reading(ct, tasks=True)
    return procviews.loadavg(reading.load, reading.tasks)


async def _veinfo(ct: Container, caller: Caller) -> str:
    processes = len(ct.pids()) if ct.init is not None else 0
    return procviews.veinfo(ct.ctid, processes, [str(a) for a in ct.addresses])


def _nested(path: str, leaf: ControlFile) -> Directory:
    """The directories of ``path`` (a/b/c) around ``leaf``."""
    first, _, rest = path.partition("/")
    return Directory(first, (_nested(rest, leaf) if rest else leaf,))


FILES = (
    Directory(
        "proc",
        (
            ControlFile("meminfo", _meminfo),
            ControlFile("cpuinfo", _cpuinfo),
            ControlFile("stat", _stat),
            ControlFile("uptime", _uptime),
            ControlFile("loadavg", _loadavg),
            ControlFile("swaps", _swaps),
            ControlFile("diskstats", _diskstats),
            ControlFile("user_beancounters", own_beancounters),
            Directory("vz", (ControlFile("veinfo", _veinfo),)),
        ),
    ),
    _nested("sys/devices/system/cpu", ControlFile("online", _online)),
)
