"""Serve a FUSE connection that another process mounted: a fresh one, or a dead ctfsd's.

The keeper (ctfs.keeper) mounted the filesystem and kept the kernel's FUSE_INIT
request.  libfuse 3.14 serves an open descriptor when given the mount point
"/dev/fd/N" (it mounts nothing then), but answers EIO to every request until it has
processed a FUSE_INIT itself.  So libfuse first gets one end of a socket pair as
its descriptor, the saved INIT request comes in through the other end and its
reply goes out there; then /dev/fuse is moved onto libfuse's descriptor number
(dup2) and the reply is handed to the kernel.  For the first ctfsd on a mount that
completes the kernel's INIT; for a successor the kernel has no such request any
more and answers ENOENT, which is expected.  Last, FUSE_NOTIFY_RESEND (Linux 6.9)
puts the requests a dead ctfsd had read but never answered back in the queue
(their unique gets bit 63, which libfuse echoes), so their callers get an answer.

Invariants: libfuse's descriptor number never changes (pyfuse3 keeps it from
init); trio forgets it before the dup2 (notify_closing) and registers the new file
at the next wait; nothing reads /dev/fuse before the resend, so no request can be
both resent and answered.  The INIT reply is the same for the same libfuse and
options, so what a successor's libfuse negotiates is what the kernel agreed to.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct

import pyfuse3
import trio

log = logging.getLogger("ctfsd")

# struct fuse_out_header: len, error (or notify code), unique.
_OUT_HEADER = struct.Struct("<IiQ")
_IN_UNIQUE = struct.Struct("<Q")  # at offset 8 of struct fuse_in_header
FUSE_NOTIFY_RESEND = 7
# libfuse answers INIT at once; longer means it did not take the request.
INIT_REPLY_TIMEOUT_S = 10.0


class TakeoverError(Exception):
    """libfuse did not accept the connection."""


async def take_over(
    operations: pyfuse3.Operations, fuse_fd: int, init_request: bytes, options: set[str]
) -> bool:
    """Make pyfuse3 serve ``fuse_fd``; run ``pyfuse3.main()`` afterwards, as after init.

    ``fuse_fd`` is consumed: it ends up as libfuse's own descriptor, which
    ``pyfuse3.close()`` closes (never unmounting: libfuse did not mount).
    Returns whether this completed the kernel's INIT (the first ctfsd on the mount).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    session_fd = ours.detach()
    try:
        pyfuse3.init(operations, f"/dev/fd/{session_fd}", options)
    except RuntimeError as exc:
        os.close(session_fd)
        theirs.close()
        raise TakeoverError(f"libfuse refused the connection: {exc}") from exc
    with theirs:
        reply = await _replay_init(theirs, init_request)
        # No checkpoint from here to the dup2: trio forgets the socket's
        # registration, then the descriptor number becomes /dev/fuse.
        trio.lowlevel.notify_closing(session_fd)
        os.dup2(fuse_fd, session_fd, inheritable=False)
        os.close(fuse_fd)
    first = _complete_init(session_fd, reply)
    _resend_unanswered(session_fd)
    return first


async def _replay_init(libfuse_end: socket.socket, init_request: bytes) -> bytes:
    """Give libfuse the saved INIT request; return its reply, checked."""
    libfuse_end.setblocking(False)
    libfuse_end.send(init_request)
    reply = b""
    with trio.move_on_after(INIT_REPLY_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            await trio.lowlevel.wait_readable(libfuse_end)
            reply = libfuse_end.recv(1 << 16)
            nursery.cancel_scope.cancel()
    if len(reply) < _OUT_HEADER.size:
        raise TakeoverError("libfuse did not answer the INIT request")
    length, error, unique = _OUT_HEADER.unpack_from(reply)
    if error:
        raise TakeoverError(f"libfuse refused the INIT request: {os.strerror(-error)}")
    if length != len(reply) or unique != _IN_UNIQUE.unpack_from(init_request, 8)[0]:
        raise TakeoverError("libfuse answered something else than the INIT request")
    return reply


def _complete_init(fuse_fd: int, reply: bytes) -> bool:
    try:
        os.write(fuse_fd, reply)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return False  # an earlier ctfsd answered it: the connection is initialised
    return True


def _resend_unanswered(fuse_fd: int) -> None:
    try:
        os.write(fuse_fd, _OUT_HEADER.pack(_OUT_HEADER.size, FUSE_NOTIFY_RESEND, 0))
    except OSError as exc:
        # Before Linux 6.9 (EINVAL): what a dead ctfsd was answering stays unanswered.
        log.warning("the kernel cannot resend unanswered requests: %s", exc.strerror)
