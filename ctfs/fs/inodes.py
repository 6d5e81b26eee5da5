"""Inode numbers and file handles that outlive one ctfsd.

A new ctfsd takes over the FUSE connection of one that crashed or was upgraded
(see ctfsd(8)): the kernel still holds the inode numbers and file handles the old
one gave out, and asks the new one about them.  So neither may depend on what a
process remembers:

- an inode number is a hash of its path (root is 1); an unknown number is found by
  hashing every path of the tree once more;
- a file handle carries its inode number in the low 48 bits, so a handle the new
  ctfsd never opened still names its file, which is rendered anew.

Invariant: ``number(path)`` is the same in every ctfsd of every version, and
``path(number(path)) == path`` while the path exists.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping

from ctfs.fs import wire
from ctfs.fs.places import Path

ROOT_INODE: int = wire.ROOT_INODE
INODE_BITS = 48
_INODE_MASK = (1 << INODE_BITS) - 1
# 48 bits for 45 000 paths (1000 containers): a collision has odds of 1 in 10^5;
# one is logged and the later path loses (it answers ENOENT), nothing else breaks.


def number(path: Path) -> int:
    """The inode number of ``path``: stable, never 0 or 1 unless it is the root."""
    if not path:
        return ROOT_INODE
    digest = hashlib.blake2b("/".join(path).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & _INODE_MASK) | 2


def inode_of_handle(fh: int) -> int:
    return fh & _INODE_MASK


class Inodes:
    """Paths by inode number, filled as paths are looked up."""

    def __init__(self) -> None:
        self._path_of: dict[int, Path] = {ROOT_INODE: ()}
        self._serial = itertools.count(1)

    def __len__(self) -> int:
        return len(self._path_of)

    def number(self, path: Path) -> int:
        ino = number(path)
        self._path_of.setdefault(ino, path)
        return ino

    def path(self, ino: int, every_path: Iterable[Path]) -> Path | None:
        """The path of ``ino``; when it is unknown here (a takeover), ``every_path``
        is hashed to find it.  None: no such path now."""
        found = self._path_of.get(ino)
        if found is None:
            for path in every_path:
                self.number(path)
            found = self._path_of.get(ino)
        return found

    def handle(self, ino: int, in_use: Mapping[int, object]) -> int:
        """A fresh file handle for ``ino`` that no open file holds."""
        while True:
            fh = ((next(self._serial) & 0xFFFF) << INODE_BITS) | ino
            if fh not in in_use:
                return fh
