"""A container's ``events`` log: one timestamped sentence per line.

Every line also goes to the daemon log.  The file is append-only; one ``write`` per
line keeps lines whole.  It is trimmed to its newest half when it grows past
``MAX_BYTES`` so an endlessly rejected writer cannot fill the disk.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

from ctfs import conffile

log = logging.getLogger("ctfs.events")

MAX_BYTES = 256 * 1024
SHOWN_LINES = 1000


def timestamp() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


class EventLog:
    def __init__(self, path: Path, ctid: int) -> None:
        self.path = path
        self.ctid = ctid

    def record(self, sentence: str, level: int = logging.INFO) -> None:
        """Append ``sentence`` (one line) to the file and the daemon log."""
        sentence = " ".join(sentence.split())
        log.log(level, "CT %d: %s", self.ctid, sentence)
        line = f"{timestamp()} {sentence}\n".encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, line)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > MAX_BYTES:
                self._trim()
        except OSError as exc:
            log.error("CT %d: cannot append to %s: %s", self.ctid, self.path, exc)

    def _trim(self) -> None:
        data = self.path.read_bytes()
        keep = data[len(data) // 2 :]
        keep = keep[keep.find(b"\n") + 1 :]
        conffile.write_atomic(self.path, keep)

    def render(self) -> str:
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        tail = lines[-SHOWN_LINES:]
        return "".join(f"{line}\n" for line in tail)
