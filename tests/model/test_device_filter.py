"""The cgroup v2 device filter (a BPF program) on the real kernel.

It is attached to a cgroup of this test's own in the host's cgroup2 hierarchy
(/sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on a unified one); a
forked child moves itself in and opens device nodes of the host's /dev.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctfs.kernel import device_filter
from ctfs.kernel.cgroup_mode import detect
from ctfs.kernel.cgroup_v1 import remove_cgroup_dir
from ctfs.policy.security import ALLOWED_DEVICES


@pytest.fixture
def cgroup() -> Iterator[Path]:
    root = Path("/sys/fs/cgroup")
    unified = root if detect(root) == "unified" else root / "unified"
    assert (unified / "cgroup.procs").exists(), "the host has no cgroup2 hierarchy"
    path = unified / f"ctfs-devtest-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        remove_cgroup_dir(path)


def _opens_in(cgroup: Path, devices: list[str]) -> dict[str, str]:
    """What opening each of ``devices`` gives a process in ``cgroup``: ok or the error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            (cgroup / "cgroup.procs").write_text("0")
            said = []
            for device in devices:
                try:
                    os.close(os.open(device, os.O_RDONLY | os.O_NONBLOCK))
                    said.append(f"{device}=ok")
                except OSError as exc:
                    said.append(f"{device}={exc.strerror}")
            os.write(write, "\n".join(said).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        text = os.read(read, 1 << 16).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    return dict(pair.split("=", 1) for pair in text.splitlines())


def test_the_allowed_devices_open_and_others_are_refused(cgroup: Path) -> None:
    device_filter.attach(cgroup, ALLOWED_DEVICES)
    said = _opens_in(cgroup, ["/dev/null", "/dev/urandom", "/dev/fuse", "/dev/loop-control"])
    assert said == {
        "/dev/null": "ok",
        "/dev/urandom": "ok",
        "/dev/fuse": "ok",
        "/dev/loop-control": "Operation not permitted",
    }


def test_a_block_device_is_refused(cgroup: Path) -> None:
    device_filter.attach(cgroup, ALLOWED_DEVICES)
    disk = next(str(p) for p in Path("/dev").iterdir() if p.is_block_device())
    assert _opens_in(cgroup, [disk]) == {disk: "Operation not permitted"}


def test_without_the_filter_the_same_device_opens(cgroup: Path) -> None:
    # The check that the two tests above test the filter, not the machine.
    assert _opens_in(cgroup, ["/dev/loop-control"]) == {"/dev/loop-control": "ok"}
