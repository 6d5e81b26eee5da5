"""The FUSE operations: inode table, dispatch to the declared tree, errno boundary.

This layer is thin on purpose.  What a file contains and what a write does are
declared in ``ctfs.files``; what a container is lives in ``ctfs.model``; how
write() calls make a command, in ``ctfs.fs.commands``.  Every operation passes
through the one errno boundary, ``ctfs.fs.boundary``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import trio

from ctfs.errors import CtfsError, not_permitted
from ctfs.files import ControlFile, DataFile, Directory, HostFile
from ctfs.fs import commands, wire
from ctfs.fs.attributes import attributes
from ctfs.fs.boundary import boundary as _boundary
from ctfs.fs.boundary import refusal as _refusal
from ctfs.fs.handles import OpenFile, Writers
from ctfs.fs.inodes import ROOT_INODE, Inodes, inode_of_handle
from ctfs.fs.places import Path, Place, child, every_path, listing, resolve, visible
from ctfs.fs.sizes import Sizes
from ctfs.model.caller import HOST, Caller, identify
from ctfs.model.container import Container
from ctfs.model.dump_upload import Upload
from ctfs.model.host import Host
from ctfs.policy import delegation

log = logging.getLogger(__name__)

_NOT_MADE_VERB = {wire.LINK: "linked", wire.UNLINK: "removed"}
_NOT_MADE_VERB |= {wire.RENAME: "renamed", wire.RENAME2: "renamed"}

# How long a process's identity is kept (see CtfsOperations._caller).
CALLER_TTL_S = 0.02


class CtfsOperations:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._inodes = Inodes()
        self._sizes = Sizes(self._store)
        # Set by the session that serves this: puts data in the kernel's page cache.
        self.notify_store: Callable[[int, int, bytes], None] | None = None
        self._callers: dict[int, tuple[float, Caller]] = {}
        self._handles: dict[int, OpenFile] = {}
        self._writers = Writers()
        self._now_ns = time.time_ns()
        host.ctx.open_inside = self._open_inside

    def _store(self, ino: int, offset: int, data: bytes) -> None:
        if self.notify_store is not None:
            self.notify_store(ino, offset, data)

    # ------------------------------------------------------------ inodes

    def _inode(self, path: Path) -> int:
        return self._inodes.number(path)

    def _path(self, ino: int, caller: Caller | None = None) -> Path:
        """The path of an inode, if ``caller`` may see it; FUSEError(ENOENT) otherwise."""
        path = self._inodes.path(ino, every_path(self.host))
        if path is None or (caller is not None and not visible(path, caller)):
            raise wire.FUSEError(errno.ENOENT)
        return path

    def _place(self, ino: int, caller: Caller | None = None) -> Place:
        """The place an inode stands for; FUSEError(ENOENT) when it is gone, or
        hidden from ``caller``.  (Calls without a caller act on an open handle,
        whose opener was checked.)"""
        return resolve(self.host, self._path(ino, caller))

    def _caller(self, ctx: Any) -> Caller:
        """Who sent the request.  One process's requests come in bursts (lookup, open,
        getattr): its identity is kept for CALLER_TTL_S, far too short for its PID to
        be freed and handed to another process meanwhile (that takes pid_max forks;
        32768 here, 1.6 million a second to do it in time)."""
        now = time.monotonic()
        known = self._callers.get(ctx.pid)
        if known is not None and now - known[0] < CALLER_TTL_S:
            return known[1]
        caller = identify(self.host.backends, ctx.pid)
        if len(self._callers) > 4096:
            self._callers.clear()
        self._callers[ctx.pid] = (now, caller)
        return caller

    def _attrs(self, ino: int, place: Place) -> wire.EntryAttributes:
        attr = attributes(ino, place, self._now_ns, self._sizes.last_text(ino))
        self._sizes.told(ino, attr.st_size)
        return attr

    # ------------------------------------------------------ lookups, dirs

    @_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        caller = self._caller(ctx)
        text = name.decode(errors="replace")
        path = (*self._path(parent_inode, caller), text)
        if not visible(path, caller):
            raise wire.FUSEError(errno.ENOENT)
        place = child(self.host, resolve(self.host, path[:-1]), text)
        return self._attrs(self._inode(path), place)

    @_boundary
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._attrs(inode, self._place(inode, self._caller(ctx)))

    @_boundary
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        place = self._place(inode, self._caller(ctx))
        node = place.node
        name = "/".join(self._path(inode))
        others = (
            fields.update_mode
            or fields.update_uid
            or fields.update_gid
            or fields.update_atime
            or fields.update_mtime
        )
        if others:
            raise _refusal(place, name, not_permitted("the mode, owner and times are fixed"))
        writable = isinstance(node, DataFile) or (isinstance(node, ControlFile) and node.writable)
        if fields.update_size and not writable:
            raise _refusal(place, name, not_permitted("it is read-only; it cannot be truncated"))
        # "echo x > file" truncates before it writes; a control file has nothing to cut
        # (and a data file is written into a fresh upload).  Any other size is refused.
        if fields.update_size and attr.st_size != 0:
            raise _refusal(
                place,
                name,
                not_permitted(
                    f"truncating to {attr.st_size} bytes is not possible; "
                    "only truncation to 0 (as > does) is accepted"
                ),
            )
        return self._attrs(inode, place)

    @_boundary
    async def opendir(self, inode: int, ctx: Any) -> int:
        caller = self._caller(ctx)
        if not isinstance(self._place(inode, caller).node, Directory):
            raise wire.FUSEError(errno.ENOTDIR)
        if inode == ROOT_INODE and not caller.is_host:
            # The top lists every container: only the host may read it.
            raise wire.FUSEError(errno.EACCES)
        return inode

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        path = self._path(fh)
        entries = list(listing(self.host, self._place(fh)))
        for index in range(start_id, len(entries)):
            name, place = entries[index]
            attrs = self._attrs(self._inode((*path, name)), place)
            if not wire.readdir_reply(token, name.encode(), attrs, index + 1):
                break

    @_boundary
    async def releasedir(self, fh: int) -> None:
        return None

    @_boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        caller = self._caller(ctx)
        self._path(parent_inode, caller)
        if parent_inode != ROOT_INODE:
            raise not_permitted("only containers can be created, at the top of the mount")
        if not caller.is_host:
            raise not_permitted(f"containers cannot be created from {caller.describe()}")
        text = name.decode(errors="replace")
        with contextlib.suppress(wire.FUSEError):
            if not isinstance(child(self.host, self._place(ROOT_INODE), text).node, Directory):
                raise CtfsError(errno.EEXIST, f"{text} is a file of ctfs")
        container = await self.host.create(text)
        path = (str(container.ctid),)
        return self._attrs(self._inode(path), resolve(self.host, path))

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        caller = self._caller(ctx)
        text = name.decode(errors="replace")
        if not visible((*self._path(parent_inode, caller), text), caller):
            raise wire.FUSEError(errno.ENOENT)
        place = child(self.host, self._place(parent_inode), text)
        if not isinstance(place.node, Directory):
            raise wire.FUSEError(errno.ENOTDIR)
        container = place.container
        if parent_inode != ROOT_INODE or container is None:
            raise not_permitted(f"{text} belongs to ctfs")
        if not caller.is_host:
            raise _refusal(place, "rmdir", not_permitted(f"not allowed from {caller.describe()}"))
        await self.host.destroy(container.ctid)

    # Files are declared, never made, linked, renamed or removed by hand.
    @_boundary
    async def not_made(self, opcode: int, parent_inode: int, name: bytes) -> None:
        """Create, mknod, symlink, link, unlink, rename: always refused."""
        raise self._not_made(parent_inode, name, _NOT_MADE_VERB.get(opcode, "created"))

    def _not_made(self, parent_inode: int, name: bytes, what: str) -> CtfsError:
        place = self._place(parent_inode)
        text = name.decode(errors="replace")
        return _refusal(
            place, text, not_permitted(f"files of ctfs cannot be {what}; they are fixed")
        )

    @_boundary
    async def statfs(self, ctx: Any) -> Any:
        data = wire.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        data.f_files = len(self._inodes)
        return data

    # ----------------------------------------------------------- files

    @_boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        caller = self._caller(ctx)
        place = self._place(inode, caller)
        node = place.node
        if isinstance(node, Directory):
            raise wire.FUSEError(errno.EISDIR)
        wants_write = flags & os.O_ACCMODE != os.O_RDONLY
        name = node.name
        if wants_write and not caller.is_host and not self._delegated(place, caller):
            raise _refusal(
                place, name, not_permitted(f"writing is not allowed from {caller.describe()}")
            )
        handle = OpenFile(place, caller, inode, writes=wants_write)
        fh = self._inodes.handle(inode, self._handles)
        if isinstance(node, DataFile):
            assert place.container is not None
            await self._open_data(handle, node, place.container, wants_write)
        else:
            if wants_write and not (isinstance(node, ControlFile | HostFile) and node.writable):
                raise wire.FUSEError(errno.EACCES)
            if flags & os.O_ACCMODE != os.O_WRONLY:
                handle.data = (await self._render(place, caller)).encode()
                await self._sizes.opened(inode, handle.data, flags)
            if wants_write and isinstance(node, ControlFile) and node.exclusive:
                self._writers.claim(fh, handle)
            handle.rewrite = wants_write and isinstance(node, HostFile) and bool(flags & os.O_TRUNC)
        return self._file_info(handle, fh)

    @staticmethod
    def _delegated(place: Place, caller: Caller) -> bool:
        """Whether the host lets ``caller``'s container write the file at ``place``."""
        container = place.container
        return (
            container is not None
            and caller.ctid == container.ctid
            and place.node.name in delegation.delegated(container.settings)
        )

    def _open_inside(self, ctid: int) -> int:
        return sum(1 for h in self._handles.values() if h.caller.ctid == ctid)

    def _file_info(self, handle: OpenFile, fh: int) -> Any:
        """Register ``handle``; every file is read with direct I/O, as in procfs: every
        read comes from the handle (a control file's size is 0, the dump file changes
        under the same name), never from the page cache."""
        self._handles[fh] = handle
        # A reader's close needs no FLUSH (one request less per read): a flush
        # only finishes what was written.
        return wire.FileInfo(fh=fh, direct_io=True, noflush=not handle.writes)

    async def _open_data(
        self, handle: OpenFile, node: DataFile, container: Container, wants_write: bool
    ) -> None:
        if wants_write:
            try:
                handle.upload = await node.uploader(container)
            except CtfsError as exc:
                raise _refusal(handle.place, node.name, exc) from None
        else:
            handle.fd = await trio.to_thread.run_sync(node.reader, container)

    async def _render(self, place: Place, caller: Caller) -> str:
        node = place.node
        if isinstance(node, HostFile):
            return await node.render(self.host, caller)
        assert isinstance(node, ControlFile) and place.container is not None
        return await node.render(place.container, caller)

    async def _handle(self, fh: int) -> OpenFile:
        """The open file ``fh``.  One that an earlier ctfsd opened (the kernel keeps
        handles across a takeover) is opened again here: rendered now, for the host,
        since only the host can have opened a file for writing."""
        handle = self._handles.get(fh)
        if handle is None:
            place = self._place(inode_of_handle(fh))
            handle = OpenFile(place, HOST, inode_of_handle(fh))
            node = place.node
            if isinstance(node, DataFile):
                assert place.container is not None
                handle.fd = await trio.to_thread.run_sync(node.reader, place.container)
            elif not isinstance(node, Directory):
                handle.data = (await self._render(place, HOST)).encode()
            self._handles[fh] = handle
        return handle

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = await self._handle(fh)
        if handle.fd is not None:
            return await trio.to_thread.run_sync(os.pread, handle.fd, size, off)
        if off == 0:
            if handle.read_from_start:
                # Read from the start again (top and free keep /proc/meminfo open,
                # seek to 0 and read at every refresh): rendered anew, as procfs does.
                handle.data = (await self._render(handle.place, handle.caller)).encode()
            handle.read_from_start = True
        data = handle.data[off : off + size]
        self._sizes.read(handle.inode, off, size, len(data))
        return data

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = await self._handle(fh)
        if handle.upload is not None:
            upload = handle.upload
            upload.written = True
            return await trio.to_thread.run_sync(os.pwrite, upload.fd, buf, off)
        node, container = handle.place.node, handle.place.container
        if isinstance(node, HostFile):
            await commands.write_host(handle.command, node, off, buf)
            return len(buf)
        assert isinstance(node, ControlFile) and container is not None
        if node.exclusive and handle.claim is None:
            self._writers.claim(fh, handle)  # written again after a flush
        await commands.write(handle.command, node, container, handle.caller, off, buf)
        return len(buf)

    @_boundary
    async def flush(self, fh: int) -> None:
        # close() waits for flush but not for release: drop the claim after the
        # command is done, so a script's next "echo ... > state" is never refused.
        handle = self._handles.get(fh)
        try:
            if handle is None:
                return
            node, container = handle.place.node, handle.place.container
            if isinstance(node, ControlFile) and container is not None:
                await commands.finish(handle.command, node, container, handle.caller)
            elif isinstance(node, HostFile) and (handle.command.data or handle.rewrite):
                handle.rewrite = False
                await commands.finish_host(handle.command, node, self.host, handle.caller)
            elif handle.upload is not None and handle.upload.written:
                # An upload is judged once, whole, when its writer closes it.
                upload, handle.upload = handle.upload, None
                await self._commit(handle, upload)
        finally:
            self._writers.unclaim(fh, self._handles.get(fh))

    async def _commit(self, handle: OpenFile, upload: Upload) -> None:
        node, container = handle.place.node, handle.place.container
        assert isinstance(node, DataFile) and container is not None
        try:
            await node.commit(container, upload)
        except CtfsError as exc:
            container.events.record(f"{node.name}: rejected: {exc.sentence}", logging.WARNING)
            exc.recorded = True
            raise
        finally:
            node.discard(upload)

    @_boundary
    async def release(self, fh: int) -> None:
        self._writers.unclaim(fh, self._handles.get(fh))
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.fd is not None:
            os.close(handle.fd)
        if handle.upload is not None and isinstance(handle.place.node, DataFile):
            handle.place.node.discard(handle.upload)
