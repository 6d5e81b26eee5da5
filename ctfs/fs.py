"""The FUSE operations: inode table, dispatch to the file declarations, errno boundary.

This layer is thin on purpose.  What a file contains and what a write does live in
``ctfs.files``; what a container is lives in ``ctfs.container``.  Every operation
passes through ``_boundary``: ``CtfsError`` becomes its errno, ``FUSEError`` passes,
and anything else is logged with the operation and becomes EIO, so one bug never
takes the mount down.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3
import trio

from ctfs.container import Container
from ctfs.errors import CtfsError, busy, invalid, not_permitted
from ctfs.files import (
    CONTAINER_FILES,
    DATA_FILES,
    ROOT_FILES,
    ContainerFile,
    DataFile,
    RootFile,
    Upload,
)
from ctfs.host import Host
from ctfs.values import command_text, parse_ctid, shown

log = logging.getLogger(__name__)

ROOT_INODE: int = pyfuse3.ROOT_INODE
FIRST_DYNAMIC_INODE = 1000
# Entries and attributes may be cached briefly: a file's mode and size never change,
# and a container directory only disappears through rmdir, which the kernel sees.
CACHE_S = 1.0

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _boundary(op: F) -> F:
    @functools.wraps(op)
    async def wrapper(self: CtfsOperations, *args: Any) -> Any:
        try:
            return await op(self, *args)
        except pyfuse3.FUSEError:
            raise
        except CtfsError as exc:
            if not exc.recorded:
                log.info(
                    "%s: %s (%s)",
                    op.__name__,
                    exc.sentence,
                    errno.errorcode.get(exc.errno_value, exc.errno_value),
                )
            raise pyfuse3.FUSEError(exc.errno_value) from None
        except Exception:
            log.exception("%s%r failed", op.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


Decl = ContainerFile | RootFile | DataFile


@dataclass
class OpenFile:
    """One open(): the text rendered then, served unchanged to every read.

    For a data file: ``fd`` to read from, or ``upload`` being written.
    """

    container: Container | None
    decl: Decl
    data: bytes
    # Holds the one-writer claim on an exclusive file (see ``CtfsOperations.open``).
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
        self.root_files = {
            f.name.encode(): (ROOT_INODE + 1 + i, f) for i, f in enumerate(ROOT_FILES)
        }
        self.root_by_inode = {ino: f for ino, f in self.root_files.values()}
        self.ct_files: dict[bytes, ContainerFile | DataFile] = {
            f.name.encode(): f for f in CONTAINER_FILES
        }
        self.ct_files.update({f.name.encode(): f for f in DATA_FILES})
        # (ctid,) is a container directory; (ctid, name) one of its files.
        self._inode_of: dict[tuple[int] | tuple[int, str], int] = {}
        self._key_of: dict[int, tuple[int] | tuple[int, str]] = {}
        self._next_inode = itertools.count(FIRST_DYNAMIC_INODE)
        self._handles: dict[int, OpenFile] = {}
        self._writers: dict[tuple[int, str], int] = {}
        self._next_fh = itertools.count(1)
        self._now_ns = time.time_ns()

    # ------------------------------------------------------------ inodes

    def _inode(self, key: tuple[int] | tuple[int, str]) -> int:
        ino = self._inode_of.get(key)
        if ino is None:
            ino = next(self._next_inode)
            self._inode_of[key] = ino
            self._key_of[ino] = key
        return ino

    def _attrs(self, ino: int, mode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.generation = 0
        attr.entry_timeout = CACHE_S
        attr.attr_timeout = CACHE_S
        attr.st_mode = mode
        attr.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        attr.st_uid = 0
        attr.st_gid = 0
        attr.st_size = 0
        attr.st_blksize = 4096
        attr.st_blocks = 0
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self._now_ns
        return attr

    @staticmethod
    def _file_mode(writable: bool) -> int:
        return stat.S_IFREG | (0o644 if writable else 0o444)

    def _resolve(self, ino: int) -> tuple[Container | None, Decl | None]:
        """The container and file an inode stands for; FUSEError(ENOENT) when gone."""
        if ino == ROOT_INODE:
            return None, None
        if ino in self.root_by_inode:
            return None, self.root_by_inode[ino]
        key = self._key_of.get(ino)
        if key is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        container = self.host.get(key[0])
        if container is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if len(key) == 1:
            return container, None
        return container, self.ct_files[key[1].encode()]

    def _attrs_of(self, ino: int) -> pyfuse3.EntryAttributes:
        container, decl = self._resolve(ino)
        if decl is None:
            return self._attrs(ino, stat.S_IFDIR | 0o755)
        if isinstance(decl, DataFile):
            assert container is not None
            attrs = self._attrs(ino, stat.S_IFREG | decl.mode)
            # Its size changes at every freeze: never let the kernel cache it.
            attrs.attr_timeout = 0
            attrs.st_size = decl.size(container)
            attrs.st_blocks = (attrs.st_size + 511) // 512
            return attrs
        writable = isinstance(decl, ContainerFile) and decl.writable
        return self._attrs(ino, self._file_mode(writable))

    # ------------------------------------------------------ lookups, dirs

    @_boundary
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        container, decl = self._resolve(parent_inode)
        if decl is not None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if container is None:
            if name in self.root_files:
                return self._attrs_of(self.root_files[name][0])
            ctid = parse_ctid(name.decode(errors="replace"))
            if ctid is None or self.host.get(ctid) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attrs_of(self._inode((ctid,)))
        if name not in self.ct_files:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs_of(self._inode((container.ctid, name.decode())))

    @_boundary
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._attrs_of(inode)

    @_boundary
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        _, decl = self._resolve(inode)
        only_truncate = fields.update_size and not (
            fields.update_mode
            or fields.update_uid
            or fields.update_gid
            or fields.update_atime
            or fields.update_mtime
        )
        # "echo x > file" truncates before it writes; a control file has nothing to cut.
        # (A data file is written into a fresh upload: there is nothing to cut either.)
        if (
            only_truncate
            and attr.st_size == 0
            and (isinstance(decl, DataFile) or (isinstance(decl, ContainerFile) and decl.writable))
        ):
            return self._attrs_of(inode)
        raise pyfuse3.FUSEError(errno.EPERM)

    @_boundary
    async def opendir(self, inode: int, ctx: Any) -> int:
        _, decl = self._resolve(inode)
        if decl is not None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        container, _ = self._resolve(fh)
        entries: list[tuple[bytes, int]]
        if container is None:
            entries = [(name, ino) for name, (ino, _) in self.root_files.items()]
            entries += [
                (str(ctid).encode(), self._inode((ctid,))) for ctid in self.host.sorted_ctids()
            ]
        else:
            entries = [
                (name, self._inode((container.ctid, name.decode()))) for name in self.ct_files
            ]
        for index in range(start_id, len(entries)):
            name, ino = entries[index]
            try:
                attrs = self._attrs_of(ino)
            except pyfuse3.FUSEError:
                continue  # vanished while listing
            if not pyfuse3.readdir_reply(token, name, attrs, index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    @_boundary
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        if parent_inode != ROOT_INODE:
            raise not_permitted("only containers can be created, at the top of the mount")
        if name in self.root_files:
            raise CtfsError(errno.EEXIST, f"{name.decode()} is a file of ctfs")
        container = await self.host.create(name.decode(errors="replace"))
        return self._attrs_of(self._inode((container.ctid,)))

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        if parent_inode != ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        ctid = parse_ctid(name.decode(errors="replace"))
        if ctid is None:
            if name in self.root_files:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            raise pyfuse3.FUSEError(errno.ENOENT)
        await self.host.destroy(ctid)

    # Files are declared, never made, linked, renamed or removed by hand.
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    @_boundary
    async def statfs(self, ctx: Any) -> Any:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        data.f_files = len(self._key_of) + len(self.root_files) + 1
        return data

    # ----------------------------------------------------------- files

    @_boundary
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        container, decl = self._resolve(inode)
        if decl is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        wants_write = flags & os.O_ACCMODE != os.O_RDONLY
        if isinstance(decl, DataFile):
            assert container is not None
            return await self._open_data(container, decl, wants_write)
        if wants_write and not (isinstance(decl, ContainerFile) and decl.writable):
            raise pyfuse3.FUSEError(errno.EACCES)
        data = b""
        if flags & os.O_ACCMODE != os.O_WRONLY:
            data = (await self._render(container, decl)).encode()
        fh = next(self._next_fh)
        handle = OpenFile(container, decl, data)
        if wants_write and isinstance(decl, ContainerFile) and decl.exclusive:
            assert container is not None
            self._claim(fh, handle, container, decl)
        return self._file_info(handle, fh)

    def _file_info(self, handle: OpenFile, fh: int | None = None) -> Any:
        """Register ``handle``; every file is read with direct I/O, as in procfs: every
        read comes from the handle (a control file's size is 0, the dump file changes
        under the same name), never from the page cache."""
        if fh is None:
            fh = next(self._next_fh)
        self._handles[fh] = handle
        info = pyfuse3.FileInfo(fh=fh)
        info.direct_io = True
        info.keep_cache = False
        return info

    async def _open_data(self, container: Container, decl: DataFile, wants_write: bool) -> Any:
        handle = OpenFile(container, decl, b"")
        if wants_write:
            try:
                handle.upload = await decl.uploader(container)
            except CtfsError as exc:
                container.events.record(f"{decl.name}: refused: {exc.sentence}", logging.WARNING)
                exc.recorded = True
                raise
        else:
            handle.fd = await trio.to_thread.run_sync(decl.reader, container)
        return self._file_info(handle)

    async def _render(self, container: Container | None, decl: ContainerFile | RootFile) -> str:
        if isinstance(decl, RootFile):
            return await decl.render(self.host)
        assert container is not None
        return await decl.render(container)

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles[fh]
        if handle.fd is not None:
            return await trio.to_thread.run_sync(os.pread, handle.fd, size, off)
        return handle.data[off : off + size]

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        decl, container = handle.decl, handle.container
        if handle.upload is not None:
            upload = handle.upload
            upload.written = True
            return await trio.to_thread.run_sync(os.pwrite, upload.fd, buf, off)
        assert isinstance(decl, ContainerFile) and container is not None and decl.apply
        try:
            if off != 0:
                raise invalid(f"write at offset {off}; write the whole value at once")
            if decl.exclusive and handle.claim is None:
                self._claim(fh, handle, container, decl)  # written again after a flush
            await decl.apply(container, command_text(buf))
        except CtfsError as exc:
            verb = "failed" if exc.errno_value == errno.EIO else "rejected"
            container.events.record(
                f'{decl.name}: {verb} "{shown(buf)}": {exc.sentence}', logging.WARNING
            )
            exc.recorded = True
            raise
        return len(buf)

    def _claim(self, fh: int, handle: OpenFile, container: Container, decl: ContainerFile) -> None:
        """Let one open file at a time write ``decl``, or raise EBUSY.

        The kernel serialises writes to one inode, so two writers of ``state`` never
        reach ctfs at the same time: the second would wait out the first change and
        then act on a state it did not see.  Concurrent writers are told apart at
        open() instead, which the kernel does not serialise.
        """
        key = (container.ctid, decl.name)
        holder = self._writers.get(key)
        if holder is not None and holder != fh:
            container.events.record(
                f"{decl.name}: refused a second writer while one is under way", logging.WARNING
            )
            error = busy(f"{decl.name} is being written by another process")
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
        # close() waits for flush but not for release: drop the claim here, so a
        # script's next "echo ... > state" is never refused by the previous one.
        self._unclaim(fh)
        handle = self._handles.get(fh)
        if handle is not None and handle.upload is not None and handle.upload.written:
            # An upload is judged once, whole, when its writer closes it.
            upload, handle.upload = handle.upload, None
            await self._commit(handle, upload)

    async def _commit(self, handle: OpenFile, upload: Upload) -> None:
        decl, container = handle.decl, handle.container
        assert isinstance(decl, DataFile) and container is not None
        try:
            await decl.commit(container, upload)
        except CtfsError as exc:
            container.events.record(f"{decl.name}: rejected: {exc.sentence}", logging.WARNING)
            exc.recorded = True
            raise
        finally:
            _discard_upload(upload)

    async def release(self, fh: int) -> None:
        self._unclaim(fh)
        handle = self._handles.pop(fh, None)
        if handle is not None:
            if handle.fd is not None:
                os.close(handle.fd)
            if handle.upload is not None:
                _discard_upload(handle.upload)


def _discard_upload(upload: Upload) -> None:
    """Close an upload; its staging file goes unless it was put in place."""
    with contextlib.suppress(OSError):
        os.close(upload.fd)
    with contextlib.suppress(FileNotFoundError):
        upload.path.unlink()
