"""dump: the checkpoint image of a frozen container, as one portable file."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ctfs.files.base import DataFile, Upload

if TYPE_CHECKING:
    from ctfs.container import Container


def _size(ct: Container) -> int:
    return ct.dump_size()


def _reader(ct: Container) -> int | None:
    try:
        return os.open(ct.dump_path, os.O_RDONLY | os.O_CLOEXEC) if ct.dump_size() else None
    except FileNotFoundError:
        return None


async def _uploader(ct: Container) -> Upload:
    return await ct.start_dump_upload()


async def _commit(ct: Container, upload: Upload) -> None:
    await ct.accept_dump_upload(upload)


FILES = (
    # 0600: the dump holds the container's memory, secrets included.
    DataFile("dump", 0o600, _size, _reader, _uploader, _commit),
)
