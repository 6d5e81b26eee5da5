"""What a lazy dump left for its page server, read from CRIU's pagemap images
(images/pagemap.proto) without CRIU's Python tools.

A CRIU image is two 4-byte magics, then protobuf messages each framed by its
4-byte little-endian size; a pagemap's first message is its head, the others
its entries.  The pages left for the page server are those of entries flagged
PE_LAZY and not PE_PRESENT (a plain dump flags what it wrote PE_LAZY too).
CRIU's own stats-dump counts 0 pages for a lazy dump (checked: CRIU 4.2.1).
Unknown fields are skipped; a damaged image counts as None.
"""

from __future__ import annotations

import struct
from pathlib import Path

IMG_COMMON_MAGIC = 0x54564319
PAGEMAP_MAGIC = 0x56084025
PE_LAZY, PE_PRESENT = 1 << 1, 1 << 2
PAGE_SIZE = 4096


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("a truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> dict[int, int | bytes]:
    found: dict[int, int | bytes] = {}
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            found[number], at = _varint(data, at)
        elif wire == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise ValueError("a truncated field")
            found[number], at = data[at : at + size], at + size
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")
    return found


def _messages(data: bytes, magics: tuple[int, int]) -> list[bytes]:
    if struct.unpack_from("<II", data) != magics:
        raise ValueError("another image")
    found, at = [], 8
    while at < len(data):
        (size,) = struct.unpack_from("<I", data, at)
        if at + 4 + size > len(data):
            raise ValueError("a truncated message")
        found.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return found


def lazy_pages(data: bytes) -> int | None:
    """How many pages a pagemap image's entries leave to be fetched lazily."""
    try:
        entries = _messages(data, (IMG_COMMON_MAGIC, PAGEMAP_MAGIC))[1:]  # after its head
        total = 0
        for entry in entries:
            fields = _fields(entry)
            flags, count = fields.get(4, 0), fields.get(5, fields.get(2, 0))
            # Lazy and not in the pages image: left for the page server.
            if isinstance(flags, int) and isinstance(count, int) and flags & PE_LAZY:
                if flags & PE_PRESENT:
                    continue
                total += count
    except (struct.error, ValueError):
        return None
    return total


def lazy_bytes(images: Path) -> int:
    """Bytes of memory a lazy dump into ``images`` left for the page server."""
    total = 0
    for path in images.glob("pagemap-*.img"):
        if path.name.startswith("pagemap-shmem"):
            continue
        try:
            total += lazy_pages(path.read_bytes()) or 0
        except OSError:
            continue
    return total * PAGE_SIZE
