"""The size the kernel holds of each text file, kept large enough for sendfile.

Reads of a text file come from its handle (direct I/O), whatever its size says;
but sendfile() and splice() (busybox's cat, cp's copy_file_range fallback) read
through the page cache, which ends at the size the kernel holds: with 0 they read
nothing.  So at every read-only open the kernel's size is made to cover the text:
storing its last byte in the page cache (FUSE_NOTIFY_STORE) grows the size; the
page cache is dropped as the open completes, and the first page read, short,
brings the size down to the text's exactly.

The store waits for the page's lock, which a page read of the same file holds
until ctfsd answers it: so it runs on a thread while the loop goes on answering,
and only when the kernel's size may fall short of the text — as the attributes
last given, the stores and the short reads since tell.  (Only for read-only
opens: a truncating open holds the inode, which the store needs.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import trio


class Sizes:
    """Per inode: the length of its text when last opened, and how much the
    kernel's size is known to cover."""

    def __init__(self, store: Callable[[int, int, bytes], None]) -> None:
        self._store = store  # FUSE_NOTIFY_STORE: ino, offset, data
        self._texts: dict[int, int] = {}
        self._covered: dict[int, int] = {}

    def last_text(self, ino: int) -> int:
        return self._texts.get(ino, 0)

    def told(self, ino: int, size: int) -> None:
        """Attributes with ``size`` went to the kernel."""
        self._covered[ino] = size

    async def opened(self, ino: int, data: bytes, flags: int) -> None:
        """``data`` is what the open file will read."""
        self._texts[ino] = len(data)
        if not data or flags & os.O_ACCMODE != os.O_RDONLY:
            return
        if self._covered.get(ino, 0) >= len(data):
            return
        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(self._store, ino, len(data) - 1, data[-1:])
        self._covered[ino] = max(self._covered.get(ino, 0), len(data))

    def read(self, ino: int, off: int, size: int, given: int) -> None:
        """A short read may bring the kernel's size down to where it ended."""
        if given < size:
            self._covered[ino] = min(self._covered.get(ino, 0), off + given)
