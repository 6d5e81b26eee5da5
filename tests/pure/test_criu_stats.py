"""What a lazy dump left for its page server, from CRIU's pagemap images
(ctfs.kernel.criu_stats)."""

from __future__ import annotations

import struct

from ctfs.kernel.criu_stats import (
    IMG_COMMON_MAGIC,
    PAGEMAP_MAGIC,
    PE_LAZY,
    PE_PRESENT,
    lazy_pages,
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _pagemap(*entries: tuple[int, int]) -> bytes:
    """A pagemap image: its head, then entries of (nr_pages, flags)."""
    head = _field(1, 1)
    body = [_field(1, 0x400000 + i * 0x10000) + _field(2, n) + _field(4, f) for i, (n, f) in
            enumerate(entries)]  # fmt: skip
    messages = [head, *body]
    framed = b"".join(struct.pack("<I", len(m)) + m for m in messages)
    return struct.pack("<II", IMG_COMMON_MAGIC, PAGEMAP_MAGIC) + framed


def test_the_pages_left_for_the_page_server_are_the_lazy_ones_not_written() -> None:
    lazy, written_lazy, written = PE_LAZY, PE_LAZY | PE_PRESENT, PE_PRESENT
    assert lazy_pages(_pagemap((100, lazy), (7, written_lazy), (3, written), (20, lazy))) == 120


def test_a_damaged_pagemap_is_none() -> None:
    assert lazy_pages(_pagemap((100, PE_LAZY))[:-3]) is None
