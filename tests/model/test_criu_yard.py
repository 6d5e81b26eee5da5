"""CRIU's cgroup yard on cgroup v2: a private directory whose "unified" is cgroup2.

Made in a temporary directory of the test's own; its bind mount is undone at the
end, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctfs.kernel import libc
from ctfs.kernel.cgroup_mode import detect
from ctfs.kernel.cgroup_v2 import make_yard

ROOT = Path("/sys/fs/cgroup")
CGROUP2 = ROOT if detect(ROOT) == "unified" else ROOT / "unified"


@pytest.fixture
def yard() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="ctfs-yard-"))
    try:
        yield base / "yard"
    finally:
        unified = base / "yard" / "unified"
        while os.path.ismount(unified):
            libc.umount2(str(unified), 0)
        with contextlib.suppress(FileNotFoundError):
            unified.rmdir()
        with contextlib.suppress(FileNotFoundError):
            (base / "yard").rmdir()
        base.rmdir()


def _mounts_at(path: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == str(path))


def test_the_yards_unified_is_the_cgroup2_hierarchy(yard: Path) -> None:
    make_yard(yard, CGROUP2)
    assert (yard / "unified" / "cgroup.procs").exists()
    assert os.stat(yard / "unified").st_ino == os.stat(CGROUP2).st_ino
    assert yard.stat().st_mode & 0o777 == 0o700


def test_making_the_yard_twice_mounts_once(yard: Path) -> None:
    make_yard(yard, CGROUP2)
    make_yard(yard, CGROUP2)
    assert _mounts_at(yard / "unified") == 1


def test_a_link_left_by_an_older_ctfsd_becomes_the_mount(yard: Path) -> None:
    yard.mkdir(mode=0o700)
    (yard / "unified").symlink_to(CGROUP2)
    make_yard(yard, CGROUP2)
    assert not (yard / "unified").is_symlink()
    assert _mounts_at(yard / "unified") == 1


def test_a_yard_others_can_write_is_refused(yard: Path) -> None:
    yard.mkdir()
    yard.chmod(0o777)
    with pytest.raises(PermissionError):
        make_yard(yard, CGROUP2)
    assert not (yard / "unified").exists()
