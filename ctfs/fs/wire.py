"""The FUSE kernel protocol's messages, as ctfs speaks it (linux/fuse.h, 7.31).

Only the parts ctfs uses: the request header, the bodies of the requests it
answers, and the replies and notifications it sends.  Pure packing, no I/O: the
session (``ctfs.fs.session``) reads and writes /dev/fuse.

Invariants: every reply is one ``bytes`` starting with its out-header, whose
length is the whole message; names in requests are NUL-terminated; directory
entries are padded to 8 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

ROOT_INODE = 1

# Opcodes (enum fuse_opcode).
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 17, 18, 25, 26, 27, 28, 29
CREATE, INTERRUPT, DESTROY, BATCH_FORGET, READDIRPLUS, RENAME2 = 35, 36, 38, 42, 44, 45

# Notification codes (enum fuse_notify_code), sent with unique 0.
NOTIFY_STORE = 4
NOTIFY_RESEND = 7

# FOPEN_* flags of an open reply.
FOPEN_DIRECT_IO = 1 << 0
FOPEN_NOFLUSH = 1 << 5

# FUSE_INIT capability flags ctfs asks for: what libfuse 3.14 negotiated for it
# (ASYNC_READ, ATOMIC_O_TRUNC, BIG_WRITES, AUTO_INVAL_DATA, ASYNC_DIO, MAX_PAGES),
# read from its debug log, less READDIRPLUS (ctfs answers plain READDIR).
FUSE_ASYNC_READ = 1 << 0
FUSE_ATOMIC_O_TRUNC = 1 << 3
FUSE_BIG_WRITES = 1 << 5
FUSE_AUTO_INVAL_DATA = 1 << 12
FUSE_ASYNC_DIO = 1 << 15
FUSE_MAX_PAGES = 1 << 22
WANTED = (
    FUSE_ASYNC_READ
    | FUSE_ATOMIC_O_TRUNC
    | FUSE_BIG_WRITES
    | FUSE_AUTO_INVAL_DATA
    | FUSE_ASYNC_DIO
    | FUSE_MAX_PAGES
)
KERNEL_MAJOR = 7
OUR_MINOR = 31
MAX_WRITE = 1 << 20
MAX_PAGES = MAX_WRITE // 4096
# A request is at most one write's data plus its headers.
BUFFER_SIZE = MAX_WRITE + 4096

# FATTR_* bits of a setattr request.
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1, 2, 4, 8
FATTR_ATIME, FATTR_MTIME = 16, 32

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
_INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags
_INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")  # 64 bytes
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr, 88 bytes
_ENTRY = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid nsecs
_ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
_OPEN_IN = struct.Struct("<II")  # flags open_flags
_OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
_IO_IN = struct.Struct("<QQIIQII")  # fh offset size flags lock_owner flags padding
_WRITE_OUT = struct.Struct("<II")
_FH_IN = struct.Struct("<Q")  # release, releasedir, flush: fh first
_MKDIR_IN = struct.Struct("<II")  # mode umask
_SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
_STATFS_OUT = struct.Struct("<QQQQQIII4x24x")
_DIRENT = struct.Struct("<QQII")  # ino off namelen type
_STORE = struct.Struct("<QQI4x")  # nodeid offset size


class FUSEError(Exception):
    """An operation's answer is this errno."""

    def __init__(self, errno_value: int) -> None:
        super().__init__(errno_value)
        self.errno = errno_value


@dataclass
class EntryAttributes:
    """What stat() shows of an inode, and how long the kernel may keep it."""

    st_ino: int = 0
    generation: int = 0
    entry_timeout: float = 0.0
    attr_timeout: float = 0.0
    st_mode: int = 0
    st_nlink: int = 1
    st_uid: int = 0
    st_gid: int = 0
    st_rdev: int = 0
    st_size: int = 0
    st_blksize: int = 4096
    st_blocks: int = 0
    st_atime_ns: int = 0
    st_mtime_ns: int = 0
    st_ctime_ns: int = 0


@dataclass
class FileInfo:
    """An open reply: the handle, and whether reads bypass the page cache and
    whether close() skips the FLUSH request."""

    fh: int
    direct_io: bool = True
    noflush: bool = False


@dataclass
class StatvfsData:
    f_bsize: int = 4096
    f_frsize: int = 4096
    f_namemax: int = 255
    f_files: int = 0


