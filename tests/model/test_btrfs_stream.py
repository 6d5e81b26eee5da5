"""A private area crossing hosts as btrfs send streams, on real btrfs.

Each test gets two btrfs filesystems of its own, "source" and "target" (sparse
images on loop devices it attached), so a stream really crosses filesystems as
it will cross hosts.  Send and receive run at the same time, joined by a pipe,
as the migration runs them.  Everything is unmounted and detached afterwards,
only the loop devices backed by these images.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctfs.kernel import btrfs_stream
from ctfs.kernel.btrfs_stream import StreamError
from ctfs.kernel.storage import create_subvolume, delete_subvolume

CONTAINER_UID = 1_000_000  # the first id of a container's range, as idmap gives it


@dataclass
class Hosts:
    source: Path
    target: Path
    staging: Path  # the target's staging directory for received snapshots


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _detach_loops_of(image: Path) -> None:
    # Only the loop devices backed by our own image, never another one.
    for line in _run("losetup", "-j", str(image)).splitlines():
        subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)


@contextlib.contextmanager
def _btrfs_on_loop(image: Path, mountpoint: Path, size: str) -> Iterator[Path]:
    _run("truncate", "-s", size, str(image))
    _run("mkfs.btrfs", "-q", str(image))
    mountpoint.mkdir()
    try:
        device = _run("losetup", "--find", "--show", str(image)).strip()
        _run("mount", device, str(mountpoint))
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            done = subprocess.run(["umount", str(mountpoint)], check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        _detach_loops_of(image)


@contextlib.contextmanager
def make_hosts(size: str = "512M") -> Iterator[Hosts]:
    """Two fresh btrfs filesystems of ``size``, gone (unmounted, detached) after."""
    with tempfile.TemporaryDirectory(prefix="ctfs-btrfs-stream-") as tmp:
        base = Path(tmp)
        with (
            _btrfs_on_loop(base / "source.img", base / "source", size) as source,
            _btrfs_on_loop(base / "target.img", base / "target", size) as target,
        ):
            staging = target / "staging"
            staging.mkdir()
            yield Hosts(source, target, staging)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    with make_hosts() as made:
        yield made


def transfer(
    snapshot: Path,
    into: Path,
    parent: Path | None = None,
    target_parent: Path | None = None,
    cut_after: int | None = None,
) -> Path:
    """Send ``snapshot`` into ``into`` through a pipe, both ends running at once.

    ``cut_after``: a relay passes only that many bytes on, then closes both of
    its pipes, as a connection that breaks mid-stream.
    """
    read_end, write_end = os.pipe()
    with ThreadPoolExecutor(max_workers=2) as pool:
        sent = pool.submit(_send_and_close, snapshot, write_end, parent)
        relay: Future[None] | None = None
        if cut_after is not None:
            cut_read, cut_write = os.pipe()
            relay = pool.submit(_relay_cut, read_end, cut_write, cut_after)
            read_end = cut_read
        try:
            received = btrfs_stream.receive(read_end, into, target_parent)
        finally:
            os.close(read_end)  # a sender still writing gets EPIPE, not a hang
        if relay is not None:
            relay.result()
        sent.result()
    return received


def _send_and_close(snapshot: Path, out_fd: int, parent: Path | None) -> None:
    try:
        btrfs_stream.send(snapshot, out_fd, parent)
    finally:
        os.close(out_fd)


def _relay_cut(in_fd: int, out_fd: int, limit: int) -> None:
    try:
        while limit > 0 and (chunk := os.read(in_fd, min(limit, 65536))):
            os.write(out_fd, chunk)
            limit -= len(chunk)
    finally:
        os.close(out_fd)
        os.close(in_fd)


Facts = dict[str, tuple[object, ...]]


def tree_facts(root: Path) -> Facts:
    """What a copy must reproduce, per path: type, mode, owner, content, xattrs."""
    facts: Facts = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            content: object = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        else:
            content = None
        xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in _xattr_names(path)}
        mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
        facts[str(path.relative_to(root))] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_nlink,
            mtime,
            content,
            xattrs,
        )
    return facts


def _xattr_names(path: Path) -> list[str]:
    return sorted(os.listxattr(path, follow_symlinks=False))


def populate(area: Path) -> None:
    (area / "etc").mkdir(mode=0o755)
    (area / "etc" / "hostname").write_text("ct101\n")
    (area / "etc" / "shadow").write_text("root:*:19000::::::\n")
    os.chmod(area / "etc" / "shadow", 0o640)
    home = area / "home" / "user"
    home.mkdir(parents=True)
    (home / "notes").write_bytes(os.urandom(300_000))
    for path in (home, home / "notes"):
        os.chown(path, CONTAINER_UID, CONTAINER_UID)
    (area / "tmp").mkdir()
    os.chmod(area / "tmp", 0o1777)
    (area / "bin").mkdir()
    (area / "bin" / "su").write_bytes(b"\x7fELF-not-really")
    os.chmod(area / "bin" / "su", 0o4755)
    (area / "bin" / "sh").symlink_to("busybox")
    os.link(area / "etc" / "hostname", area / "etc" / "hostname.link")
    os.mkfifo(area / "tmp" / "fifo")
    os.setxattr(home / "notes", "user.origin", b"ct101")
    os.chown(area / "bin" / "sh", CONTAINER_UID + 5, CONTAINER_UID + 5, follow_symlinks=False)


@pytest.fixture
def first_pass(hosts: Hosts) -> tuple[Path, Path, Path]:
    """A populated area, its first snapshot, and that snapshot received."""
    area = hosts.source / "private"
    create_subvolume(area)
    populate(area)
    first = hosts.source / "first"
    btrfs_stream.snapshot_readonly(area, first)
    return area, first, transfer(first, hosts.staging)


def test_full_pass_reproduces_files_modes_owners_links_and_xattrs(
    first_pass: tuple[Path, Path, Path],
) -> None:
    _, first, received = first_pass
    assert tree_facts(received) == tree_facts(first)
    assert (received / "home" / "user" / "notes").stat().st_uid == CONTAINER_UID
    linked = received / "etc" / "hostname", received / "etc" / "hostname.link"
    assert linked[0].stat().st_ino == linked[1].stat().st_ino
    ids = btrfs_stream.identify(received)
    assert ids.readonly and ids.parent_uuid is None
    assert ids.received_uuid == btrfs_stream.identify(first).uuid


def change(area: Path) -> None:
    """Change, add, delete, rename, chmod and chown, as a running container would."""
    with open(area / "home" / "user" / "notes", "r+b") as notes:
        notes.seek(1000)
        notes.write(b"changed in the middle")
    (area / "etc" / "hostname").write_text("ct101.example\n")
    (area / "var").mkdir()
    (area / "var" / "log").write_bytes(os.urandom(50_000))
    os.chown(area / "var" / "log", CONTAINER_UID + 1, CONTAINER_UID + 1)
    (area / "etc" / "shadow").unlink()
    os.rename(area / "bin" / "su", area / "bin" / "su.moved")
    os.chmod(area / "bin" / "su.moved", 0o755)
    os.removexattr(area / "home" / "user" / "notes", "user.origin")


def second_pass(hosts: Hosts, first_pass: tuple[Path, Path, Path]) -> tuple[Path, Path]:
    """Change the area, send the difference: (the source's second snapshot, the
    target's received one)."""
    area, first, received = first_pass
    change(area)
    second = hosts.source / "second"
    btrfs_stream.snapshot_readonly(area, second)
    return second, transfer(second, hosts.staging, parent=first, target_parent=received)


def test_incremental_pass_gives_exactly_the_new_content(
    hosts: Hosts, first_pass: tuple[Path, Path, Path]
) -> None:
    received = first_pass[2]
    second, again = second_pass(hosts, first_pass)
    assert tree_facts(again) == tree_facts(second)
    assert tree_facts(again) != tree_facts(received)
    assert btrfs_stream.identify(again).parent_uuid == btrfs_stream.identify(received).uuid


def test_broken_stream_makes_receive_fail_and_leaves_nothing(hosts: Hosts) -> None:
    area = hosts.source / "private"
    create_subvolume(area)
    populate(area)
    (area / "big").write_bytes(os.urandom(2_000_000))
    first = hosts.source / "first"
    btrfs_stream.snapshot_readonly(area, first)
    with pytest.raises(StreamError, match="btrfs receive: "):
        transfer(first, hosts.staging, cut_after=500_000)
    assert list(hosts.staging.iterdir()) == []
    assert _subvolumes_under(hosts.target) == []


def _subvolumes_under(mountpoint: Path) -> list[str]:
    return _run("btrfs", "subvolume", "list", "-o", str(mountpoint)).splitlines()


def test_writable_copy_is_writable_and_kept_parent_takes_a_third_pass(
    hosts: Hosts, first_pass: tuple[Path, Path, Path]
) -> None:
    area, _, received = first_pass
    second, kept = second_pass(hosts, first_pass)
    delete_subvolume(received)  # no longer a parent: the second pass is
    running = hosts.target / "private"
    btrfs_stream.make_writable(kept, running)
    (running / "etc" / "hostname").write_text("written on the target\n")
    (running / "new-on-target").write_text("x")
    assert not btrfs_stream.identify(running).readonly
    assert btrfs_stream.identify(kept).received_uuid == btrfs_stream.identify(second).uuid

    (area / "third").write_text("after the second pass")
    third = hosts.source / "third-snap"
    btrfs_stream.snapshot_readonly(area, third)
    last = transfer(third, hosts.staging, parent=second, target_parent=kept)
    assert tree_facts(last) == tree_facts(third)


def test_stream_on_another_parent_than_named_is_refused_and_removed(
    hosts: Hosts, first_pass: tuple[Path, Path, Path]
) -> None:
    area, first, _ = first_pass
    second = hosts.source / "second"
    btrfs_stream.snapshot_readonly(area, second)
    with pytest.raises(StreamError, match="not on none"):
        transfer(second, hosts.staging, parent=first, target_parent=None)
    assert sorted(p.name for p in hosts.staging.iterdir()) == ["first"]


def test_peer_that_stops_reading_makes_send_give_up(hosts: Hosts) -> None:
    area = hosts.source / "private"
    create_subvolume(area)
    (area / "big").write_bytes(os.urandom(4_000_000))  # far more than a pipe holds
    snap = hosts.source / "snap"
    btrfs_stream.snapshot_readonly(area, snap)
    read_end, write_end = os.pipe()
    started = time.monotonic()
    try:
        with pytest.raises(StreamError, match=r"btrfs send: not done after 1 s"):
            btrfs_stream.send(snap, write_end, time_limit=1.0)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert time.monotonic() - started < 10


def test_peer_that_stops_writing_makes_receive_give_up_and_clean_up(hosts: Hosts) -> None:
    area = hosts.source / "private"
    create_subvolume(area)
    (area / "big").write_bytes(os.urandom(1_000_000))
    snap = hosts.source / "snap"
    btrfs_stream.snapshot_readonly(area, snap)
    stream = hosts.source.parent / "stream"
    with open(stream, "wb") as f:
        btrfs_stream.send(snap, f.fileno())
    read_end, write_end = os.pipe()
    feeder = threading.Thread(target=_write_head, args=(write_end, stream.read_bytes()[:40_000]))
    feeder.start()
    try:
        with pytest.raises(StreamError, match=r"btrfs receive: not done after 1 s"):
            btrfs_stream.receive(read_end, hosts.staging, time_limit=1.0)
    finally:
        os.close(read_end)
        feeder.join()
        os.close(write_end)
    assert list(hosts.staging.iterdir()) == []


def _write_head(fd: int, head: bytes) -> None:
    # The write end stays open: the peer went silent, it did not hang up.
    with contextlib.suppress(BrokenPipeError):
        os.write(fd, head)
