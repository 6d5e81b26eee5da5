"""idmap: a container whose root is an unprivileged range of host ids."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tests.ctfsd_harness import Ctfsd, ctfs_exec, wait_for, write_errno

SIZE = 65536


def _base(container: Path) -> int:
    inside, base, size = (container / "idmap").read_text().split()
    assert (inside, size) == ("0", str(SIZE))
    return int(base)


def test_a_new_container_has_a_private_range_saved_in_ctid_conf(
    ctfsd: Ctfsd, container: Path
) -> None:
    base = _base(container)
    assert base >= 1 << 30 and base % SIZE == 0
    conf = (ctfsd.state / container.name / "ctid.conf").read_text()
    assert f'ID_RANGE="{base}:{SIZE}"' in conf


def test_two_containers_never_share_a_range(mount: Path, container: Path, new_ctid: int) -> None:
    other = mount / str(new_ctid + 5000)
    other.mkdir()
    try:
        assert _base(container) != _base(other)
    finally:
        other.rmdir()


def test_the_range_is_kept_across_restarts(private: Path) -> None:
    base = _base(private)
    assert write_errno(private / "state", b"stopped") == 0
    assert write_errno(private / "idmap", b"private\n") == 0
    assert write_errno(private / "state", b"running") == 0
    assert _base(private) == base


def test_the_ids_cannot_change_while_it_runs(private: Path) -> None:
    assert write_errno(private / "idmap", b"host\n") == errno.EBUSY
    assert _base(private) > 0


def test_host_ids_are_an_explicit_choice(container: Path) -> None:
    assert write_errno(container / "idmap", b"host\n") == 0
    assert (container / "idmap").read_text() == "0 0 4294967295\n"
    assert "idmap: host" in (container / "events").read_text()


def test_a_bad_word_is_einval(container: Path) -> None:
    assert write_errno(container / "idmap", b"shared\n") == errno.EINVAL
    assert "idmap: rejected" in (container / "events").read_text()


def test_its_root_is_the_ranges_first_host_id(private: Path) -> None:
    init = (private / "procs").read_text().split()[0]
    status = Path(f"/proc/{init}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(_base(private))] * 4
    assert Path(f"/proc/{init}/uid_map").read_text().split() == ["0", str(_base(private)), "65536"]


def test_exec_runs_as_root_inside(private: Path) -> None:
    done = ctfs_exec(private, "id", "-u")
    assert done.returncode == 0 and done.stdout.strip() == "0"


def test_the_private_area_stays_owned_by_0_on_disk(ctfsd: Ctfsd, private: Path) -> None:
    assert ctfs_exec(private, "touch", "/root/made-inside").returncode == 0
    made = ctfsd.state / private.name / "root" / "root" / "made-inside"
    assert (made.stat().st_uid, made.stat().st_gid) == (0, 0)
    listed = ctfs_exec(private, "ls", "-ln", "/root/made-inside").stdout.split()
    assert listed[2:4] == ["0", "0"]


def test_root_inside_can_mount_proc_and_tmpfs(private: Path) -> None:
    script = "mkdir -p /tmp/p /tmp/t && mount -t proc proc /tmp/p && mount -t tmpfs t /tmp/t"
    done = ctfs_exec(private, "sh", "-c", script)
    assert done.returncode == 0, done.stderr


def test_root_inside_can_chown_files(private: Path) -> None:
    done = ctfs_exec(private, "sh", "-c", "touch /tmp/f && chown 1000:1000 /tmp/f && ls -ln /tmp/f")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[2:4] == ["1000", "1000"]


def test_root_inside_can_listen_on_a_low_port(private: Path) -> None:
    script = "nc -l -p 80 </dev/null >/dev/null 2>&1 & sleep 0.3; netstat -ltn; kill $!"
    done = ctfs_exec(private, "sh", "-c", script)
    assert ":80 " in done.stdout, done.stdout + done.stderr


def test_a_private_container_is_checkpointed_and_restored(private: Path) -> None:
    counter = "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done"
    ctfs_exec(private, "sh", "-c", f"({counter}) </dev/null >/dev/null 2>&1 &")

    def count() -> int:
        return int(ctfs_exec(private, "cat", "/tmp/counter").stdout.strip() or 0)

    assert wait_for(lambda: count() > 2, timeout=5)
    base = _base(private)
    assert write_errno(private / "state", b"frozen") == 0, (private / "events").read_text()
    before = os.stat(private / "dump").st_size
    assert before > 0
    assert write_errno(private / "state", b"running") == 0, (private / "events").read_text()
    now = count()
    time.sleep(0.3)
    assert count() > now
    init = (private / "procs").read_text().split()[0]
    assert Path(f"/proc/{init}/uid_map").read_text().split() == ["0", str(base), "65536"]


@pytest.mark.parametrize("mode", ["private", "host"])
def test_the_mode_survives_a_daemon_restart(ctfsd: Ctfsd, container: Path, mode: str) -> None:
    assert write_errno(container / "idmap", f"{mode}\n".encode()) == 0
    shown = (container / "idmap").read_text()
    ctfsd.terminate()
    ctfsd.start()
    assert (container / "idmap").read_text() == shown
