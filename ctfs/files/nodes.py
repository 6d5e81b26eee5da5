"""What a node of the ctfs tree is: a file (control or data) or a directory.

The tree is declared once (``ctfs.files.TREE``); the FUSE layer derives lookup,
getattr, readdir, open, read and write from it.  A family of files only declares.
Every render and apply receives the caller (``ctfs.model.caller.Caller``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ctfs.model.caller import Caller
from ctfs.model.container import Container
from ctfs.model.dump_upload import Upload
from ctfs.model.host import Host


@dataclass(frozen=True)
class ControlFile:
    """A text file of a container: rendered whole at open, a command per write.

    ``render`` returns the whole text (newline-terminated); ``apply`` gets one
    complete command (already decoded and stripped) and either applies all of it
    or raises ``CtfsError`` having changed nothing.  No ``apply``: read-only.
    ``exclusive``: at most one open file may write it at a time (see ``ctfs.fs``).
    ``settings_only``: a command changes nothing but settings, so one that failed
    after an earlier part of it was carried out can be undone by restoring them.
    """

    name: str
    render: Callable[[Container, Caller], Awaitable[str]]
    apply: Callable[[Container, str, Caller], Awaitable[None]] | None = None
    exclusive: bool = False
    settings_only: bool = True

    @property
    def writable(self) -> bool:
        return self.apply is not None


@dataclass(frozen=True)
class HostFile:
    """A text file about the whole host, rendered whole at open.

    ``apply`` (none: read-only) gets everything written to one open file, once, when
    it is closed: the file's new contents, applied all or nothing.  Only the host
    can open one for writing.
    """

    name: str
    render: Callable[[Host, Caller], Awaitable[str]]
    apply: Callable[[Host, str, Caller], Awaitable[None]] | None = None

    @property
    def writable(self) -> bool:
        return self.apply is not None


@dataclass(frozen=True)
class DataFile:
    """A file with real contents and size in a container directory (``dump``).

    Unlike a control file it is read and written at any offset, so ``cp`` works
    both ways.  ``reader`` gives a file descriptor to read from (None: empty);
    ``uploader`` starts an upload (or raises ``CtfsError``); ``commit`` checks a
    finished upload as a whole and puts it in place, or raises having changed
    nothing; ``discard`` closes an upload and removes what was not put in place.
    """

    name: str
    mode: int
    size: Callable[[Container], int]
    reader: Callable[[Container], int | None]
    uploader: Callable[[Container], Awaitable[Upload]]
    commit: Callable[[Container, Upload], Awaitable[None]]
    discard: Callable[[Upload], None]


@dataclass(frozen=True)
class Directory:
    """A directory of nodes; inside a container directory, of that container's nodes."""

    name: str
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Containers:
    """One directory per container, named by its CTID, each holding ``children``."""

    children: tuple[Node, ...]


Node = ControlFile | HostFile | DataFile | Directory | Containers
File = ControlFile | HostFile | DataFile
