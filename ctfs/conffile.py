"""OpenVZ-style ``KEY="VALUE"`` files (ctid.conf, template.conf), read and written atomically.

Invariant: a file written here is either the old one or the new one, whole: the
text goes to a temporary file in the same directory, is fsynced, renamed over the
old name, and the directory is fsynced.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_LINE = re.compile(r'^\s*([A-Z_][A-Z0-9_]*)\s*=\s*(?:"([^"]*)"|(\S*))\s*$')


def parse(text: str) -> dict[str, str]:
    """Parse ``KEY="VALUE"`` lines; comments, blank and malformed lines are skipped."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match:
            values[match.group(1)] = (
                match.group(2) if match.group(2) is not None else match.group(3)
            )
    return values


def render(values: dict[str, str], header: str = "") -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in values.items():
        if '"' in value or "\n" in value:
            raise ValueError(f"{key}: a value cannot hold a double quote or a newline")
        lines.append(f'{key}="{value}"')
    return "\n".join(lines) + "\n"


def read(path: Path) -> dict[str, str]:
    return parse(path.read_text())


def write_atomic(path: Path, text: str | bytes) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old or the new file."""
    data = text.encode() if isinstance(text, str) else text
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temporary(path: Path) -> bool:
    """Remove the temporary file an interrupted ``write_atomic(path)`` left; True if one was."""
    try:
        path.with_name(f".{path.name}.tmp").unlink()
    except FileNotFoundError:
        return False
    return True
