"""Files ctfs keeps up to date inside a container's private area (/etc/hosts, resolv.conf).

ctfsd writes them from the host, into a tree the container's root user controls,
so nothing here may follow a link the container planted: ``etc`` is opened with
O_NOFOLLOW relative to the private area, the old file is read only if it is a
regular file, and the new one replaces whatever name was there (a symlink
included) by an atomic rename inside that directory.  A crash leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def update(root: Path, name: str, render: Callable[[str], str]) -> bool:
    """Replace ``root/etc/name`` by ``render(old text)``; True if its text changed."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        try:
            etc = os.open("etc", _DIR_FLAGS, dir_fd=root_fd)
        except FileNotFoundError:
            os.mkdir("etc", 0o755, dir_fd=root_fd)
            etc = os.open("etc", _DIR_FLAGS, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    try:
        old = _read_regular(etc, name)
        new = render(old)
        if new == old:
            return False
        temporary = f".{name}.ctfs-new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=etc)
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=etc,
        )
        try:
            os.write(fd, new.encode())
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=etc, dst_dir_fd=etc)
        os.fsync(etc)
        return True
    finally:
        os.close(etc)


def _read_regular(dir_fd: int, name: str) -> str:
    """The text of ``name`` if it is a regular file; "" if absent or anything else."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return ""  # absent, or a symlink (ELOOP): it will be replaced
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            if sum(map(len, chunks)) > 1 << 20:
                break  # a megabyte of hosts file is not ours to keep
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(fd)
