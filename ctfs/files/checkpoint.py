"""dump: the checkpoint image of a frozen container, as one portable file."""

from __future__ import annotations

from ctfs.files.nodes import DataFile
from ctfs.model import dump_upload

FILES = (
    # 0600: the dump holds the container's memory, secrets included.
    DataFile(
        "dump",
        0o600,
        size=dump_upload.dump_size,
        reader=dump_upload.open_dump,
        uploader=dump_upload.start_upload,
        commit=dump_upload.accept_upload,
        discard=dump_upload.discard_upload,
    ),
)
