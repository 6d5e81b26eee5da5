"""Control-file declarations: every node ctfs shows is declared exactly once here.

``TREE`` is the whole filesystem: the host's files at the top, and one directory
per container holding the container's files.
"""

from __future__ import annotations

from ctfs.files import (
    beancounters,
    checkpoint,
    lifecycle,
    metrics,
    network,
    quota,
    root,
    scheduling,
    views,
)
from ctfs.files.nodes import (
    Containers,
    ControlFile,
    DataFile,
    Directory,
    File,
    HostFile,
    Node,
)

CONTAINER_NODES: tuple[Node, ...] = (
    *lifecycle.FILES,
    *scheduling.FILES,
    *beancounters.FILES,
    *quota.FILES,
    *network.FILES,
    *checkpoint.FILES,
    *views.FILES,
)

TREE = Directory(
    "",
    (*root.FILES, *beancounters.HOST_FILES, *metrics.HOST_FILES, Containers(CONTAINER_NODES)),
)

__all__ = [
    "TREE",
    "Containers",
    "ControlFile",
    "DataFile",
    "Directory",
    "File",
    "HostFile",
    "Node",
]
