"""User namespaces for containers: made with their id mapping, and idmapped mounts.

A container's root is an unprivileged range of host ids (``base`` .. ``base+size-1``
for ids 0 .. size-1 inside).  Used by the spawner (a fresh fork per container,
single-threaded), by ``ctfs exec`` and by CRIU restores; standard library and
``ctfs.kernel.libc`` only, so ``ctfs exec`` stays cheap to start.
"""

from __future__ import annotations

import os

from ctfs.kernel import libc


def id_map(base: int, size: int) -> str:
    return f"0 {base} {size}\n"


def make(base: int, size: int) -> int:
    """A new user namespace mapping ids 0..size-1 to base..; a descriptor of it.

    A helper child unshares it and waits while this process, still privileged on
    the host, writes the id maps and opens it; then it exits.  (A container's own
    namespaces are made by ``ctfs.kernel.spawn_private``, which needs them owned by
    the new user namespace and an init inside.)
    """
    to_parent_r, to_parent_w = os.pipe2(os.O_CLOEXEC)
    to_child_r, to_child_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the helper
        try:
            libc.unshare(libc.CLONE_NEWUSER)
            os.write(to_parent_w, b"u")
            os.read(to_child_r, 1)  # holds the namespace until it is opened
        finally:
            os._exit(0)
    os.close(to_parent_w)
    os.close(to_child_r)
    try:
        if os.read(to_parent_r, 1) != b"u":
            raise OSError("the user namespace helper failed to unshare")
        for which in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{which}", "w") as f:
                f.write(id_map(base, size))
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.write(to_child_w, b"x")
        os.close(to_child_w)
        os.close(to_parent_r)
        os.waitpid(pid, 0)


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
    be_root()


def be_root() -> None:
    """In a user namespace whose map is written: uid and gid 0, no supplementary groups."""
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
