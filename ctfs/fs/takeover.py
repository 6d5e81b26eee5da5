"""Serve a FUSE connection that another process mounted: a fresh one, or a dead ctfsd's.

The keeper (ctfs.keeper) mounted the filesystem and kept the kernel's FUSE_INIT
request.  The first ctfsd on a mount answers it; for a successor the kernel has no
such request any more and answers ENOENT, which is expected: the reply is computed
from the request alone, so every ctfsd of one version agrees with what the kernel
was told.  Last, FUSE_NOTIFY_RESEND (Linux 6.9) puts the requests a dead ctfsd had
read but never answered back in the queue (their unique gets bit 63, which is
echoed), so their callers get an answer.

Invariant: nothing reads /dev/fuse before the resend, so no request can be both
resent and answered.
"""

from __future__ import annotations

from ctfs.fs.operations import CtfsOperations
from ctfs.fs.session import Session


class TakeoverError(Exception):
    """The connection cannot be served."""


def take_over(
    operations: CtfsOperations, fuse_fd: int, init_request: bytes, debug: bool = False
) -> tuple[Session, bool]:
    """A session serving ``fuse_fd`` (consumed) with ``operations``, and whether this
    completed the kernel's INIT (the first ctfsd on the mount)."""
    session = Session(fuse_fd, operations, debug=debug)
    try:
        first = session.init(init_request)
    except ValueError as exc:
        session.close()
        raise TakeoverError(str(exc)) from exc
    operations.notify_store = session.notify_store
    session.resend_unanswered()
    return session, first
