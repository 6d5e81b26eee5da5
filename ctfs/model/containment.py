"""Is a restored process tree wholly inside its container?  Checked before it runs."""

from __future__ import annotations

import contextlib
import os
import signal

from ctfs.errors import kernel_failed
from ctfs.model.container import Container
from ctfs.policy import idmap

# Namespaces a restored process must not share with the host (and its user
# namespace too, for a container with a private id range).
CONTAINED = ("pid", "mnt", "net", "uts", "ipc")


def checked_tree(ct: Container, init: int) -> list[int]:
    """The restored tree (still stopped), once checked to be wholly inside ``ct``.

    A dump is data from anywhere: one made of a host process would otherwise run
    in the host's namespaces.  Every process of the tree must be in the container's
    cgroups and in none of the host's namespaces, and init must be PID 1 of its
    own pid namespace with the private area as its root.  CtfsError otherwise.
    """
    processes = ct.backends.processes
    host = processes.own_placement()
    first = processes.placement(init)
    if first is None:
        raise kernel_failed("the restored init is gone")
    private = ct.root.stat()
    if first.root != (private.st_dev, private.st_ino):
        raise kernel_failed("the restored init's root is not the container's private area")
    base = idmap.base_of(ct.settings)
    if base is not None and processes.uid_map(init) != idmap.render(ct.settings):
        raise kernel_failed("the restored init is not in a user namespace of the container's ids")
    contained = (*CONTAINED, "user") if base is not None else CONTAINED
    tree = processes.tree(init)
    for pid in tree:
        place = processes.placement(pid)
        if place is None:
            continue  # ended meanwhile
        shared = [ns for ns in contained if place.namespaces[ns] == host.namespaces[ns]]
        if shared:
            raise kernel_failed(
                f"restored PID {pid} is in the host's {', '.join(shared)} namespace"
            )
        if place.pid_depth < first.pid_depth:
            raise kernel_failed(f"restored PID {pid} is outside the container's pid namespace")
        if ct.backends.cgroups.container_of(pid) != ct.ctid:
            raise kernel_failed(f"restored PID {pid} is outside the container's cgroups")
    return tree


def kill_tree(ct: Container, init: int) -> None:
    for pid in ct.backends.processes.tree(init):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
