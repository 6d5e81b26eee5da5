"""ctfsd itself: surviving containers, restarts, clean unmount, startup failures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.ctfsd_harness import CTFSD, Ctfsd, write_errno


def _mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


def test_containers_keep_running_when_ctfsd_is_killed(ctfsd: Ctfsd, running: Path) -> None:
    pids = (running / "procs").read_text()
    ctfsd.kill()
    init = int(pids.split()[0])
    assert Path(f"/proc/{init}/status").read_text().count("State:\tS") == 1
    ctfsd.start()
    assert (running / "state").read_text() == "running\n"
    assert (running / "procs").read_text() == pids


def test_a_restarted_ctfsd_can_stop_a_container_it_found(ctfsd: Ctfsd, running: Path) -> None:
    ctfsd.terminate()
    ctfsd.start()
    assert write_errno(running / "state", b"stopped") == 0
    assert not ctfsd.container_pids(int(running.name))


def test_settings_survive_a_daemon_restart(ctfsd: Ctfsd, container: Path) -> None:
    (container / "hostname").write_text("persisted\n")
    ctfsd.terminate()
    ctfsd.start()
    assert (container / "hostname").read_text() == "persisted\n"


def test_settings_survive_a_container_restart(running: Path) -> None:
    (running / "hostname").write_text("kept\n")
    write_errno(running / "state", b"stopped")
    write_errno(running / "state", b"running")
    assert (running / "hostname").read_text() == "kept\n"


def test_sigterm_unmounts_cleanly_and_exits_0(ctfsd: Ctfsd, mount: Path) -> None:
    assert ctfsd.terminate() == 0
    assert not _mounted(mount)
    ctfsd.start()


def test_a_busy_mountpoint_ends_startup_with_status_5(ctfsd: Ctfsd, mount: Path) -> None:
    result = subprocess.run(ctfsd.argv(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 5
    assert "busy" in result.stderr


def test_a_non_root_user_gets_status_3(ctfsd: Ctfsd, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            str(CTFSD),
            "--foreground",
            str(tmp_path / "mnt"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": "/"},
    )
    assert result.returncode == 3
    assert "root" in result.stderr


def test_an_interrupted_creation_is_cleaned_up_at_startup(ctfsd: Ctfsd, mount: Path) -> None:
    ctfsd.terminate()
    leftover = ctfsd.state / "4242"
    leftover.mkdir()
    (leftover / "partial").write_text("x")
    ctfsd.start()
    assert not leftover.exists()
    assert not (mount / "4242").exists()


def test_no_dev_fuse_ends_startup_with_status_4(ctfsd: Ctfsd, tmp_path: Path) -> None:
    # A private mount namespace whose /dev lacks fuse: the host's /dev is untouched.
    script = f'mount -t tmpfs none /dev && exec "{CTFSD}" --foreground "{tmp_path}/mnt"'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 4
    assert "/dev/fuse" in result.stderr
