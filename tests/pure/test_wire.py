"""The FUSE messages ctfs packs and parses (ctfs.fs.wire), against linux/fuse.h."""

from __future__ import annotations

import struct

import pytest

from ctfs.fs import wire

IN_HEADER = struct.Struct("<IIQQIIIHH")


def _init_request(minor: int, offered: int) -> bytes:
    body = struct.pack("<IIII", 7, minor, 0x20000, offered) + bytes(64 - 16)
    return IN_HEADER.pack(IN_HEADER.size + len(body), wire.INIT, 2, 0, 0, 0, 0, 0, 0) + body


def test_init_reply_is_the_80_byte_message_the_kernel_expects() -> None:
    message = wire.init_out(_init_request(45, 0xFFFFFFFF))
    length, error, unique = struct.unpack_from("<IiQ", message)
    assert (length, error, unique) == (80, 0, 2) and len(message) == 80


def test_init_reply_asks_only_for_what_the_kernel_offers() -> None:
    offered = wire.FUSE_ASYNC_READ | wire.FUSE_MAX_PAGES | (1 << 13)  # and READDIRPLUS
    message = wire.init_out(_init_request(45, offered))
    major, minor, readahead, flags = struct.unpack_from("<IIII", message, 16)
    assert (major, minor, readahead) == (7, wire.OUR_MINOR, 0x20000)
    assert flags == wire.FUSE_ASYNC_READ | wire.FUSE_MAX_PAGES


def test_init_reply_gives_max_write_and_max_pages() -> None:
    message = wire.init_out(_init_request(45, wire.WANTED))
    max_write, time_gran, max_pages = struct.unpack_from("<IIH", message, 16 + 20)
    assert (max_write, time_gran, max_pages) == (1 << 20, 1, 256)


def test_init_from_an_older_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match=r"7\.30"):
        wire.init_out(_init_request(30, wire.WANTED))


def test_error_reply_carries_the_negative_errno() -> None:
    assert struct.unpack("<IiQ", wire.error_reply(9, 2)) == (16, -2, 9)


def test_entry_reply_carries_inode_timeouts_and_attributes() -> None:
    attr = wire.EntryAttributes(st_ino=77, entry_timeout=1.5, attr_timeout=0.25, st_size=4096)
    attr.st_mode, attr.st_mtime_ns = 0o100444, 3 * 10**9 + 7
    payload = wire.entry_out(attr)
    assert len(payload) == 128
    nodeid, _, entry_s, attr_s, entry_ns, attr_ns = struct.unpack_from("<QQQQII", payload)
    assert (nodeid, entry_s, entry_ns, attr_s, attr_ns) == (77, 1, 500_000_000, 0, 250_000_000)
    ino, size, _, _, mtime, _, _, mtime_ns = struct.unpack_from("<QQQQQQII", payload, 40)
    assert (ino, size, mtime, mtime_ns) == (77, 4096, 3, 7)


def test_open_reply_flags_direct_io_and_noflush() -> None:
    payload = wire.open_out(wire.FileInfo(fh=5, direct_io=False, noflush=True))
    assert struct.unpack("<QIi", payload) == (5, wire.FOPEN_NOFLUSH, 0)


def test_directory_entries_are_padded_to_eight_bytes() -> None:
    listing = wire.Listing(room=4096)
    attr = wire.EntryAttributes(st_ino=9, st_mode=0o040755)
    assert wire.readdir_reply(listing, b"abc", attr, 1)
    (entry,) = listing.parts
    assert len(entry) == 32
    assert struct.unpack_from("<QQII", entry) == (9, 1, 3, 4)  # DT_DIR
    assert entry[24:] == b"abc\0\0\0\0\0"


def test_an_entry_that_does_not_fit_is_left_for_the_next_request() -> None:
    listing = wire.Listing(room=40)
    attr = wire.EntryAttributes(st_ino=9, st_mode=0o100444)
    assert wire.readdir_reply(listing, b"first", attr, 1)
    assert not wire.readdir_reply(listing, b"second", attr, 2)
    assert len(listing.parts) == 1


def test_readdirplus_entries_carry_their_attributes() -> None:
    listing = wire.Listing(room=4096, plus=True)
    wire.readdir_reply(listing, b"state", wire.EntryAttributes(st_ino=9), 1)
    assert len(listing.parts[0]) == 128 + 32


def test_setattr_truncation_is_read_with_its_size_and_handle() -> None:
    body = struct.pack(
        "<IIQQQQQQIIIIIIII", wire.FATTR_SIZE | 64, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    )
    fields, attr, fh = wire.setattr_in(body)
    assert fields.update_size and not fields.update_mode and attr.st_size == 0 and fh == 12


def test_write_data_is_cut_to_its_declared_size() -> None:
    body = struct.pack("<QQIIQII", 3, 0, 4, 0, 0, 0, 0) + b"datamore"
    assert wire.write_data(body) == b"data"
    assert wire.io_in(body) == (3, 0, 4)
