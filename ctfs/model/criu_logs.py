"""CRIU's logs of failed dumps and restores, kept for the administrator.

CRIU's work directory is scratch and goes with the attempt; the one line of a
failure that reaches ``events`` rarely says enough.  So the whole log of every
failed attempt is copied to ``CTDIR/criu-logs/ACTION-TIMESTAMP.log`` (host-only:
the container's root cannot see its directory) and ``events`` names it.  Only the
newest ``KEPT`` are kept per container; they go with it at rmdir.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from ctfs.kernel.api import CriuError
from ctfs.model.container import Container

log = logging.getLogger(__name__)

KEPT = 10
DIRECTORY = "criu-logs"


def keep(ct: Container, exc: CriuError, action: str) -> str:
    """Copy the log of a failed ``action``; the words for events saying where it is."""
    if exc.log is None or not exc.log.is_file():
        return ""
    directory = ct.dir / DIRECTORY
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = directory / f"{action}-{stamp}.log"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(exc.log, kept)
        _prune(directory)
    except OSError as exc_copy:
        log.error("CT %d: cannot keep CRIU's log %s: %s", ct.ctid, exc.log, exc_copy)
        return ""
    return f" (CRIU's log: {kept})"


def _prune(directory: Path) -> None:
    """The newest ``KEPT`` logs stay (names sort by time)."""
    logs = sorted(directory.glob("*.log"), key=lambda p: p.name.split("-", 1)[-1])
    for old in logs[:-KEPT]:
        old.unlink(missing_ok=True)
