"""dump: the checkpoint image of a frozen container, as one portable file."""

from __future__ import annotations

from ctfs.files.nodes import DataFile
from ctfs.model import checkpoint

FILES = (
    # 0600: the dump holds the container's memory, secrets included.
    DataFile(
        "dump",
        0o600,
        size=checkpoint.dump_size,
        reader=checkpoint.open_dump,
        uploader=checkpoint.start_upload,
        commit=checkpoint.accept_upload,
        discard=checkpoint.discard_upload,
    ),
)
