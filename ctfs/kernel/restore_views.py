"""What CRIU restores a container with a private id range onto: its private area
shown through its id map, and a fresh /dev.

CRIU mounts ``--root`` as the restored root, and a bind mount keeps the idmapping
of its source, so the root is an idmapped mount of the private area made here.
/dev is left out of the images (CRIU would have to mknod in the user namespace);
here a tmpfs is made with the usual nodes, owned by the container's root, and CRIU
binds it as the container's /dev (its devpts, shm and mqueue are restored on top).

CRIU opens them from inside the user namespace, as the container's root, so they
live in ``STATE/.restore-views/CTID`` (that folder 0711, the CTID one the
container root's own), not under ``STATE/CTID``, which only the host's root enters.

Invariant: both are always unmounted (detached) afterwards, and the folders are
only ever rmdir'ed, never removed recursively, so a view left mounted can never
cost the private area a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctfs.kernel import libc, userns
from ctfs.kernel.container_mounts import DEV_FLAGS, dev_options, populate_dev
from ctfs.policy import idmap

log = logging.getLogger(__name__)

FOLDER = ".restore-views"


def folder_of(container_dir: Path) -> Path:
    return container_dir.parent / FOLDER / container_dir.name


@dataclass(frozen=True)
class Views:
    root: Path
    dev: Path | None


@contextlib.contextmanager
def made(root: Path, id_base: int | None, container_dir: Path) -> Iterator[Views]:
    """``root`` itself for host ids; otherwise the two views, removed afterwards."""
    if id_base is None:
        yield Views(root, None)
        return
    folder = folder_of(container_dir)
    remove(folder)
    folder.parent.mkdir(mode=0o711, exist_ok=True)
    view, dev = folder / "root", folder / "dev"
    for path in (folder, view, dev):
        path.mkdir(mode=0o700)
        os.chown(path, id_base, id_base)
    try:
        space = userns.make(id_base, idmap.SIZE)
        try:
            userns.mount_idmapped(str(root), str(view), space)
        finally:
            os.close(space)
        # Owned by the container's root through the tmpfs's uid= and gid= options.
        libc.mount("tmpfs", str(dev), "tmpfs", DEV_FLAGS, dev_options(id_base))
        populate_dev(str(dev), id_base)
        yield Views(view, dev)
    finally:
        remove(folder)


def remove(folder: Path) -> None:
    """Unmount and remove the views in ``folder`` (left by a crash, or done with)."""
    for name in ("root", "dev"):
        path = folder / name
        with contextlib.suppress(OSError):
            libc.umount2(str(path), libc.MNT_DETACH)
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot remove %s: %s (still mounted?)", path, exc)
    with contextlib.suppress(FileNotFoundError, OSError):
        folder.rmdir()
