"""Who is asking: the host, or a process inside one container.

Found from the pid of a FUSE request.  The requesting thread is blocked in its
system call while the request is served, so its pid cannot be reused meanwhile;
a pid that is gone already (or cannot be read) is a caller ctfs cannot place.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctfs.kernel.api import Backends


@dataclass(frozen=True)
class Caller:
    pid: int
    # The container the process is in; None for the host (or an unplaced caller).
    ctid: int | None = None
    placed: bool = True

    @property
    def is_host(self) -> bool:
        return self.placed and self.ctid is None

    def describe(self) -> str:
        if self.is_host:
            return "the host"
        if self.ctid is not None:
            return f"container {self.ctid}"
        return f"a process ctfs cannot place (PID {self.pid})"


# ctfsd itself, and its own background work.
HOST = Caller(pid=0)


def identify(backends: Backends, pid: int) -> Caller:
    """The caller behind PID ``pid`` (as the FUSE request gives it)."""
    same = backends.processes.same_pid_namespace(pid)
    if same:
        return Caller(pid)
    if same is None:
        return Caller(pid, placed=False)
    ctid = backends.cgroups.container_of(pid)
    return Caller(pid, ctid=ctid, placed=ctid is not None)
