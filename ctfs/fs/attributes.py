"""What a node of ctfs looks like to stat(): mode, owner, size, times, cache times."""

from __future__ import annotations

import stat

from ctfs.files import ControlFile, DataFile, Directory, HostFile
from ctfs.fs import wire
from ctfs.fs.places import Place
from ctfs.policy import idmap

# Entries and attributes may be cached briefly: a file's mode and size never change,
# and a container directory only disappears through rmdir, which the kernel sees.
CACHE_S = 1.0
PAGE = 4096


def attributes(ino: int, place: Place, now_ns: int, size: int = 0) -> wire.EntryAttributes:
    """What stat() shows of the node at ``place``, inode ``ino``.

    A text file's ``size`` is the length of its text when it was last opened (0
    before), rounded up to whole pages: see ``ctfs.fs.sizes``.  Rounded,
    so that it stays the same while the text changes a little: CRIU refuses to
    restore a process whose open file changed size since the dump.
    """
    node = place.node
    attr = wire.EntryAttributes()
    attr.st_ino = ino
    attr.generation = 0
    attr.entry_timeout = CACHE_S
    attr.attr_timeout = CACHE_S
    attr.st_nlink = 1
    # A container's files belong to its root: inside, they show as root's, and
    # the kernel lets that root try a write, which ctfs then judges (and refuses
    # with a sentence, rather than the kernel's bare EACCES).
    base = idmap.base_of(place.container.settings) if place.container is not None else None
    attr.st_uid = attr.st_gid = base or 0
    attr.st_size = attr.st_blocks = 0
    attr.st_blksize = 4096
    attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = now_ns
    if isinstance(node, Directory):
        attr.st_mode, attr.st_nlink = stat.S_IFDIR | 0o755, 2
    elif isinstance(node, DataFile):
        assert place.container is not None
        attr.st_mode = stat.S_IFREG | node.mode
        # Its size changes at every freeze: never let the kernel cache it.
        attr.attr_timeout = 0
        attr.st_size = node.size(place.container)
        attr.st_blocks = (attr.st_size + 511) // 512
    else:
        writable = isinstance(node, ControlFile | HostFile) and node.writable
        attr.st_mode = stat.S_IFREG | (0o644 if writable else 0o444)
        attr.st_size = -(-size // PAGE) * PAGE
    return attr
