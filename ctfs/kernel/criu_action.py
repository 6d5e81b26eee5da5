"""CRIU's action script for a restore: ``python -m ctfs.kernel.criu_action``.

CRIU runs it at every stage of a restore, with the stage in CRTOOLS_SCRIPT_ACTION.
At post-setup-namespaces the container's init has left its top cgroup for its own
and nothing else is restored yet: the controllers the container had enabled below
its cgroups (CTFS_SUBTREE_CONTROL: "DIRECTORY CONTROLLER..." lines, parents first,
checked by ctfsd) are enabled again here, before the processes that use their
files are.  CRIU has also just recreated the container's veth pair (the
host end down, bare): the host end is readied
here, from CTFS_HOST_VETH and CTFS_ADDRESSES, which ctfsd put in CRIU's environment.
With CTFS_MAKE_VETH (a container in a user namespace, whose veth CRIU cannot make)
the pair is made here, eth0 in the network namespace of CRTOOLS_INIT_PID.
A non-zero exit aborts the restore.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    if os.environ.get("CRTOOLS_SCRIPT_ACTION") != "post-setup-namespaces":
        return 0
    import ipaddress

    from ctfs.kernel.api import NetworkError
    from ctfs.kernel.network import make_restored_veth, ready_restored_host_end

    for line in os.environ.get("CTFS_SUBTREE_CONTROL", "").splitlines():
        directory, *controllers = line.split()
        try:
            with open(os.path.join(directory, "cgroup.subtree_control"), "w") as f:
                f.write(" ".join(f"+{c}" for c in controllers))
        except OSError as exc:
            print(f"ctfs: cannot enable {controllers} in {directory}: {exc}", file=sys.stderr)
            return 1
    name = os.environ.get("CTFS_HOST_VETH", "")
    if not name:
        return 0
    addresses = [ipaddress.ip_address(a) for a in os.environ.get("CTFS_ADDRESSES", "").split()]
    try:
        if os.environ.get("CTFS_MAKE_VETH"):
            # The restored sockets bind their addresses next: they must be there.
            make_restored_veth(name, int(os.environ["CRTOOLS_INIT_PID"]), addresses)
        else:
            ready_restored_host_end(name, addresses)
    except (NetworkError, OSError) as exc:
        print(f"ctfs: cannot ready {name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
