"""What a control file is: a name, how to render it, and how to apply a write.

The FUSE layer derives lookup, getattr, readdir, open, read and write from these
declarations; a family of files only declares.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctfs.container import Container
    from ctfs.host import Host


@dataclass(frozen=True)
class ContainerFile:
    """A file in every container directory.

    ``render`` returns the whole text (newline-terminated); ``apply`` gets one
    complete command (already decoded and stripped) and either applies all of it
    or raises ``CtfsError`` having changed nothing.  No ``apply``: read-only.
    ``exclusive``: at most one open file may write it at a time (see ``ctfs.fs``).
    """

    name: str
    render: Callable[[Container], Awaitable[str]]
    apply: Callable[[Container, str], Awaitable[None]] | None = None
    exclusive: bool = False

    @property
    def writable(self) -> bool:
        return self.apply is not None


@dataclass(frozen=True)
class RootFile:
    """A read-only file at the top of the mount."""

    name: str
    render: Callable[[Host], Awaitable[str]]


@dataclass
class Upload:
    """A data file being written: a staging file of its own, committed at close."""

    path: Path
    fd: int
    written: bool = False


@dataclass(frozen=True)
class DataFile:
    """A file with real contents and size in every container directory (``dump``).

    Unlike a control file it is read and written at any offset, so ``cp`` works
    both ways.  ``reader`` gives a file descriptor to read from (None: empty);
    ``uploader`` starts an upload (or raises ``CtfsError``); ``commit`` checks a
    finished upload as a whole and puts it in place, or raises having changed
    nothing.  Reads and writes run off the trio loop.
    """

    name: str
    mode: int
    size: Callable[[Container], int]
    reader: Callable[[Container], int | None]
    uploader: Callable[[Container], Awaitable[Upload]]
    commit: Callable[[Container, Upload], Awaitable[None]]
