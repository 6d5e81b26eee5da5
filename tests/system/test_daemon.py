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


def test_a_restart_brings_the_kernel_back_to_ctid_conf(ctfsd: Ctfsd, running: Path) -> None:
    assert write_errno(running / "limits", b"numproc 608\n") == 0
    ctfsd.kill()
    # What a kill in the middle of a change can leave: the kernel ahead of
    # ctid.conf, and the temporary file of a write that never got renamed.
    pids_max = ctfsd.cgroup_dir("pids", int(running.name)) / "pids.max"
    pids_max.write_text("609")
    stale = ctfsd.state / running.name / ".ctid.conf.tmp"
    stale.write_text('NUMPROC="609:609"\n')
    ctfsd.start()
    assert pids_max.read_text() == "608\n"
    assert not stale.exists()
    assert "numproc 608:608" in (running / "limits").read_text()


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
