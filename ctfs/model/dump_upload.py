"""The dump file as a file of the mount: its size, reading it, and copying one in.

Invariant: a dump written in becomes the container's dump only whole and checked
(``accept_upload``); until then it is a staging file of its own.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from ctfs.errors import busy, invalid
from ctfs.model import checkpoint, dumpfile
from ctfs.model.container import Container, State


@dataclass
class Upload:
    """A dump file being written in: a staging file of its own, committed at close."""

    path: Path
    fd: int
    written: bool = False


def dump_size(ct: Container) -> int:
    """The dump file's size while frozen; 0 otherwise."""
    if not ct.frozen or ct.changing_now:
        return 0
    try:
        return ct.dump_path.stat().st_size
    except FileNotFoundError:
        return 0


def open_dump(ct: Container) -> int | None:
    """A file descriptor to read the dump file from; None while there is none."""
    try:
        return os.open(ct.dump_path, os.O_RDONLY | os.O_CLOEXEC) if dump_size(ct) else None
    except FileNotFoundError:
        return None


async def start_upload(ct: Container) -> Upload:
    """Begin writing a dump file in (copying one in): only while stopped or frozen."""
    ct.refuse_while_changing()
    if ct.state not in (State.STOPPED, State.FROZEN):
        raise busy(
            f"the container is {ct.state.value}; a dump can be written in only "
            "while it is stopped or frozen"
        )
    fd, name = tempfile.mkstemp(prefix=".dump.upload.", dir=ct.dir)
    return Upload(Path(name), fd)


async def accept_upload(ct: Container, upload: Upload) -> None:
    """Check a written-in dump file as a whole; make it the container's dump."""
    try:
        manifest = await trio.to_thread.run_sync(dumpfile.read_manifest, upload.path)
    except dumpfile.DumpError as exc:
        raise invalid(f"not an intact ctfs dump: {exc}") from exc
    ct.refuse_while_changing()
    if ct.state not in (State.STOPPED, State.FROZEN):
        raise busy(f"the container is {ct.state.value} now; the dump is not taken")
    size = upload.path.stat().st_size

    def put_in_place() -> None:
        os.fsync(upload.fd)
        upload.path.rename(ct.dump_path)
        dumpfile.fsync_dir(ct.dir)

    await trio.to_thread.run_sync(put_in_place)
    await trio.to_thread.run_sync(checkpoint.drop_kept, ct)
    ct.frozen = True
    ct.dump_stamp = checkpoint.stamp(ct.dump_path)
    ct.events.record(
        f"dump: {size} bytes written in (a checkpoint of container "
        f"{manifest.info.get('ctid', '?')}); the container is frozen"
    )


def discard_upload(upload: Upload) -> None:
    """Close an upload; its staging file goes unless it was put in place."""
    with contextlib.suppress(OSError):
        os.close(upload.fd)
    with contextlib.suppress(FileNotFoundError):
        upload.path.unlink()
