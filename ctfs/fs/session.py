"""ctfs's own FUSE session: reads requests from /dev/fuse, answers them on trio.

Replaces libfuse and pyfuse3, which cost about 60-80 µs of ctfsd's CPU per request
(py-spy: their dispatch and a trio task per request), 5 requests per open, read and
close of a file.  Here a request is read into one reused buffer and its handler
coroutine is run at once, in the reading task: almost every request (lookup,
getattr, open and read of a rendered file, release) completes without waiting,
and its reply is written before the next request is read.  A handler that must
wait (a state change, a thread) keeps the task it started in; a new task takes
over the reading first.  So a slow request never holds up the others, and the fast
ones cost no task.

Invariants: exactly one task reads /dev/fuse at a time; every request but FORGET,
BATCH_FORGET and INTERRUPT gets exactly one reply (ENOSYS for what ctfs does not
implement); a reply the kernel no longer wants (ENOENT: its caller was
interrupted) is dropped; no handler error reaches the loop (EIO, logged).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import time
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import trio

from ctfs.fs import wire
from ctfs.fs.wire import FileInfo, Listing, RequestContext

log = logging.getLogger("ctfs.fs")

# A yield to the other tasks after this many requests answered in a row, so a
# steady stream of fast requests cannot starve them.
FAIR_EVERY = 16
# Requests whose answer the asker follows at once with another: after them the
# session polls (see Session._next); after a release, the asker's next open may
# be a process start away, and polling then only takes a CPU from it
# (bench/start_stop, `cat state` in a loop: 1.27x LXCFS's /proc/uptime when the
# session polled after every answer, 1.12x now).
_FOLLOWED = frozenset((wire.LOOKUP, wire.GETATTR, wire.OPEN, wire.READ, wire.OPENDIR, wire.READDIR))
# Polled for after an answer (see Session._next).  bench/procviews, one reader in
# a loop, CPU per read of /proc/cpuinfo: 133 µs waiting at once, 117 µs after
# polling 60 µs (the requester's next request caught without a wakeup), 93 µs
# after 100 µs; its latency 151 -> 120 -> 91 µs.
SPIN_NS = 100_000
_LINK_IN = struct.Struct("<Q")  # oldnodeid
_RENAME_IN = struct.Struct("<Q")  # newdir
_RENAME2_IN = struct.Struct("<QI4x")
_MKNOD_IN = struct.Struct("<IIII")  # mode rdev umask padding
_CREATE_IN = struct.Struct("<IIII")  # flags mode umask open_flags

Handler = Callable[["Request"], Awaitable[bytes]]


class Request:
    """One request, copied out of the read buffer."""

    __slots__ = ("body", "ctx", "nodeid", "opcode", "unique")

    def __init__(self, data: memoryview) -> None:
        _, self.opcode, self.unique, self.nodeid, uid, gid, pid, _, _ = wire.IN_HEADER.unpack_from(
            data
        )
        self.ctx = RequestContext(pid=pid, uid=uid, gid=gid)
        self.body = bytes(data[wire.IN_HEADER.size :])


class Session:
    """Serves one FUSE connection ``fd`` (consumed) with ``operations``."""

    def __init__(self, fd: int, operations: Any, debug: bool = False) -> None:
        self.fd = fd
        self.ops = operations
        self.debug = debug  # log every request and its answer
        os.set_blocking(fd, False)
        self._buffer = bytearray(wire.BUFFER_SIZE)
        self._stopping = False
        self._wait = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        # Polling for a request only takes the CPU from its asker when there is one.
        self._spin_ns = SPIN_NS if len(os.sched_getaffinity(0)) > 1 else 0
        self._handlers: dict[int, Handler] = {
            wire.LOOKUP: self._lookup,
            wire.GETATTR: self._getattr,
            wire.SETATTR: self._setattr,
            wire.MKDIR: self._mkdir,
            wire.RMDIR: self._rmdir,
            wire.OPEN: self._open,
            wire.READ: self._read,
            wire.WRITE: self._write,
            wire.FLUSH: self._flush,
            wire.RELEASE: self._release,
            wire.OPENDIR: self._opendir,
            wire.READDIR: self._readdir,
            wire.READDIRPLUS: self._readdir,
            wire.RELEASEDIR: self._releasedir,
            wire.STATFS: self._statfs,
            wire.DESTROY: self._destroy,
            **{op: self._not_made for op in _NOT_MADE},
        }

    # ------------------------------------------------------------ lifecycle

    def init(self, init_request: bytes) -> bool:
        """Answer the kernel's INIT request; False if an earlier ctfsd had answered it."""
        try:
            os.write(self.fd, wire.init_out(init_request))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return False
        return True

    def resend_unanswered(self) -> None:
        """Have the kernel queue again what a dead ctfsd had read and not answered."""
        try:
            os.write(self.fd, wire.notify_resend())
        except OSError as exc:
            # Before Linux 6.9 (EINVAL): what a dead ctfsd was answering stays unanswered.
            log.warning("the kernel cannot resend unanswered requests: %s", exc.strerror)

    def notify_store(self, ino: int, offset: int, data: bytes) -> None:
        """Put ``data`` in the kernel's page cache of ``ino`` (never on the loop: it
        waits for the page's lock)."""
        os.write(self.fd, wire.notify_store(ino, offset, data))

    async def serve(self) -> None:
        """Answer requests until the file system is unmounted or ``terminate()``;
        return once every request read has been answered."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._reader)

    def terminate(self) -> None:
        """Read no more requests; those read are still answered."""
        self._stopping = True
        self._wait.cancel()

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.fd)
        os.close(self.fd)

    # ------------------------------------------------------------ the loop

    async def _reader(self) -> None:
        answered, spin = 0, 0
        while not self._stopping:
            request = await self._next(spin)
            if request is None:
                return
            spin = self._spin_ns if request.opcode in _FOLLOWED else 0
            coro = self._answer(request)
            try:
                step = coro.send(None)
            except StopIteration:
                answered += 1
                if answered % FAIR_EVERY == 0:
                    await trio.lowlevel.checkpoint()
                continue
            # It waits: the reading goes on in a new task, this one sees it through.
            assert self._nursery is not None
            self._nursery.start_soon(self._reader)
            await _resume(coro, step)
            return

    async def _next(self, spin_ns: int) -> Request | None:
        """The next request; None when serving ends.

        It polls for up to ``spin_ns`` before it waits: right after an answer
        that has a sequel (the read after an open, the next read or the release
        after a read), the asker's next request comes within tens of µs, and going
        back to trio's event loop to wait for it costs more CPU than polling.
        """
        spin_until = time.perf_counter_ns() + spin_ns
        while not self._stopping:
            try:
                size = os.readv(self.fd, [self._buffer])
            except BlockingIOError:
                if time.perf_counter_ns() < spin_until:
                    continue
                scope = self._wait = trio.CancelScope()
                with scope:
                    await trio.lowlevel.wait_readable(self.fd)
                if scope.cancelled_caught:
                    return None
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINTR):
                    continue  # the request was interrupted before it was read
                if exc.errno != errno.ENODEV:
                    log.error("reading /dev/fuse: %s", exc.strerror)
                self._stopping = True  # ENODEV: unmounted, or the connection aborted
                return None
            return Request(memoryview(self._buffer)[:size])
        return None

    async def _answer(self, request: Request) -> None:
        opcode = request.opcode
        if opcode in (wire.FORGET, wire.BATCH_FORGET, wire.INTERRUPT):
            return  # never answered
        handler = self._handlers.get(opcode)
        if self.debug:
            log.debug(
                "request %d: opcode %d, node %d, pid %d",
                request.unique,
                opcode,
                request.nodeid,
                request.ctx.pid,
            )
        try:
            if handler is None:
                raise wire.FUSEError(errno.ENOSYS)
            message = wire.reply(request.unique, await handler(request))
        except wire.FUSEError as exc:
            message = wire.error_reply(request.unique, exc.errno)
        except Exception:
            log.exception("FUSE request %d failed", opcode)
            message = wire.error_reply(request.unique, errno.EIO)
        if self.debug:
            error = wire.OUT_HEADER.unpack_from(message)[1]
            log.debug("answer %d: %s", request.unique, os.strerror(-error) if error else "ok")
        self._send(message)

    def _send(self, message: bytes) -> None:
        try:
            os.write(self.fd, message)
        except OSError as exc:
            # ENOENT: its caller was interrupted; ENODEV: unmounted meanwhile.
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.error("answering a FUSE request: %s", exc.strerror)

    # ------------------------------------------------------------ handlers

    async def _lookup(self, r: Request) -> bytes:
        return wire.entry_out(await self.ops.lookup(r.nodeid, wire.name_of(r.body), r.ctx))

    async def _getattr(self, r: Request) -> bytes:
        return wire.attr_out(await self.ops.getattr(r.nodeid, r.ctx))

    async def _setattr(self, r: Request) -> bytes:
        fields, attr, fh = wire.setattr_in(r.body)
        return wire.attr_out(await self.ops.setattr(r.nodeid, attr, fields, fh, r.ctx))

    async def _mkdir(self, r: Request) -> bytes:
        mode, name = wire.mkdir_in(r.body)
        return wire.entry_out(await self.ops.mkdir(r.nodeid, name, mode, r.ctx))

    async def _rmdir(self, r: Request) -> bytes:
        await self.ops.rmdir(r.nodeid, wire.name_of(r.body), r.ctx)
        return b""

    async def _not_made(self, r: Request) -> bytes:
        """Create, mknod, symlink, link, unlink, rename: refused with a sentence."""
        body, parent = r.body, r.nodeid
        if r.opcode == wire.MKNOD:
            name = wire.name_of(body[_MKNOD_IN.size :])
        elif r.opcode == wire.CREATE:
            name = wire.name_of(body[_CREATE_IN.size :])
        elif r.opcode == wire.LINK:
            name = wire.name_of(body[_LINK_IN.size :])
        elif r.opcode == wire.RENAME:
            name = wire.two_names(body[_RENAME_IN.size :])[0]
        elif r.opcode == wire.RENAME2:
            name = wire.two_names(body[_RENAME2_IN.size :])[0]
        else:  # SYMLINK: name, target; UNLINK: name
            name = wire.name_of(body)
        await self.ops.not_made(r.opcode, parent, name)
        raise wire.FUSEError(errno.EPERM)

    async def _open(self, r: Request) -> bytes:
        info: FileInfo = await self.ops.open(r.nodeid, wire.open_flags(r.body), r.ctx)
        return wire.open_out(info)

    async def _read(self, r: Request) -> bytes:
        fh, offset, size = wire.io_in(r.body)
        data: bytes = await self.ops.read(fh, offset, size)
        return data

    async def _write(self, r: Request) -> bytes:
        fh, offset, _ = wire.io_in(r.body)
        return wire.write_out(await self.ops.write(fh, offset, wire.write_data(r.body)))

    async def _flush(self, r: Request) -> bytes:
        await self.ops.flush(wire.fh_in(r.body))
        return b""

    async def _release(self, r: Request) -> bytes:
        await self.ops.release(wire.fh_in(r.body))
        return b""

    async def _opendir(self, r: Request) -> bytes:
        fh = await self.ops.opendir(r.nodeid, r.ctx)
        return wire.open_out(FileInfo(fh=fh, direct_io=False))

    async def _readdir(self, r: Request) -> bytes:
        fh, offset, size = wire.io_in(r.body)
        listing = Listing(room=size, plus=r.opcode == wire.READDIRPLUS)
        await self.ops.readdir(fh, offset, listing)
        return b"".join(listing.parts)

    async def _releasedir(self, r: Request) -> bytes:
        await self.ops.releasedir(wire.fh_in(r.body))
        return b""

    async def _statfs(self, r: Request) -> bytes:
        return wire.statfs_out(await self.ops.statfs(r.ctx))

    async def _destroy(self, r: Request) -> bytes:
        self._stopping = True
        return b""


_NOT_MADE: tuple[int, ...] = (wire.MKNOD, wire.CREATE, wire.SYMLINK, wire.LINK, wire.UNLINK)
_NOT_MADE += (wire.RENAME, wire.RENAME2)


@types.coroutine
def _resume(coro: Any, step: Any) -> Generator[Any, Any, None]:
    """Go on running ``coro``, which yielded ``step`` to trio in this task: the
    rest of ``await coro``."""
    while True:
        try:
            value = yield step
        except BaseException as exc:
            try:
                step = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                step = coro.send(value)
            except StopIteration:
                return
