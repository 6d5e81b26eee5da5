"""The cgroups a container made inside its own, carried through its dump file.

CRIU makes again only the cgroups that held tasks, as the host's root, and on
cgroup v2 enables no controller in them: a systemd inside would then fail on the
empty ones it watches (and on memory.events files that are not there) and could
not manage the rest.  So a checkpoint records every cgroup below the container's
own and the controllers it enabled there, and a restore makes them again before
CRIU runs; their controllers are enabled during the restore (CRIU's action
script, at setup-namespaces).  The manifest is input: the backends validate every
name.
"""

from __future__ import annotations

import trio

from ctfs.errors import invalid, kernel_failed
from ctfs.kernel.api import SubtreeControls
from ctfs.model import dumpfile, lifecycle
from ctfs.model.container import Container
from ctfs.policy import idmap

# The manifest's keys: the cgroups' names, and the controllers enabled below them.
OWN_CGROUPS_KEY = "own_cgroups"
OWN_CONTROLLERS_KEY = "own_controllers"


async def record(ct: Container) -> dict[str, object]:
    """The manifest entries of a container whose processes are stopped."""
    cgroups = ct.backends.cgroups
    names = await trio.to_thread.run_sync(cgroups.own_cgroups, ct.ctid)
    enabled = await trio.to_thread.run_sync(cgroups.own_controllers, ct.ctid)
    return {OWN_CGROUPS_KEY: names, OWN_CONTROLLERS_KEY: enabled}


async def remake(ct: Container, manifest: dumpfile.Manifest) -> SubtreeControls:
    """Make the cgroups ``record`` listed, owned by the container's root, and return
    the controllers to enable in them during the restore (see
    ``Cgroups.make_own_cgroups``); or clean up its cgroups and raise (a damaged list:
    EINVAL)."""
    names = manifest.info.get(OWN_CGROUPS_KEY, [])
    enabled = manifest.info.get(OWN_CONTROLLERS_KEY, {})
    if not _strings(names) or not (
        isinstance(enabled, dict) and all(_strings(v) for v in enabled.values())
    ):
        await lifecycle.clean_up_cgroups(ct)
        raise invalid("the dump file's list of the container's cgroups is damaged")
    make = ct.backends.cgroups.make_own_cgroups
    uid = idmap.base_of(ct.settings)
    try:
        return await trio.to_thread.run_sync(make, ct.ctid, names, uid, enabled)
    except (OSError, ValueError) as exc:
        await lifecycle.clean_up_cgroups(ct)
        raise kernel_failed(f"cannot make the container's own cgroups again: {exc}") from exc


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
