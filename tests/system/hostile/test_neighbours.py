"""Attacks on a neighbour container and on ctfs's own helpers, from inside a container."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ctfsd_harness import CTFS, ctfs_exec, wait_for, write_errno

NAMESPACES = ("user", "pid", "mnt", "net", "uts", "ipc", "cgroup")


@pytest.fixture
def neighbour(mount: Path, new_ctid: int) -> Iterator[Path]:
    """A second running container, named apart from the test's own."""
    path = mount / str(new_ctid + 7000)
    path.mkdir()
    try:
        assert write_errno(path / "hostname", b"neighbour-secret\n") == 0
        assert write_errno(path / "state", b"running") == 0
        yield path
    finally:
        write_errno(path / "state", b"stopped")
        with contextlib.suppress(OSError):
            path.rmdir()


def test_a_neighbours_files_are_out_of_reach_through_proc(running: Path, neighbour: Path) -> None:
    for pid in (neighbour / "procs").read_text().split():
        done = ctfs_exec(running, "cat", f"/proc/{pid}/root/etc/hostname")
        assert "neighbour-secret" not in done.stdout


def test_no_process_of_the_container_is_in_a_host_namespace(running: Path) -> None:
    host = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in NAMESPACES}
    for pid in (running / "procs").read_text().split():
        for ns in NAMESPACES:
            with contextlib.suppress(FileNotFoundError):
                assert os.readlink(f"/proc/{pid}/ns/{ns}") != host[ns], (pid, ns)


def test_an_exec_helper_is_never_visible_inside(running: Path) -> None:
    # The host side of ctfs exec (a Python process with the host's files mapped)
    # must not show in the container; only the command it runs does.
    session = subprocess.Popen(
        [str(CTFS), "--mount", str(running.parent), "exec", running.name, "--", "sleep", "3"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: "sleep" in ctfs_exec(running, "ps").stdout, timeout=10)
        listing = ctfs_exec(running, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
        assert "python" not in listing.stdout and ".venv" not in listing.stdout
        maps = ctfs_exec(running, "sh", "-c", "cat /proc/[0-9]*/maps 2>/dev/null")
        assert "python" not in maps.stdout
    finally:
        session.wait(timeout=30)
