"""Disk quota for private areas: btrfs quota groups, driven through btrfs-progs.

What this relies on, checked on kernel 6.18 with btrfs-progs 6.2:

- ``btrfs quota enable`` starts a rescan of the existing data by itself; on a pool
  whose quotas are already on it succeeds and does nothing (no new rescan).
  ``btrfs quota rescan -W`` waits for a running rescan without starting one.
- Every subvolume and snapshot made afterwards has its level-0 qgroup at once, so
  containers created later need nothing.
- A qgroup's figures change only when a transaction commits (every 30 s by
  default): ``btrfs qgroup show --sync`` commits first, so usage read right after
  a write includes it.
- The referenced limit (``btrfs qgroup limit``) is enforced at write time with
  EDQUOT, for root too; raising or removing it lets a blocked writer go on at once.
- The qgroup of a deleted subvolume goes away by itself once btrfs has dropped it.
- Figures can become inconsistent (``qgroup data inconsistent`` on stderr, for
  example after a qgroup was assigned without rescan); only a rescan repairs them.

Invariant: nothing here follows a path chosen by a container.  Counting inodes
walks a container's tree, but opens each directory without following symlinks
and checks that it is the very inode the listing named, on the same subvolume.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading
from pathlib import Path

from ctfs.kernel.api import SpaceUsage
from ctfs.kernel.storage import run_tool

BTRFS = "btrfs"
# What a walk meets when a container removes or swaps a directory under it (a
# symlink put in its place gives ELOOP, as the walk opens with O_NOFOLLOW).
_VANISHED = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}


class QuotaError(OSError):
    """A btrfs quota operation failed; the text says which and why."""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_tool((BTRFS, *args), QuotaError)


class BtrfsQuota:
    """The ``Quota`` backend: btrfs quota groups of the pool at ``pool``."""

    def __init__(self, pool: Path) -> None:
        self.pool = pool
        self._enabled = False
        self._lock = threading.Lock()

    def _ensure_enabled(self) -> None:
        """Turn quota groups on for the pool, once per ctfsd (or again if turned off).

        Returns only when the initial rescan is over, so usage read afterwards
        counts every file.
        """
        with self._lock:
            if self._enabled:
                return
            _run("quota", "enable", str(self.pool))
            _run("quota", "rescan", "-W", str(self.pool))
            self._enabled = True

    def _checked(self, *args: str) -> subprocess.CompletedProcess[str]:
        self._ensure_enabled()
        try:
            return _run(*args)
        except QuotaError as exc:
            if "not enabled" in str(exc):
                with self._lock:
                    self._enabled = False  # someone turned quotas off behind our back
            raise

    def space_usage(self, area: Path) -> SpaceUsage:
        """The qgroup figures of ``area``, as of now (pending writes committed first).

        Inconsistent figures are rescanned (waiting for the rescan) before they are used.
        """
        done = self._checked(*_SHOW, str(area))
        if "inconsistent" in done.stderr:
            self._checked("quota", "rescan", "-w", str(area))
            done = self._checked(*_SHOW, str(area))
        return _parse_show(done.stdout, area)

    def set_space_limit(self, area: Path, hard_bytes: int | None) -> None:
        """Limit the bytes ``area`` may reference (None: no limit); takes effect at once.

        The limit is set by qgroup id through the parent directory, not through the
        subvolume itself: the ioctl starts a transaction charged to the subvolume it
        is issued on, so on a subvolume at or over its limit it fails with EDQUOT,
        and the limit could then never be raised.
        """
        if hard_bytes is not None and not 0 <= hard_bytes < 1 << 64:
            raise QuotaError(f"a limit of {hard_bytes} bytes is out of btrfs's range")
        size = "none" if hard_bytes is None else str(hard_bytes)
        self._checked("qgroup", "limit", size, f"0/{subvolume_id(area)}", str(area.parent))

    def count_inodes(self, area: Path) -> int:
        return count_inodes(area)


# -f: only the qgroup of the subvolume holding the path; -r -e: the limits too;
# --sync: commit pending writes first.
_SHOW = ("qgroup", "show", "--raw", "-r", "-e", "-f", "--sync")


def _parse_show(text: str, subvolume: Path) -> SpaceUsage:
    """Read ``btrfs qgroup show --raw -r -e`` output.

    Columns: qgroupid, referenced, exclusive, max referenced, max exclusive, then
    (newer btrfs-progs) the path.  A limit is a number of bytes or ``none``.
    """
    rows = [line.split() for line in text.splitlines()]
    found = [row for row in rows if row and row[0].startswith("0/")]
    if len(found) != 1:
        raise QuotaError(
            f"btrfs qgroup show listed {len(found)} level-0 quota groups for {subvolume}, "
            "expected one"
        )
    row = found[0]
    try:
        referenced, exclusive = int(row[1]), int(row[2])
        limit = None if row[3] == "none" else int(row[3])
    except (IndexError, ValueError):
        raise QuotaError(f"cannot read btrfs qgroup show's line {' '.join(row)!r}") from None
    return SpaceUsage(referenced, exclusive, limit)


def subvolume_id(subvolume: Path) -> int:
    """The btrfs id of the subvolume holding ``subvolume`` (its level-0 qgroup is 0/id)."""
    out = _run("inspect-internal", "rootid", str(subvolume)).stdout.strip()
    if not out.isdigit():
        raise QuotaError(f"btrfs inspect-internal rootid printed {out!r}, not a subvolume id")
    return int(out)


def count_inodes(subvolume: Path) -> int:
    """How many inodes the subvolume holds: every file, directory and link, hard links once.

    Walks the tree without following symlinks, without crossing into another mount
    or subvolume.  Entries that vanish while it walks are skipped.
    """
    root = os.stat(subvolume, follow_symlinks=False)
    if not stat.S_ISDIR(root.st_mode):
        raise QuotaError(f"{subvolume} is not a directory")
    seen: set[int] = {root.st_ino}
    pending: list[tuple[str, int]] = [(str(subvolume), root.st_ino)]
    while pending:
        path, ino = pending.pop()
        for name, child_ino, is_dir in _list_directory(path, root.st_dev, ino):
            if child_ino in seen:
                continue
            seen.add(child_ino)
            if is_dir:
                pending.append((os.path.join(path, name), child_ino))
    return len(seen)


def _list_directory(path: str, device: int, ino: int) -> list[tuple[str, int, bool]]:
    """(name, inode, is a directory) of each entry of the directory ``(device, ino)``.

    Opened by ``path`` without following a symlink at its end; a container may have
    swapped a directory on the way for a symlink meanwhile, so the directory opened
    must be the very one expected, or it is not listed.  A mount point or a nested
    subvolume (another device) is counted but not entered.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in _VANISHED:
            return []
        raise
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (device, ino):
            return []
        with os.scandir(fd) as entries:
            return [(e.name, e.inode(), e.is_dir(follow_symlinks=False)) for e in entries]
    except OSError as exc:
        if exc.errno in _VANISHED:
            return []
        raise
    finally:
        os.close(fd)
