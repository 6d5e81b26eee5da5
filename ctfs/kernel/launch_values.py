"""What ctfsd sends the launcher to start a container's init, and what comes back.

Frozen values, no I/O, sent as JSON (part of ``ctfs.kernel.api``, which
re-exports them).  The spawner imports this module on every container start, so
it imports nothing but dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchRequest:
    """Everything the launcher needs to make a container's init (sent as JSON)."""

    root: str
    hostname: str
    init: list[str]
    cgroup_join: list[str]
    drop_caps: list[int]
    env: dict[str, str]
    hold: bool = False
    # The first host id of the container's private id range; None: the host's ids.
    id_base: int | None = None
    # Init (or what makes it) is born in this cgroup2 directory; see Cgroups.birth_cgroup.
    cgroup_birth: str | None = None
    # [host path, path inside]: files and directories of ctfs bound into the container
    # (see ctfs.kernel.view_mounts); a directory's parent inside gets a tmpfs of its own.
    views: list[list[str]] | None = None


@dataclass(frozen=True)
class LaunchReply:
    """The host PID of the container's init, or why there is none."""

    pid: int | None = None
    error: str = ""
    # A failed start's process that ctfsd, its subreaper, is left to reap.
    orphan: int | None = None