@dataclass(frozen=True)
class RequestContext:
    """Who sent a request, as the kernel tells it."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class SetattrFields:
    update_mode: bool
    update_uid: bool
    update_gid: bool
    update_atime: bool
    update_mtime: bool
    update_size: bool


@dataclass
class Listing:
    """The entries of one READDIR reply, as many as fit in ``room`` bytes."""

    room: int
    # READDIRPLUS (each entry with its attributes): only on a connection a libfuse
    # ctfs initialised, before an upgrade in place; ctfs itself does not ask for it.
    plus: bool = False
    parts: list[bytes] = field(default_factory=list)


def readdir_reply(listing: Listing, name: bytes, attr: EntryAttributes, next_id: int) -> bool:
    """Add an entry to ``listing``; False (nothing added) when it does not fit."""
    size = (_DIRENT.size + len(name) + 7) & ~7
    entry = entry_out(attr) if listing.plus else b""
    if len(entry) + size > listing.room:
        return False
    dirent = _DIRENT.pack(attr.st_ino, next_id, len(name), (attr.st_mode >> 12) & 0xF) + name
    listing.parts.append(entry + dirent.ljust(size, b"\0"))
    listing.room -= len(entry) + size
    return True


def _split_ns(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def _attr(attr: EntryAttributes) -> bytes:
    a_s, a_ns = divmod(attr.st_atime_ns, 10**9)
    m_s, m_ns = divmod(attr.st_mtime_ns, 10**9)
    c_s, c_ns = divmod(attr.st_ctime_ns, 10**9)
    return _ATTR.pack(
        attr.st_ino,
        attr.st_size,
        attr.st_blocks,
        a_s,
        m_s,
        c_s,
        a_ns,
        m_ns,
        c_ns,
        attr.st_mode,
        attr.st_nlink,
        attr.st_uid,
        attr.st_gid,
        attr.st_rdev,
        attr.st_blksize,
        0,
    )


def reply(unique: int, payload: bytes = b"") -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + len(payload), 0, unique) + payload


def error_reply(unique: int, errno_value: int) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size, -errno_value, unique)


def entry_out(attr: EntryAttributes) -> bytes:
    e_s, e_ns = _split_ns(attr.entry_timeout)
    a_s, a_ns = _split_ns(attr.attr_timeout)
    return _ENTRY.pack(attr.st_ino, attr.generation, e_s, a_s, e_ns, a_ns) + _attr(attr)


def attr_out(attr: EntryAttributes) -> bytes:
    a_s, a_ns = _split_ns(attr.attr_timeout)
    return _ATTR_OUT.pack(a_s, a_ns, 0) + _attr(attr)


def open_out(info: FileInfo) -> bytes:
    flags = (FOPEN_DIRECT_IO if info.direct_io else 0) | (FOPEN_NOFLUSH if info.noflush else 0)
    return _OPEN_OUT.pack(info.fh, flags, 0)


def write_out(size: int) -> bytes:
    return _WRITE_OUT.pack(size, 0)


def statfs_out(data: StatvfsData) -> bytes:
    return _STATFS_OUT.pack(0, 0, 0, data.f_files, 0, data.f_bsize, data.f_namemax, data.f_frsize)


def init_out(init_request: bytes) -> bytes:
    """The reply to the kernel's INIT request (whole message, header included)."""
    unique = IN_HEADER.unpack_from(init_request)[2]
    major, minor, max_readahead, offered = _INIT_IN.unpack_from(init_request, IN_HEADER.size)
    if major != KERNEL_MAJOR or minor < OUR_MINOR:
        raise ValueError(f"the kernel speaks FUSE {major}.{minor}; ctfs needs 7.{OUR_MINOR}")
    body = _INIT_OUT.pack(
        KERNEL_MAJOR,
        OUR_MINOR,
        max_readahead,
        offered & WANTED,
        0,
        0,
        MAX_WRITE,
        1,
        MAX_PAGES,
        0,
        0,
        0,
    )
    return reply(unique, body)


def notify_store(ino: int, offset: int, data: bytes) -> bytes:
    body = _STORE.pack(ino, offset, len(data)) + data
    return OUT_HEADER.pack(OUT_HEADER.size + len(body), NOTIFY_STORE, 0) + body


def notify_resend() -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size, NOTIFY_RESEND, 0)


# ------------------------------------------------------------ request bodies


def name_of(body: bytes) -> bytes:
    return body[: body.index(b"\0")] if b"\0" in body else body


def two_names(body: bytes) -> tuple[bytes, bytes]:
    first, _, rest = body.partition(b"\0")
    return first, name_of(rest)


def open_flags(body: bytes) -> int:
    return int(_OPEN_IN.unpack_from(body)[0])


def io_in(body: bytes) -> tuple[int, int, int]:
    """fh, offset, size of a READ, WRITE or READDIR request."""
    fh, offset, size = _IO_IN.unpack_from(body)[:3]
    return fh, offset, size


def write_data(body: bytes) -> bytes:
    size = _IO_IN.unpack_from(body)[2]
    return body[_IO_IN.size : _IO_IN.size + size]


def fh_in(body: bytes) -> int:
    return int(_FH_IN.unpack_from(body)[0])


def mkdir_in(body: bytes) -> tuple[int, bytes]:
    mode = _MKDIR_IN.unpack_from(body)[0]
    return mode, name_of(body[_MKDIR_IN.size :])


def setattr_in(body: bytes) -> tuple[SetattrFields, EntryAttributes, int | None]:
    fields = _SETATTR_IN.unpack_from(body)
    valid, fh, size = fields[0], fields[2], fields[3]
    what = SetattrFields(
        update_mode=bool(valid & FATTR_MODE),
        update_uid=bool(valid & FATTR_UID),
        update_gid=bool(valid & FATTR_GID),
        update_atime=bool(valid & FATTR_ATIME),
        update_mtime=bool(valid & FATTR_MTIME),
        update_size=bool(valid & FATTR_SIZE),
    )
    return what, EntryAttributes(st_size=size), fh if valid & 64 else None
