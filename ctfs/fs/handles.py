"""Open files of ctfs, and the one-writer rule of exclusive files."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ctfs.errors import busy
from ctfs.files import ControlFile
from ctfs.fs import commands
from ctfs.fs.places import Place
from ctfs.model.caller import Caller
from ctfs.model.dump_upload import Upload


@dataclass
class OpenFile:
    """One open(): the text rendered then, served unchanged to every read until a
    read starts from offset 0 again.

    For a data file: ``fd`` to read from, or ``upload`` being written.
    """

    place: Place
    caller: Caller
    inode: int
    # Opened for writing (else a reader: its close sends no FLUSH).
    writes: bool = False
    data: bytes = b""
    # A read at offset 0 was answered: the next one renders the text anew.
    read_from_start: bool = False
    command: commands.Command = field(default_factory=commands.Command)
    # Holds the one-writer claim on an exclusive file (see ``Writers.claim``).
    claim: tuple[int, str] | None = None
    fd: int | None = None
    upload: Upload | None = None
    # A writable host file opened with O_TRUNC: its new contents are applied at
    # the flush even when nothing was written (``: > /ctfs/peers`` empties it).
    rewrite: bool = False


class Writers:
    """Which open file holds the right to write each exclusive file (CTID, name)."""

    def __init__(self) -> None:
        self._holders: dict[tuple[int, str], int] = {}

    def claim(self, fh: int, handle: OpenFile) -> None:
        """Let one open file at a time write an exclusive file, or raise EBUSY.

        The kernel serialises writes to one inode, so two writers of ``state`` never
        reach ctfs at the same time: the second would wait out the first change and
        then act on a state it did not see.  Concurrent writers are told apart at
        open() instead, which the kernel does not serialise.
        """
        container, node = handle.place.container, handle.place.node
        assert container is not None and isinstance(node, ControlFile)
        name = node.name
        key = (container.ctid, name)
        holder = self._holders.get(key)
        if holder is not None and holder != fh:
            container.events.record(
                f"{name}: refused a second writer while one is under way", logging.WARNING
            )
            error = busy(f"{name} is being written by another process")
            error.recorded = True
            raise error
        self._holders[key] = fh
        handle.claim = key

    def unclaim(self, fh: int, handle: OpenFile | None) -> None:
        if handle is not None and handle.claim is not None:
            if self._holders.get(handle.claim) == fh:
                del self._holders[handle.claim]
            handle.claim = None
