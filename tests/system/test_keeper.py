"""The keeper on its own: one holder at a time, stop, and leaving when the mount goes.

No ctfsd serves these mounts, so nothing here looks inside them (a stat would
wait for a ctfsd).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctfs import keeper, keeper_link
from tests.ctfsd_harness import process_gone, wait_for


def _mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


def _keeper_pid(mount: Path) -> int:
    return int(keeper.paths_for(mount).pidfile.read_text())


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        yield path
    finally:
        paths = keeper.paths_for(path)
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = _keeper_pid(path)
            if b"ctfs.keeper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        for leftover in (paths.socket, paths.pidfile, paths.lock):
            leftover.unlink(missing_ok=True)


@pytest.fixture
def held(mount: Path) -> Iterator[keeper_link.Held]:
    hold = keeper_link.take_or_start(mount, lambda: None, None)
    try:
        yield hold
    finally:
        hold.link.close()
        with contextlib.suppress(OSError):
            os.close(hold.fuse_fd)


def test_a_fresh_keeper_mounts_and_hands_over_the_init_request(
    mount: Path, held: keeper_link.Held
) -> None:
    assert held.fresh
    assert _mounted(mount)
    assert int.from_bytes(held.init_request[4:8], "little") == 26  # FUSE_INIT
    assert os.readlink(f"/proc/self/fd/{held.fuse_fd}") == "/dev/fuse"
    assert not os.get_inheritable(held.fuse_fd)


def test_one_holder_at_a_time_and_the_next_when_it_lets_go(
    mount: Path, held: keeper_link.Held
) -> None:
    with pytest.raises(keeper_link.KeeperBusy, match=f"PID {os.getpid()}"):
        keeper_link.take_or_start(mount, lambda: None, None)
    held.link.close()
    again = keeper_link.take_or_start(mount, lambda: None, None)
    assert not again.fresh
    assert again.init_request == held.init_request
    again.link.close()
    os.close(again.fuse_fd)


def test_only_the_holder_may_stop_it(mount: Path, held: keeper_link.Held) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as other:
        other.connect(str(keeper.paths_for(mount).socket))
        other.send(keeper.STOP)
        assert other.recv(keeper.MESSAGE_MAX).startswith(keeper.BUSY)
    assert _mounted(mount)
    pid = _keeper_pid(mount)
    assert held.stop()
    assert not _mounted(mount)
    assert wait_for(lambda: process_gone(pid), timeout=10)
    assert not keeper.paths_for(mount).socket.exists()


def test_the_keeper_leaves_when_its_mount_is_removed(mount: Path, held: keeper_link.Held) -> None:
    pid = _keeper_pid(mount)
    held.link.close()
    os.close(held.fuse_fd)
    subprocess.run(["umount", "-l", str(mount)], check=True)
    assert wait_for(lambda: process_gone(pid), timeout=10)
    assert not keeper.paths_for(mount).pidfile.exists()


def test_a_dead_keepers_socket_is_replaced(mount: Path, held: keeper_link.Held) -> None:
    pid = _keeper_pid(mount)
    held.link.close()
    os.close(held.fuse_fd)
    os.kill(pid, signal.SIGKILL)  # leaves its socket; its connection dies with it
    assert wait_for(lambda: process_gone(pid), timeout=10)
    assert keeper.paths_for(mount).socket.exists()
    subprocess.run(["umount", "-l", str(mount)], check=True)
    fresh = keeper_link.take_or_start(mount, lambda: None, None)
    assert fresh.fresh
    assert fresh.stop()
    os.close(fresh.fuse_fd)


def test_paths_are_short_and_distinct() -> None:
    long = Path("/" + "x" * 300)
    assert len(str(keeper.paths_for(long).socket)) < 108
    assert keeper.paths_for(Path("/a-b")) != keeper.paths_for(Path("/a/b"))
