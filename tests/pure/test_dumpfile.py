"""The dump file's format: what is accepted at close, and what is refused whole."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from ctfs.model import dumpfile
from ctfs.model.dumpfile import DumpError

WHOLE = {"inventory.img": b"inventory", "pstree.img": b"pstree", "core-1.img": b"core" * 300}


def _packed(tmp_path: Path, images: dict[str, bytes]) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    target = tmp_path / "dump"
    dumpfile.pack(folder, target, {"ctid": 101})
    return target


def _crafted(tmp_path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of ``members`` and a manifest whose checksums list every one of them."""
    sums = {name: hashlib.sha256(data).hexdigest() for name, data in members}
    manifest = json.dumps({"format": dumpfile.FORMAT, "ctid": 101, "sha256": sums}).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [*members, (dumpfile.MANIFEST, manifest)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "crafted"
    path.write_bytes(buffer.getvalue())
    return path


def _whole_members() -> list[tuple[str, bytes]]:
    return [(f"images/{name}", data) for name, data in WHOLE.items()]


def test_a_packed_dump_reads_back_with_its_info(tmp_path: Path) -> None:
    manifest = dumpfile.read_manifest(_packed(tmp_path, WHOLE))
    assert manifest.info["ctid"] == 101
    assert set(manifest.checksums) == {f"images/{name}" for name in WHOLE}


def test_a_crafted_but_whole_dump_is_accepted(tmp_path: Path) -> None:
    assert dumpfile.read_manifest(_crafted(tmp_path, _whole_members())).info["ctid"] == 101


def test_a_duplicate_member_is_refused(tmp_path: Path) -> None:
    members = [*_whole_members(), ("images/core-1.img", b"other")]
    with pytest.raises(DumpError, match="twice"):
        dumpfile.read_manifest(_crafted(tmp_path, members))


def test_a_member_name_too_long_for_a_directory_is_refused(tmp_path: Path) -> None:
    members = [*_whole_members(), ("images/" + "x" * 300, b"long")]
    with pytest.raises(DumpError, match="longer than 255"):
        dumpfile.read_manifest(_crafted(tmp_path, members))


def test_a_manifest_alone_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DumpError, match="not a whole checkpoint"):
        dumpfile.read_manifest(_crafted(tmp_path, []))


def test_a_member_outside_the_images_folder_is_refused(tmp_path: Path) -> None:
    members = [*_whole_members(), ("../escape.img", b"x")]
    with pytest.raises(DumpError, match="unexpected member"):
        dumpfile.read_manifest(_crafted(tmp_path, members))


def test_a_link_member_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO(_crafted(tmp_path, _whole_members()).read_bytes())
    out = io.BytesIO()
    with tarfile.open(fileobj=buffer) as source, tarfile.open(fileobj=out, mode="w") as tar:
        link = tarfile.TarInfo("images/link.img")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
        for member in source.getmembers():
            tar.addfile(member, source.extractfile(member))
    path = tmp_path / "linked"
    path.write_bytes(out.getvalue())
    with pytest.raises(DumpError, match="not a regular file"):
        dumpfile.read_manifest(path)


def test_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = _packed(tmp_path, WHOLE)
    data = bytearray(path.read_bytes())
    data[data.index(b"corecore") + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DumpError, match="damaged"):
        dumpfile.read_manifest(path)
