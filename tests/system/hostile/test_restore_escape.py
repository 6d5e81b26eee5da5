"""Attack: a dump made of a host process, copied into a container and restored.

Harmless even where the hole is open: the dumped process is a ``sleep`` this test
started, and whatever a restore brings back is killed by PID afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ctfs.kernel.criu import find_binary
from ctfs.model import dumpfile
from tests.ctfsd_harness import Ctfsd, wait_for, write_errno

MARK = "ctfs-hostile-restore-7d41"


def _sleepers() -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and MARK in " ".join(p.info["cmdline"])
    ]


@pytest.fixture
def host_dump(tmp_path: Path, container: Path) -> Iterator[Path]:
    """A whole ctfs dump file of a process in the host's namespaces and cgroups."""
    criu = find_binary(None)
    if criu is None:
        pytest.fail("no CRIU: tools/setup builds it")
    images = tmp_path / "images"
    images.mkdir()
    sleeper = subprocess.Popen(
        [MARK, "1000"],
        executable="/bin/sleep",
        start_new_session=True,  # CRIU dumps session leaders without a terminal
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: sleeper.pid in _sleepers(), timeout=10)
        dumped = subprocess.run(
            [str(criu), "dump", "-t", str(sleeper.pid), "-D", str(images), "-o", "dump.log"],
            capture_output=True,
            check=False,
        )
        assert dumped.returncode == 0, (images / "dump.log").read_text()[-2000:]
        sleeper.wait(timeout=10)
        target = tmp_path / "host.dump"
        # The attacker's manifest names the very container, so nothing maps its cgroups.
        dumpfile.pack(images, target, {"ctid": int(container.name), "cgroup_parent": ""})
        yield target
    finally:
        with contextlib.suppress(ProcessLookupError):
            sleeper.kill()
        for pid in _sleepers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_dump_of_a_host_process_never_runs_on_the_host(
    ctfsd: Ctfsd, container: Path, host_dump: Path
) -> None:
    with open(container / "dump", "wb") as f:
        f.write(host_dump.read_bytes())
    assert (container / "state").read_text() == "frozen\n"
    digest = hashlib.sha256((container / "dump").read_bytes()).hexdigest()
    assert write_errno(container / "state", b"running") == errno.EIO
    assert _sleepers() == []
    assert (container / "state").read_text() == "frozen\n"
    assert hashlib.sha256((container / "dump").read_bytes()).hexdigest() == digest
    assert ctfsd.container_pids(int(container.name)) == []
    last = (container / "events").read_text().splitlines()[-1]
    assert "restore failed, the container stays frozen" in last
