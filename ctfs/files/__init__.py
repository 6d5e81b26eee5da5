"""Control-file declarations: every file ctfs shows is declared exactly once here."""

from __future__ import annotations

from ctfs.files import beancounters, checkpoint, lifecycle, network, quota, root, scheduling
from ctfs.files.base import ContainerFile, DataFile, RootFile, Upload

ROOT_FILES: tuple[RootFile, ...] = root.FILES + beancounters.ROOT_FILES
CONTAINER_FILES: tuple[ContainerFile, ...] = (
    lifecycle.FILES + scheduling.FILES + beancounters.FILES + quota.FILES + network.FILES
)

DATA_FILES: tuple[DataFile, ...] = checkpoint.FILES

__all__ = [
    "CONTAINER_FILES",
    "DATA_FILES",
    "ROOT_FILES",
    "ContainerFile",
    "DataFile",
    "RootFile",
    "Upload",
]
