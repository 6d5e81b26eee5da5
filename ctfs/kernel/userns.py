"""User namespaces for containers: made with their id mapping, and idmapped mounts.

A container's root is an unprivileged range of host ids (``base`` .. ``base+size-1``
for ids 0 .. size-1 inside).  Its other namespaces are created by a process inside
the new user namespace, so they belong to it: the container's root administers its
own network, host name and pid namespace, and nothing of the host's.

Used by the spawner (a fresh fork per container, single-threaded) and by CRIU
restores; standard library and ``ctfs.kernel.libc`` only.
"""

from __future__ import annotations

import os

from ctfs.kernel import libc

# The namespaces a container has besides its user namespace, by /proc/PID/ns name.
OWNED = {
    "net": libc.CLONE_NEWNET,
    "uts": libc.CLONE_NEWUTS,
    "ipc": libc.CLONE_NEWIPC,
    "cgroup": libc.CLONE_NEWCGROUP,
    "pid_for_children": libc.CLONE_NEWPID,
}


def id_map(base: int, size: int) -> str:
    return f"0 {base} {size}\n"


def make(base: int, size: int, owned: tuple[str, ...] = ()) -> dict[str, int]:
    """A new user namespace mapping ids 0..size-1 to base.., and the ``owned``
    namespaces (names of ``OWNED``) created inside it.  File descriptors by name
    ("user" and each of ``owned``); the caller closes them.

    A helper child unshares them and waits while this process, still privileged
    on the host, writes the id maps and opens the namespaces; then it exits.
    """
    flags = 0
    for name in owned:
        flags |= OWNED[name]
    to_parent_r, to_parent_w = os.pipe2(os.O_CLOEXEC)
    to_child_r, to_child_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the helper
        status = 1
        try:
            libc.unshare(libc.CLONE_NEWUSER)
            os.write(to_parent_w, b"u")
            if os.read(to_child_r, 1) == b"m":
                if flags:
                    libc.unshare(flags)
                os.write(to_parent_w, b"n")
                os.read(to_child_r, 1)  # holds the namespaces until they are opened
                status = 0
        finally:
            os._exit(status)
    os.close(to_parent_w)
    os.close(to_child_r)
    fds: dict[str, int] = {}
    try:
        if os.read(to_parent_r, 1) != b"u":
            raise OSError("the user namespace helper failed to unshare")
        for which in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{which}", "w") as f:
                f.write(id_map(base, size))
        os.write(to_child_w, b"m")
        if os.read(to_parent_r, 1) != b"n":
            raise OSError("the user namespace helper failed to make its namespaces")
        for name in ("user", *owned):
            fds[name] = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    finally:
        os.write(to_child_w, b"x")
        os.close(to_child_w)
        os.close(to_parent_r)
        os.waitpid(pid, 0)
    return fds


def mount_idmapped(source: str, target: str, userns_fd: int) -> None:
    """Mount ``source`` at ``target`` showing its ids through ``userns_fd``'s mapping:
    a file owned by 0 on disk shows as owned by the namespace's root."""
    tree = libc.open_tree(source, libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC | libc.AT_RECURSIVE)
    try:
        libc.idmap_mount(tree, userns_fd)
        libc.move_mount(tree, target)
    finally:
        os.close(tree)


def become_root(userns_fd: int) -> None:
    """Join the user namespace and be its root (uid and gid 0, no supplementary groups).

    The caller must be single-threaded and have its root at its mount namespace's root.
    """
    libc.setns(userns_fd, libc.CLONE_NEWUSER)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
