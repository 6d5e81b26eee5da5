"""What a container's mount namespace holds: its private area as root, its own /proc,
a read-only /sys, a private /dev; and the pivot into it.

Used by the spawner in the process that builds the container's mounts, which
still has the host's privileges: nothing mounted here propagates to the host (the
mount namespace is made private first).  Standard library and libc only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ctfs.kernel import libc, userns

# (name, major, minor) of the nodes every container's private /dev gets.
DEV_NODES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
DEV_LINKS = (
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)

# Host-wide knobs in /proc that stay visible but must not be written.
READ_ONLY_PROC_ENTRIES = ("sysrq-trigger", "irq", "bus")


@dataclass(frozen=True)
class Owner:
    """A container with a private id range: how its mounts are made for it.

    ``base`` is the host id of its root; ``pidns`` the path of its pid namespace,
    which its /proc shows (mounted from outside it, by a process that is not in it).
    """

    base: int
    pidns: str
    userns_fd: int  # the private area is shown through this namespace's id map


class Step(Exception):
    """A failed setup step; its text is what ctfsd reports."""


def step(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except OSError as exc:
        raise Step(f"{what}: {exc.strerror or exc}") from exc


NOSUID_NODEV = libc.MS_NOSUID | libc.MS_NODEV
DEV_FLAGS = libc.MS_NOSUID | libc.MS_NOEXEC


def mount_filesystems(root: str, owner: Owner | None = None, cgroup2: bool = False) -> None:
    """The container's filesystems under ``root``, not yet pivoted into.

    ``cgroup2``: the caller is in the container's cgroup namespace, whose root is
    the container's own cgroup in the host's cgroup2 hierarchy; it is mounted at
    /sys/fs/cgroup, as systemd's Container Interface asks, so that a systemd inside
    finds its cgroup tree ready (systemd 256 and later run on nothing else).
    """
    # Nothing mounted from here on may propagate back to the host.
    step("make mounts private", libc.mount, None, "/", None, libc.MS_REC | libc.MS_PRIVATE, None)
    # pivot_root needs the new root to be a mount point of its own.
    if owner is None:
        step("bind private area", libc.mount, root, root, None, libc.MS_BIND | libc.MS_REC, None)
    else:
        step("idmap the private area", userns.mount_idmapped, root, root, owner.userns_fd)
    _mount_proc(root, owner)
    step(
        "mount /sys",
        libc.mount,
        "sysfs",
        f"{root}/sys",
        "sysfs",
        libc.MS_RDONLY | NOSUID_NODEV | libc.MS_NOEXEC,
        None,
    )
    if cgroup2:
        step(
            "mount /sys/fs/cgroup",
            libc.mount,
            "cgroup2",
            f"{root}/sys/fs/cgroup",
            "cgroup2",
            NOSUID_NODEV | libc.MS_NOEXEC,
            None,
        )
    _mount_dev(f"{root}/dev", owner)


def _mount_proc(root: str, owner: Owner | None) -> None:
    nosuid_nodev = NOSUID_NODEV
    proc = f"{root}/proc"
    options = f"pidns={owner.pidns}" if owner is not None else None
    step("mount /proc", libc.mount, "proc", proc, "proc", nosuid_nodev | libc.MS_NOEXEC, options)
    if owner is not None:
        # The host's root owns /proc/sys and the host-wide knobs, and the container's
        # root is not that root: writes are refused by ownership.  No read-only
        # binds over them, or the kernel would refuse the container a proc of its
        # own (a mount covering part of proc makes it "not fully visible").
        return
    # /proc/sys is read-only except net, which the container's netns makes safe.
    step("bind /proc/sys", libc.mount, f"{proc}/sys", f"{proc}/sys", None, libc.MS_BIND, None)
    step(
        "bind /proc/sys/net",
        libc.mount,
        f"{proc}/sys/net",
        f"{proc}/sys/net",
        None,
        libc.MS_BIND,
        None,
    )
    ro_remount = libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | nosuid_nodev | libc.MS_NOEXEC
    step("make /proc/sys read-only", libc.mount, None, f"{proc}/sys", None, ro_remount, None)
    for entry in READ_ONLY_PROC_ENTRIES:
        path = f"{proc}/{entry}"
        if os.path.exists(path):  # absent when the kernel lacks the feature
            step(f"bind /proc/{entry}", libc.mount, path, path, None, libc.MS_BIND, None)
            step(f"make /proc/{entry} read-only", libc.mount, None, path, None, ro_remount, None)


def _mount_dev(dev: str, owner: Owner | None) -> None:
    nosuid_nodev = NOSUID_NODEV
    # Owned by the container's root (ids are the host's ids here).
    ids = f",uid={owner.base},gid={owner.base}" if owner is not None else ""
    tty_gid = (owner.base if owner is not None else 0) + 5
    base = owner.base if owner is not None else None
    step("mount /dev", libc.mount, "tmpfs", dev, "tmpfs", DEV_FLAGS, dev_options(base))
    populate_dev(dev, base)
    step(
        "mount /dev/pts",
        libc.mount,
        "devpts",
        f"{dev}/pts",
        "devpts",
        libc.MS_NOSUID | libc.MS_NOEXEC,
        f"newinstance,ptmxmode=0666,mode=0620,gid={tty_gid}",
    )
    step(
        "mount /dev/shm",
        libc.mount,
        "shm",
        f"{dev}/shm",
        "tmpfs",
        nosuid_nodev,
        f"mode=1777,size=65536k{ids}",
    )
    step(
        "mount /dev/mqueue",
        libc.mount,
        "mqueue",
        f"{dev}/mqueue",
        "mqueue",
        nosuid_nodev | libc.MS_NOEXEC,
        None,
    )


def populate_dev(dev: str, base: int | None) -> None:
    """The usual nodes, links and mount points in a fresh /dev, owned by host id
    ``base`` (a private range's root) or the host's root."""
    old_umask = os.umask(0)
    try:
        for name, major, minor in DEV_NODES:
            step(f"mknod /dev/{name}", os.mknod, f"{dev}/{name}", 0o20666, os.makedev(major, minor))
    finally:
        os.umask(old_umask)
    for name, target in DEV_LINKS:
        os.symlink(target, f"{dev}/{name}")
    for sub in ("pts", "shm", "mqueue"):
        os.mkdir(f"{dev}/{sub}", 0o755)
    if base is not None:
        made = [name for name, _, _ in DEV_NODES] + [name for name, _ in DEV_LINKS]
        for name in [*made, "pts", "shm", "mqueue"]:
            os.lchown(f"{dev}/{name}", base, base)


def dev_options(base: int | None) -> str:
    """Mount options of the tmpfs that is /dev."""
    ids = f",uid={base},gid={base}" if base is not None else ""
    return f"mode=755,size=65536k{ids}"


def pivot(root: str) -> None:
    os.chdir(root)
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching
    # it leaves only the private area, with no directory to hold the old root.
    step("pivot_root", libc.pivot_root, ".", ".")
    step("detach old root", libc.umount2, ".", libc.MNT_DETACH)
    os.chdir("/")
