"""The FUSE operations: inode table, dispatch to the declared tree, errno boundary.

This layer is thin on purpose.  What a file contains and what a write does are
declared in ``ctfs.files``; what a container is lives in ``ctfs.model``; how
write() calls make a command, in ``ctfs.fs.commands``.  Every operation passes
through the one errno boundary, ``ctfs.fs.boundary``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from ctfs.errors import CtfsError, busy, not_permitted
from ctfs.files import ControlFile, DataFile, Directory, HostFile
from ctfs.fs import commands
from ctfs.fs.boundary import boundary as _boundary
from ctfs.fs.boundary import refusal as _refusal
from ctfs.fs.places import Path, Place, child, listing, resolve
from ctfs.model.caller import Caller, identify
from ctfs.model.container import Container
from ctfs.model.dump_upload import Upload
from ctfs.model.host import Host

log = logging.getLogger(__name__)

ROOT_INODE: int = pyfuse3.ROOT_INODE
# Entries and attributes may be cached briefly: a file's mode and size never change,
# and a container directory only disappears through rmdir, which the kernel sees.
CACHE_S = 1.0


@dataclass
class OpenFile:
    """One open(): the text rendered then, served unchanged to every read.

    For a data file: ``fd`` to read from, or ``upload`` being written.
    """

    place: Place
    caller: Caller
    data: bytes = b""
    command: commands.Command = field(default_factory=commands.Command)
    # Holds the one-writer claim on an exclusive file (see ``CtfsOperations._claim``).
    claim: tuple[int, str] | None = None
    fd: int | None = None
    upload: Upload | None = None


class CtfsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, host: Host) -> None:
        super().__init__()
        self.host = host
        self._inode_of: dict[Path, int] = {(): ROOT_INODE}
        self._path_of: dict[int, Path] = {ROOT_INODE: ()}
        self._next_inode = itertools.count(ROOT_INODE + 1)
        self._handles: dict[int, OpenFile] = {}
        self._writers: dict[tuple[int, str], int] = {}
        self._next_fh = itertools.count(1)
        self._now_ns = time.time_ns()

    # ------------------------------------------------------------ inodes

    def _inode(self, path: Path) -> int:
        ino = self._inode_of.get(path)
        if ino is None:
            ino = next(self._next_inode)
            self._inode_of[path] = ino
            self._path_of[ino] = path
        return ino

    def _place(self, ino: int) -> Place:
        """The place an inode stands for; FUSEError(ENOENT) when it is gone."""
        path = self._path_of.get(ino)
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return resolve(self.host, path)

    def _caller(self, ctx: Any) -> Caller:
        return identify(self.host.backends, ctx.pid)

    def _attrs(self, ino: int, place: Place) -> pyfuse3.EntryAttributes:
        node = place.node
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.generation = 0
        attr.entry_timeout = CACHE_S
        attr.attr_timeout = CACHE_S
        attr.st_nlink = 1
        attr.st_uid = attr.st_gid = 0
        attr.st_size = attr.st_blocks = 0
        attr.st_blksize = 4096
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self._now_ns
        if isinstance(node, Directory):
            attr.st_mode, attr.st_nlink = stat.S_IFDIR | 0o755, 2
        elif isinstance(node, DataFile):
            assert place.container is not None
            attr.st_mode = stat.S_IFREG | node.mode
            # Its size changes at every freeze: never let the kernel cache it.
            attr.attr_timeout = 0
            attr.st_size = node.size(place.container)
            attr.st_blocks = (attr.st_size + 511) // 512
        else:
            writable = isinstance(node, ControlFile) and node.writable
            attr.st_mode = stat.S_IFREG | (0o644 if writable else 0o444)
        return attr

    # ------------------------------------------------------ lookups, dirs

    @_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        parent = self._place(parent_inode)
        place = child(self.host, parent, name.decode(errors="replace"))
        path = (*self._path_of[parent_inode], name.decode(errors="replace"))
        return self._attrs(self._inode(path), place)

    @_boundary
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._attrs(inode, self._place(inode))

    @_boundary
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        place = self._place(inode)
        node = place.node
        name = "/".join(self._path_of[inode])
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
        if not isinstance(self._place(inode).node, Directory):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        path = self._path_of[fh]
        entries = list(listing(self.host, self._place(fh)))
        for index in range(start_id, len(entries)):
            name, place = entries[index]
            attrs = self._attrs(self._inode((*path, name)), place)
            if not pyfuse3.readdir_reply(token, name.encode(), attrs, index + 1):
                break

    @_boundary
    async def releasedir(self, fh: int) -> None:
        return None

    @_boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        caller = self._caller(ctx)
        if parent_inode != ROOT_INODE:
            raise not_permitted("only containers can be created, at the top of the mount")
        if not caller.is_host:
            raise not_permitted(f"containers cannot be created from {caller.describe()}")
        text = name.decode(errors="replace")
        with contextlib.suppress(pyfuse3.FUSEError):
            if not isinstance(child(self.host, self._place(ROOT_INODE), text).node, Directory):
                raise CtfsError(errno.EEXIST, f"{text} is a file of ctfs")
        container = await self.host.create(text)
        path = (str(container.ctid),)
        return self._attrs(self._inode(path), resolve(self.host, path))

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        place = child(self.host, self._place(parent_inode), name.decode(errors="replace"))
        if not isinstance(place.node, Directory):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        container = place.container
        if parent_inode != ROOT_INODE or container is None:
            raise not_permitted(f"{name.decode(errors='replace')} belongs to ctfs")
        caller = self._caller(ctx)
        if not caller.is_host:
            raise _refusal(place, "rmdir", not_permitted(f"not allowed from {caller.describe()}"))
        await self.host.destroy(container.ctid)

    # Files are declared, never made, linked, renamed or removed by hand.
    @_boundary
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        raise self._not_made(parent_inode, name, "created")

    @_boundary
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        raise self._not_made(parent_inode, name, "created")

    @_boundary
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        raise self._not_made(parent_inode, name, "created")

    @_boundary
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        raise self._not_made(new_parent_inode, new_name, "linked")

    @_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise self._not_made(parent_inode, name, "removed")

    @_boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        raise self._not_made(parent_inode_old, name_old, "renamed")

    def _not_made(self, parent_inode: int, name: bytes, what: str) -> CtfsError:
        place = self._place(parent_inode)
        text = name.decode(errors="replace")
        return _refusal(
            place, text, not_permitted(f"files of ctfs cannot be {what}; they are fixed")
        )

    @_boundary
    async def statfs(self, ctx: Any) -> Any:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        data.f_files = len(self._path_of)
        return data

    # ----------------------------------------------------------- files

    @_boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        place = self._place(inode)
        node = place.node
        if isinstance(node, Directory):
            raise pyfuse3.FUSEError(errno.EISDIR)
        caller = self._caller(ctx)
        wants_write = flags & os.O_ACCMODE != os.O_RDONLY
        name = node.name
        if wants_write and not caller.is_host and not isinstance(node, HostFile):
            raise _refusal(
                place, name, not_permitted(f"writing is not allowed from {caller.describe()}")
            )
        handle = OpenFile(place, caller)
        fh = next(self._next_fh)
        if isinstance(node, DataFile):
            assert place.container is not None
            await self._open_data(handle, node, place.container, wants_write)
        else:
            if wants_write and not (isinstance(node, ControlFile) and node.writable):
                raise pyfuse3.FUSEError(errno.EACCES)
            if flags & os.O_ACCMODE != os.O_WRONLY:
                handle.data = (await self._render(place, caller)).encode()
            if wants_write and isinstance(node, ControlFile) and node.exclusive:
                self._claim(fh, handle)
        return self._file_info(handle, fh)

    def _file_info(self, handle: OpenFile, fh: int) -> Any:
        """Register ``handle``; every file is read with direct I/O, as in procfs: every
        read comes from the handle (a control file's size is 0, the dump file changes
        under the same name), never from the page cache."""
        self._handles[fh] = handle
        info = pyfuse3.FileInfo(fh=fh)
        info.direct_io = True
        info.keep_cache = False
        return info

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

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles[fh]
        if handle.fd is not None:
            return await trio.to_thread.run_sync(os.pread, handle.fd, size, off)
        return handle.data[off : off + size]

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        if handle.upload is not None:
            upload = handle.upload
            upload.written = True
            return await trio.to_thread.run_sync(os.pwrite, upload.fd, buf, off)
        node, container = handle.place.node, handle.place.container
        assert isinstance(node, ControlFile) and container is not None
        if node.exclusive and handle.claim is None:
            self._claim(fh, handle)  # written again after a flush
        await commands.write(handle.command, node, container, handle.caller, off, buf)
        return len(buf)

    def _claim(self, fh: int, handle: OpenFile) -> None:
        """Let one open file at a time write an exclusive file, or raise EBUSY.

        The kernel serialises writes to one inode, so two writers of ``state`` never
        reach ctfs at the same time: the second would wait out the first change and
        then act on a state it did not see.  Concurrent writers are told apart at
        open() instead, which the kernel does not serialise.
        """
        container, node = handle.place.container, handle.place.node
        assert container is not None and isinstance(node, ControlFile)
        name = node.name
        key = (container.ctid, name)
        holder = self._writers.get(key)
        if holder is not None and holder != fh:
            container.events.record(
                f"{name}: refused a second writer while one is under way", logging.WARNING
            )
            error = busy(f"{name} is being written by another process")
            error.recorded = True
            raise error
        self._writers[key] = fh
        handle.claim = key

    def _unclaim(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if handle is not None and handle.claim is not None:
            if self._writers.get(handle.claim) == fh:
                del self._writers[handle.claim]
            handle.claim = None

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
            elif handle.upload is not None and handle.upload.written:
                # An upload is judged once, whole, when its writer closes it.
                upload, handle.upload = handle.upload, None
                await self._commit(handle, upload)
        finally:
            self._unclaim(fh)

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
        self._unclaim(fh)
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.fd is not None:
            os.close(handle.fd)
        if handle.upload is not None and isinstance(handle.place.node, DataFile):
            handle.place.node.discard(handle.upload)
