"""The dump file: a frozen container's whole checkpoint in one portable, checked file.

It is a plain POSIX tar archive (``tar tvf dump`` lists it) of CRIU's image files
under ``images/``, followed by ``MANIFEST.json``, the last member, which holds what
ctfs needs to restore (CTID, addresses, CRIU version...) and the SHA-256 of every
image.  A dump is accepted only if every member is whole, it has exactly the
members its manifest names, and every checksum matches, so a truncated or damaged
file is refused before anything is restored from it.

Large images start at 4 KiB boundaries inside the archive (a pax comment pads the
header before them): on btrfs they are then moved in and out of the dump file by
cloning extents (FICLONERANGE) instead of copying their bytes, and elsewhere with
copy_file_range.  Only the checksums read the data.

``pack`` writes a temporary file beside the target, fsyncs it and renames it over
the target: the dump file is always either the old one or a complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import struct
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1
MANIFEST = "MANIFEST.json"
IMAGES = "images"
BLOCK = 4096
TAR_BLOCK = 512
# Images this large are aligned and cloned; smaller ones are simply written.
CLONE_MIN = 64 * 1024
CHUNK = 4 << 20
_FICLONERANGE = 0x4020940D
# The longest file name the images directory can hold (NAME_MAX).
NAME_MAX = 255
# CRIU writes these for every checkpoint; without them nothing can be restored.
REQUIRED_IMAGES = ("inventory.img", "pstree.img")


class DumpError(Exception):
    """The dump file is not a complete, intact ctfs dump; the text says why."""


@dataclass(frozen=True)
class Manifest:
    info: dict[str, Any]
    checksums: dict[str, str]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------ moving bytes


def _clone(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> bool:
    """Share ``length`` bytes of extents from src to dst; False if the fs cannot."""
    try:
        fcntl.ioctl(dst, _FICLONERANGE, struct.pack("qQQQ", src, src_offset, length, dst_offset))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
            return False
        raise
    return True


def _copy(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
    while length > 0:
        done = os.copy_file_range(src, dst, length, src_offset, dst_offset)
        if done == 0:
            raise DumpError("it ends too early (truncated)")
        src_offset, dst_offset, length = src_offset + done, dst_offset + done, length - done


def _move(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
    """Put ``length`` bytes of src at dst_offset: cloned where aligned, else copied."""
    aligned = length - length % BLOCK if src_offset % BLOCK == 0 == dst_offset % BLOCK else 0
    if aligned and _clone(src, src_offset, dst, dst_offset, aligned):
        src_offset, dst_offset, length = (
            src_offset + aligned,
            dst_offset + aligned,
            length - aligned,
        )
    _copy(src, src_offset, dst, dst_offset, length)


def _digest_path(path: Path, length: int) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _digest(fd, 0, length)
    finally:
        os.close(fd)


def _digest(fd: int, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    while length > 0:
        chunk = os.pread(fd, min(CHUNK, length), offset)
        if not chunk:
            raise DumpError("it ends too early (truncated)")
        digest.update(chunk)
        offset, length = offset + len(chunk), length - len(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------- writing


def _tobuf(member: tarfile.TarInfo) -> bytes:
    return member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _header(member: tarfile.TarInfo, offset: int, align: bool) -> bytes:
    """The header of ``member`` at ``offset``; with ``align``, padded so data is 4K-aligned."""
    header = _tobuf(member)
    if not align:
        return header
    for pad in range(0, 2 * BLOCK, 16):
        member.pax_headers = {"comment": "x" * pad} if pad else {}
        header = _tobuf(member)
        if (offset + len(header)) % BLOCK == 0:
            return header
    raise AssertionError("no pax padding aligns this member")  # cannot happen: 512 | offset


def pack(images: Path, target: Path, info: dict[str, Any]) -> int:
    """Write every file of ``images`` and a manifest to ``target`` atomically; its size."""
    temporary = target.with_name(f".{target.name}.new")
    now = int(time.time())
    checksums: dict[str, str] = {}
    out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        offset = 0

        def append(data: bytes) -> None:
            nonlocal offset
            os.pwrite(out, data, offset)
            offset += len(data)

        files = [p for p in sorted(images.iterdir()) if p.is_file() and not p.is_symlink()]
        # The checksums read the images (still in the page cache) while the main
        # thread moves them, which waits for the disk: hashlib and the ioctl both
        # let go of the GIL.
        with ThreadPoolExecutor(max_workers=1) as hasher:
            pending = {}
            for path in files:
                src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    size = os.fstat(src).st_size
                    member = tarfile.TarInfo(f"{IMAGES}/{path.name}")
                    member.size, member.mtime, member.mode = size, now, 0o600
                    append(_header(member, offset, size >= CLONE_MIN))
                    pending[member.name] = hasher.submit(_digest_path, path, size)
                    _move(src, 0, out, offset, size)
                    offset += size
                finally:
                    os.close(src)
                append(b"\0" * (-size % TAR_BLOCK))
            checksums = {name: future.result() for name, future in pending.items()}
        manifest = json.dumps(
            {"format": FORMAT, **info, "created": now, "sha256": checksums},
            indent=1,
            sort_keys=True,
        ).encode()
        member = tarfile.TarInfo(MANIFEST)
        member.size, member.mtime, member.mode = len(manifest), now, 0o600
        append(_tobuf(member))
        append(manifest + b"\0" * (-len(manifest) % TAR_BLOCK))
        append(b"\0" * (2 * TAR_BLOCK))  # end of archive
        os.fsync(out)
        os.close(out)
        out = -1
        temporary.rename(target)
        fsync_dir(target.parent)
        return offset
    except BaseException:
        if out >= 0:
            os.close(out)
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


# --------------------------------------------------------------- reading


def _walk(path: Path, images: Path | None, checksums: bool = True) -> Manifest:
    """Check the whole dump at ``path``; extract its images into ``images`` if given.

    Without ``checksums`` the structure is checked but the data is not read (see
    ``unpack``).
    """
    seen: dict[str, str] = {}
    manifest: dict[str, Any] | None = None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        with os.fdopen(os.dup(fd), "rb") as stream:
            try:
                tar = tarfile.open(fileobj=stream, mode="r:")  # noqa: SIM115 (closed with stream)
                members = tar.getmembers()
            except (tarfile.TarError, EOFError) as exc:
                raise DumpError(f"it is not a complete tar archive ({exc})") from exc
            for member in members:
                if manifest is not None:
                    raise DumpError(f"{member.name} comes after the manifest")
                if not member.isfile():
                    raise DumpError(f"{member.name!r} is not a regular file")
                if member.offset_data + member.size > size:
                    raise DumpError(f"it ends inside {member.name} (truncated)")
                if member.name == MANIFEST:
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    manifest = _parse_manifest(extracted.read(1 << 20))
                    continue
                folder, _, name = member.name.partition("/")
                if folder != IMAGES or not name or "/" in name or name.startswith("."):
                    raise DumpError(f"unexpected member {member.name[:80]!r}")
                if len(name.encode()) > NAME_MAX:
                    raise DumpError(f"member name {name[:40]!r}... is longer than {NAME_MAX} bytes")
                if member.name in seen:
                    raise DumpError(f"{member.name!r} is in it twice")
                seen[member.name] = (
                    _digest(fd, member.offset_data, member.size) if checksums else ""
                )
                if images is not None:
                    _extract(fd, member, images / name)
    finally:
        os.close(fd)
    if manifest is None:
        raise DumpError("it has no manifest (truncated, or not a ctfs dump)")
    if not checksums:
        seen = {name: manifest["sha256"].get(name, "") for name in seen}
    return _checked(manifest, seen)


def _extract(fd: int, member: tarfile.TarInfo, target: Path) -> None:
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _move(fd, member.offset_data, out, 0, member.size)
    finally:
        os.close(out)


def unpack(path: Path, images: Path, checksums: bool = True) -> Manifest:
    """Check ``path`` and extract its images into the empty directory ``images``.

    Raises DumpError (and leaves ``images`` to the caller to remove) unless the whole
    file is intact.  ``checksums=False`` is for a dump this ctfsd wrote or verified
    and that has not changed since (same inode, size, mtime and ctime): its data is
    then not read again, and btrfs's own checksums catch damage on the disk.
    """
    return _walk(path, images, checksums)


def read_manifest(path: Path, checksums: bool = True) -> Manifest:
    """Verify the whole file without extracting it (see ``unpack`` for ``checksums``)."""
    return _walk(path, None, checksums)


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise DumpError(f"its manifest is not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DumpError(f"it is not a ctfs dump of format {FORMAT}")
    if not isinstance(manifest.get("sha256"), dict):
        raise DumpError("its manifest lists no checksums")
    return manifest


def _checked(manifest: dict[str, Any], seen: dict[str, str]) -> Manifest:
    absent = [f"{IMAGES}/{n}" for n in REQUIRED_IMAGES if f"{IMAGES}/{n}" not in seen]
    if absent:
        raise DumpError(f"it lacks CRIU's {', '.join(absent)}: not a whole checkpoint")
    listed: dict[str, str] = manifest.pop("sha256")
    if set(listed) != set(seen):
        missing = sorted(set(listed) - set(seen))
        extra = sorted(set(seen) - set(listed))
        raise DumpError(f"its images do not match its manifest (missing {missing}, extra {extra})")
    for name, digest in seen.items():
        if listed[name] != digest:
            raise DumpError(f"{name} is damaged (checksum mismatch)")
    return Manifest(info=manifest, checksums=listed)
