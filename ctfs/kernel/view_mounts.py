"""Binding ctfs's views into a container: its own directory, and files over /proc, /sys.

The builder of the container's mounts takes each view (``open_tree``, a detached
copy of the host's mount) while it still sees the host's ctfs mount, and puts it
in place (``move_mount``) after the pivot, once the container's other mounts are
locked and the builder is the container's root.  So the views are not locked: the
container's root may unmount them (and then sees the host's figures, nothing
more), and its /proc and /sys stay "fully visible" to the kernel, so that it may
still mount a proc or sysfs of its own (nested containers, systemd's ProtectProc=).

A view of a directory (its own directory of ctfs, ``/ctfs/CTID``) is put on a
small tmpfs made at its parent (``/ctfs``), so that nothing of the host's mount
but that directory is reachable by path.  Standard library and libc only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from ctfs.kernel import libc
from ctfs.kernel.container_mounts import Step, step

Taken = list[tuple[int, str]]  # (detached mount, path inside)

_HOME_OPTIONS = "mode=755,size=64k"


def take(views: Sequence[Sequence[str]]) -> Taken:
    """Detached copies of each view's host path, with the path inside they go to."""
    taken: Taken = []
    flags = libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC
    try:
        for source, inside in views:
            fd = step(f"take the view for {inside}", libc.open_tree, source, flags)
            taken.append((fd, inside))
    except Step:
        close(taken)
        raise
    return taken


def put(taken: Taken) -> None:
    """Move each view to its place inside; run inside the container's root."""
    for fd, inside in taken:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            _home_for(inside)
        step(f"bind the view over {inside}", libc.move_mount, fd, inside)
    close(taken)


def close(taken: Taken) -> None:
    for fd, _ in taken:
        os.close(fd)


def _home_for(inside: str) -> None:
    """A tmpfs at the parent of ``inside`` holding only an empty directory to mount on.

    The parent is made if missing; anything else there (a file, a link planted by
    the container) is refused rather than followed.
    """
    parent = os.path.dirname(inside)
    try:
        os.mkdir(parent, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise Step(f"cannot make {parent} in the container: {exc.strerror}") from exc
    if not stat.S_ISDIR(os.lstat(parent).st_mode):
        raise Step(f"{parent} in the container is not a directory; move it away to start it")
    flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    step(f"mount a tmpfs at {parent}", libc.mount, "tmpfs", parent, "tmpfs", flags, _HOME_OPTIONS)
    step(f"make {inside}", os.mkdir, inside, 0o755)
