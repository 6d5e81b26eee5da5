"""CRIU and the resource limits of a process of another user, on the real kernel.

Root here may lack CAP_SYS_RESOURCE, and then the kernel refuses it prlimit() on a
process of another uid: the CRIU that tools/build-criu builds reads such a
process's limits from /proc/PID/limits instead (tools/criu-patches/).  At restore,
raising a hard limit above the one the restored process inherits from CRIU needs
that capability too: the restore then fails rather than leave the process with
CRIU's limits in place of its own.

The dumped process is a ``sleep`` of uid 65534 this test starts with limits of its
own; whatever a restore brings back is killed by PID afterwards.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctfs.kernel.criu import find_binary
from tests.ctfsd_harness import process_gone, wait_for

NOBODY = 65534
CAP_SYS_RESOURCE = 24


def _has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def _criu() -> Path:
    criu = find_binary(None)
    if criu is None:
        pytest.fail("no CRIU: tools/setup builds it")
    return criu


def _limits(pid: int) -> str:
    return Path(f"/proc/{pid}/limits").read_text()


def _lowered(res: int, most: int) -> tuple[int, int]:
    """Limits below this process's own, so that a restore has to set them."""
    _, hard = resource.getrlimit(res)
    top = most if hard == resource.RLIM_INFINITY else min(hard, most)
    return top // 3, top - 1


def _is_our_sleeper(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "Name:\tsleep\n" in status and f"Uid:\t{NOBODY}\t" in status


def _kill(pid: int) -> None:
    if _is_our_sleeper(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Dumped:
    def __init__(self, pid: int, images: Path, limits: str, hard_nofile: int) -> None:
        self.pid = pid
        self.images = images
        self.limits = limits
        self.hard_nofile = hard_nofile

    def restore(self, nofile_of_criu: int | None = None) -> subprocess.CompletedProcess[bytes]:
        """Restore detached, with CRIU's own open-files limit lowered if asked."""
        argv = [str(_criu()), "restore", "-D", str(self.images), "-o", "restore.log", "-d"]
        if nofile_of_criu is not None:
            argv = ["prlimit", f"--nofile={nofile_of_criu}:{nofile_of_criu}", *argv]
        return subprocess.run(argv, capture_output=True, check=False, timeout=60)

    def log(self, name: str) -> str:
        return (self.images / name).read_text(errors="replace")


@pytest.fixture
def dumped(tmp_path: Path) -> Iterator[Dumped]:
    """A sleep of uid 65534 with lowered limits, dumped (and so killed) by CRIU."""
    images = tmp_path / "images"
    images.mkdir()
    soft, hard = _lowered(resource.RLIMIT_NOFILE, 8192)
    mq_soft, mq_hard = _lowered(resource.RLIMIT_MSGQUEUE, 1 << 20)
    sleeper = subprocess.Popen(
        [
            "prlimit",
            f"--nofile={soft}:{hard}",
            f"--msgqueue={mq_soft}:{mq_hard}",
            "--core=0:0",
            "sleep",
            "1000",
        ],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        start_new_session=True,  # CRIU dumps session leaders without a terminal
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid = sleeper.pid
    try:
        assert wait_for(lambda: _is_our_sleeper(pid), timeout=10)
        limits = _limits(pid)
        assert f"Max open files            {soft:<20} {hard:<20}" in limits
        dumped = subprocess.run(
            [str(_criu()), "dump", "-t", str(pid), "-D", str(images), "-o", "dump.log", "-v4"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        log = (images / "dump.log").read_text(errors="replace")
        assert dumped.returncode == 0, log[-2000:]
        if not _has_cap_sys_resource():
            assert f"reading /proc/{pid}/limits" in log
        sleeper.wait(timeout=10)  # its PID is free for the restore
        yield Dumped(pid, images, limits, hard)
    finally:
        with contextlib.suppress(ProcessLookupError):
            sleeper.kill()
        sleeper.wait(timeout=10)
        _kill(pid)


def test_a_process_of_another_user_is_restored_with_its_own_limits(dumped: Dumped) -> None:
    restored = dumped.restore()
    assert restored.returncode == 0, dumped.log("restore.log")[-2000:]
    assert _is_our_sleeper(dumped.pid)
    assert _limits(dumped.pid) == dumped.limits


def test_a_hard_limit_criu_cannot_raise_fails_the_restore(dumped: Dumped) -> None:
    restored = dumped.restore(nofile_of_criu=dumped.hard_nofile - 1)
    if _has_cap_sys_resource():
        # The capability lets the restored process raise its hard limit back.
        assert restored.returncode == 0, dumped.log("restore.log")[-2000:]
        assert _limits(dumped.pid) == dumped.limits
        return
    assert restored.returncode != 0
    assert f"Can't restore rlimit {resource.RLIMIT_NOFILE} " in dumped.log("restore.log")
    assert wait_for(lambda: process_gone(dumped.pid), timeout=10)
