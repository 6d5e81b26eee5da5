"""Joining a running container: its cgroups, namespaces, root and security baseline.

Used by ``ctfs exec``/``ctfs enter``, a single-threaded process that then forks the
command.  Every ``ctfs exec`` pays for this module's imports, so it keeps to os and
``ctfs.kernel.libc``.
"""

from __future__ import annotations

import os

from ctfs.kernel import CGROUP_ROOT, libc, userns

# Order matters: the mount namespace last, since /proc paths change meaning after it.
# time: a restored container runs in the time namespace CRIU made for it; a process
# joining it must see the same clocks, or the next checkpoint cannot be restored.
ALL_NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "time", "mnt")


def _cgroup_dirs(pid: int) -> tuple[list[str], str | None]:
    """The cgroup directories of ``pid``: the v1 ones, and the unified one.

    v1 controllers at CGROUP_ROOT/<controller>, named v1 hierarchies (name=systemd)
    at CGROUP_ROOT/<name>, the unified one at CGROUP_ROOT/unified on a hybrid host
    or at CGROUP_ROOT itself on a unified one.  ctfsd gives a container a cgroup in
    each; what runs inside must be in all of them, or a checkpoint of the
    container finds it outside the container's cgroup namespace.
    """
    unified = (
        CGROUP_ROOT
        if os.path.exists(f"{CGROUP_ROOT}/cgroup.controllers")
        else f"{CGROUP_ROOT}/unified"
    )
    dirs: list[str] = []
    born_into: str | None = None
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                if os.path.exists(f"{unified}/cgroup.procs"):
                    born_into = f"{unified}/{path.lstrip('/')}".rstrip("/")
                continue
            bases = [f"{CGROUP_ROOT}/{c.removeprefix('name=')}" for c in controllers.split(",")]
            for base in bases:
                if os.path.exists(f"{base}/cgroup.procs"):
                    dirs.append(f"{base}/{path.lstrip('/')}".rstrip("/"))
                    break
    return dirs, born_into


def _bounding_set(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    raise OSError(f"no CapBnd for {pid}")


class Joined:
    """What a joining process keeps for the child it forks next (see ``join_container``).

    ``birth``: the container's unified cgroup, for ``libc.fork_into_cgroup``;
    ``user``: its user namespace, which the child enters (``enter_user``);
    ``cgroup``: its cgroup namespace, when the child is born into ``birth``: the
    child enters it (``enter_user``), because with nsdelegate (every cgroup v2 host)
    the kernel refuses a clone3 into a cgroup from outside the caller's cgroup
    namespace (ENOENT).  A plain class: every ctfs exec imports this module, and
    dataclasses would cost it ``re``.
    """

    __slots__ = ("birth", "cgroup", "user")

    def __init__(self, birth: int | None, user: int | None) -> None:
        self.birth = birth
        self.user = user
        self.cgroup: int | None = None


def join_container(init_pid: int) -> Joined:
    """Move the calling (single-threaded) process into the container of ``init_pid``,
    all but its user namespace.

    Afterwards its root and cwd are the container's root; the pid namespace applies
    to children, so the caller forks before running anything, with
    ``libc.fork_into_cgroup(joined.birth)``: the child is born in the container's
    unified cgroup rather than moved there (moving costs 8-14 ms, and from inside
    the user namespace it is not allowed at all).  The child then calls
    ``enter_user`` and becomes the container's root.  This process stays the host's
    root, outside the container's user namespace.

    The process is made non-dumpable first, as runc does since CVE-2019-5736: its
    children are visible inside the container until they exec, and until then
    they map the host's interpreter and libraries.  Non-dumpable, their /proc
    entries belong to the host's root and ptrace needs CAP_SYS_PTRACE; the exec'd
    command is dumpable again as usual.
    """
    libc.prctl(libc.PR_SET_DUMPABLE, 0)
    # Only the namespaces that differ from ours: a namespace of the host's that a
    # container shares (say its time namespace) needs no entering.
    wanted = [
        ns
        for ns in ("user", *ALL_NAMESPACES)
        if os.readlink(f"/proc/{init_pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    ]
    ns_fds = {ns: os.open(f"/proc/{init_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in wanted}
    joined = Joined(birth=None, user=ns_fds.pop("user", None))
    try:
        # "0" in tasks moves the calling thread without the kernel's global
        # threadgroup lock (see CgroupsV1.join_files); the caller is single-threaded.
        v1_dirs, born_into = _cgroup_dirs(init_pid)
        for cgroup_dir in v1_dirs:
            with open(f"{cgroup_dir}/tasks", "w") as f:
                f.write("0")
        if born_into is not None:
            joined.birth = os.open(born_into, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Whatever init may not have, the joining process may not have either.
        allowed = _bounding_set(init_pid)
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
        for cap in range(last_cap + 1):
            if not allowed & (1 << cap):
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
        # As the host's root: the container's namespaces belong to its user
        # namespace, of which the host's root is an ancestor.
        if joined.birth is not None and "cgroup" in ns_fds:
            joined.cgroup = ns_fds.pop("cgroup")
        for ns in ALL_NAMESPACES:
            if ns in ns_fds:
                libc.setns(ns_fds[ns])
    finally:
        for fd in ns_fds.values():
            os.close(fd)
    return joined


def enter_user(joined: Joined) -> None:
    """In the forked child: enter the container's cgroup namespace if the parent
    left it to the child, then become root of its user namespace, if it has one."""
    if joined.cgroup is not None:
        libc.setns(joined.cgroup)
    if joined.user is None:
        return
    userns.become_root(joined.user)
