"""What a control file is: a name, how to render it, and how to apply a write.

The FUSE layer derives lookup, getattr, readdir, open, read and write from these
declarations; a family of files only declares.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
