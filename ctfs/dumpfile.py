"""The dump file: a frozen container's whole checkpoint in one portable, checked file.

It is a plain tar archive (``tar tvf dump`` lists it) of CRIU's image files under
``images/``, followed by ``MANIFEST.json``, the last member, which holds what ctfs
needs to restore (CTID, addresses, CRIU version...) and the SHA-256 of every image.
A dump is accepted only if it reads to the end, has exactly the members its
manifest names, and every checksum matches, so a truncated or damaged file is
refused before anything is restored from it.

``pack`` writes a temporary file beside the target, fsyncs it and renames it over
the target: the dump file is always either the old one or a complete new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

FORMAT = 1
MANIFEST = "MANIFEST.json"
IMAGES = "images"
CHUNK = 1 << 20


class DumpError(Exception):
    """The dump file is not a complete, intact ctfs dump; the text says why."""


@dataclass(frozen=True)
class Manifest:
    info: dict[str, Any]
    checksums: dict[str, str]


class _Hashing(io.RawIOBase):
    """A readable file that hashes what is read through it."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pack(images: Path, target: Path, info: dict[str, Any]) -> int:
    """Write every file of ``images`` and a manifest to ``target`` atomically; its size."""
    temporary = target.with_name(f".{target.name}.new")
    checksums: dict[str, str] = {}
    try:
        with open(temporary, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(images.iterdir()):
                    if not path.is_file() or path.is_symlink():
                        continue
                    member = tar.gettarinfo(str(path), arcname=f"{IMAGES}/{path.name}")
                    member.uname = member.gname = ""
                    with open(path, "rb") as source:
                        hashing = _Hashing(source)
                        tar.addfile(member, io.BufferedReader(hashing, CHUNK))
                    checksums[member.name] = hashing.digest.hexdigest()
                manifest = json.dumps(
                    {"format": FORMAT, **info, "created": int(time.time()), "sha256": checksums},
                    indent=1,
                    sort_keys=True,
                ).encode()
                member = tarfile.TarInfo(MANIFEST)
                member.size = len(manifest)
                member.mtime = int(time.time())
                member.mode = 0o600
                tar.addfile(member, io.BytesIO(manifest))
            raw.flush()
            os.fsync(raw.fileno())
        size = temporary.stat().st_size
        temporary.rename(target)
        fsync_dir(target.parent)
        return size
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        with tarfile.open(path, mode="r|") as tar:
            yield tar
    except tarfile.TarError as exc:
        raise DumpError(f"it is not a complete tar archive ({exc})") from exc
    except EOFError as exc:
        raise DumpError("it ends too early (truncated)") from exc


def unpack(path: Path, images: Path) -> Manifest:
    """Check ``path`` and extract its images into the empty directory ``images``.

    Raises DumpError (and leaves ``images`` to the caller to remove) unless the whole
    file is intact.
    """
    seen: dict[str, str] = {}
    manifest: dict[str, Any] | None = None
    with _open_tar(path) as tar:
        for member in tar:
            if manifest is not None:
                raise DumpError(f"{member.name} comes after the manifest")
            source = tar.extractfile(member)
            if source is None or not member.isfile():
                raise DumpError(f"{member.name!r} is not a regular file")
            if member.name == MANIFEST:
                manifest = _parse_manifest(source.read(1 << 20))
                continue
            folder, _, name = member.name.partition("/")
            if folder != IMAGES or not name or "/" in name or name.startswith("."):
                raise DumpError(f"unexpected member {member.name!r}")
            digest = hashlib.sha256()
            with open(images / name, "xb") as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            seen[member.name] = digest.hexdigest()
    if manifest is None:
        raise DumpError("it has no manifest (truncated, or not a ctfs dump)")
    return _checked(manifest, seen)


def read_manifest(path: Path) -> Manifest:
    """Verify the whole file without extracting it."""
    seen: dict[str, str] = {}
    manifest: dict[str, Any] | None = None
    with _open_tar(path) as tar:
        for member in tar:
            source = tar.extractfile(member)
            if source is None or manifest is not None:
                raise DumpError(f"unexpected member {member.name!r}")
            if member.name == MANIFEST:
                manifest = _parse_manifest(source.read(1 << 20))
                continue
            digest = hashlib.sha256()
            while chunk := source.read(CHUNK):
                digest.update(chunk)
            seen[member.name] = digest.hexdigest()
    if manifest is None:
        raise DumpError("it has no manifest (truncated, or not a ctfs dump)")
    return _checked(manifest, seen)


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
    listed: dict[str, str] = manifest.pop("sha256")
    if set(listed) != set(seen):
        missing = sorted(set(listed) - set(seen))
        extra = sorted(set(seen) - set(listed))
        raise DumpError(f"its images do not match its manifest (missing {missing}, extra {extra})")
    for name, digest in seen.items():
        if listed[name] != digest:
            raise DumpError(f"{name} is damaged (checksum mismatch)")
    return Manifest(info=manifest, checksums=listed)
