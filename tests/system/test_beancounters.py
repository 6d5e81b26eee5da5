"""limits and beancounters on real containers: enforced, counted, kept, refused."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ctfs.policy.sizes import PAGE_BYTES
from tests.cgroup_knobs import host_knobs
from tests.ctfsd_harness import Ctfsd, ctfs_exec, wait_for, write_errno


def _row(text: str, name: str) -> list[int]:
    """held, maxheld, barrier, limit, failcnt of ``name`` in a beancounters text."""
    for line in text.splitlines():
        words = line.replace(":", " ").split()
        if name in words:
            return [int(w) for w in words[words.index(name) + 1 :]]
    raise AssertionError(f"no {name} row")


def _counter(ct: Path, name: str) -> list[int]:
    return _row((ct / "beancounters").read_text(), name)


def test_limits_default_to_unlimited(container: Path) -> None:
    lines = (container / "limits").read_text().splitlines()
    assert "numproc unlimited:unlimited enforced" in lines
    assert "numfile unlimited:unlimited accounted" in lines
    assert len(lines) == 21


def test_a_limit_written_reads_back_and_lands_in_ctid_conf(ctfsd: Ctfsd, container: Path) -> None:
    (container / "limits").write_text("numproc 200\nphyspages 0:512M\n")
    lines = (container / "limits").read_text().splitlines()
    assert "numproc 200:200 enforced" in lines
    assert f"physpages 0:{512 * 2**20 // PAGE_BYTES} enforced" in lines
    assert 'NUMPROC="200:200"' in (ctfsd.state / container.name / "ctid.conf").read_text()


def test_limits_apply_live_to_a_running_container(ctfsd: Ctfsd, running: Path) -> None:
    (running / "limits").write_text("numproc 64\n")
    assert (ctfsd.cgroup_dir("pids", int(running.name)) / "pids.max").read_text() == "64\n"


def test_limits_survive_a_container_and_a_daemon_restart(ctfsd: Ctfsd, running: Path) -> None:
    (running / "limits").write_text("numproc 77\n")
    write_errno(running / "state", b"stopped")
    ctfsd.terminate()
    ctfsd.start()
    write_errno(running / "state", b"running")
    assert (ctfsd.cgroup_dir("pids", int(running.name)) / "pids.max").read_text() == "77\n"
    assert _counter(running, "numproc")[3] == 77


@pytest.mark.parametrize(
    "text,code",
    [
        (b"numprocs 10", errno.EINVAL),
        (b"numproc 10K", errno.EINVAL),
        (b"numproc 20:10", errno.EINVAL),
        (b"numproc 99999999999999999999", errno.ERANGE),
    ],
)
def test_bad_limits_are_refused_and_change_nothing(container: Path, text: bytes, code: int) -> None:
    before = (container / "limits").read_text()
    assert write_errno(container / "limits", text) == code
    assert (container / "limits").read_text() == before
    assert "limits: rejected" in (container / "events").read_text().splitlines()[-1]


def test_one_bad_line_keeps_the_good_lines_from_applying(container: Path) -> None:
    before = (container / "limits").read_text()
    assert write_errno(container / "limits", b"numproc 100\nnumfile 5G") == errno.EINVAL
    assert (container / "limits").read_text() == before


def test_beancounters_is_one_block_in_proc_user_beancounters_format(running: Path) -> None:
    lines = (running / "beancounters").read_text().splitlines()
    assert lines[0] == "Version: 2.5"
    assert lines[1].split() == ["uid", "resource", "held", "maxheld", "barrier", "limit", "failcnt"]
    assert len(lines) == 26
    assert lines[2].split()[0] == f"{running.name}:"


def test_a_stopped_container_has_no_block(container: Path) -> None:
    assert len((container / "beancounters").read_text().splitlines()) == 2


def test_numproc_held_is_the_containers_task_count(ctfsd: Ctfsd, running: Path) -> None:
    held = _counter(running, "numproc")[0]
    assert held == int((ctfsd.cgroup_dir("pids", int(running.name)) / "pids.current").read_text())


def test_host_beancounters_lists_every_running_container(running: Path, mount: Path) -> None:
    other = mount / str(int(running.name) + 300000)
    other.mkdir()
    try:
        write_errno(other / "state", b"running")
        text = (mount / "beancounters").read_text()
        uids = [line.split()[0] for line in text.splitlines()[2:] if ":" in line.split()[0]]
        assert uids == [f"{running.name}:", f"{other.name}:"]
    finally:
        write_errno(other / "state", b"stopped")
        other.rmdir()


def test_a_fork_bomb_stops_at_numproc_and_failcnt_rises(running: Path, mount: Path) -> None:
    (running / "limits").write_text("numproc 40\n")
    # The sleepers hold no pipe of ours, so exec returns once the loop is done.
    loop = "for i in $(seq 1 100); do sleep 30 </dev/null >/dev/null 2>&1 & done"
    bomb = ctfs_exec(running, "sh", "-c", loop)
    assert "can't fork" in bomb.stderr
    held, _, _, limit, failcnt = _counter(running, "numproc")
    assert held <= limit == 40
    assert failcnt > 0
    # The host and a neighbour are untouched by it.
    neighbour = mount / str(int(running.name) + 400000)
    neighbour.mkdir()
    try:
        write_errno(neighbour / "state", b"running")
        assert ctfs_exec(neighbour, "sh", "-c", "sleep 0 & wait; echo ok").stdout == "ok\n"
    finally:
        write_errno(neighbour / "state", b"stopped")
        neighbour.rmdir()


def test_a_memory_hog_hits_physpages_and_only_it_is_killed(running: Path) -> None:
    (running / "limits").write_text("physpages 0:32M\n")
    init = (running / "procs").read_text().split()[0]
    hog = ctfs_exec(running, "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo $x")
    assert hog.returncode != 0
    assert _counter(running, "physpages")[4] > 0
    assert (running / "state").read_text() == "running\n"
    assert (running / "procs").read_text().split()[0] == init


def test_an_accounted_limit_crossed_gets_a_maxheld_and_an_event(running: Path) -> None:
    (running / "limits").write_text("numfile 2:3\n")
    held, maxheld, _, _, failcnt = _counter(running, "numfile")
    assert held > 3 and maxheld >= held
    assert failcnt == 0  # ctfs watches numfile; nothing was refused
    assert wait_for(lambda: "numfile: held" in (running / "events").read_text())
    assert "above its limit 3 (accounted only)" in (running / "events").read_text()


def test_numtcpsock_counts_the_containers_own_tcp_sockets(running: Path) -> None:
    before = _counter(running, "numtcpsock")[0]
    listen = "(nc -l -p 7000 </dev/null >/dev/null 2>&1 &)"
    assert ctfs_exec(running, "sh", "-c", listen).returncode == 0
    assert wait_for(lambda: _counter(running, "numtcpsock")[0] == before + 1)
    assert _counter(running, "numfile")[0] > 0


def test_a_limit_the_kernel_refuses_is_eio_and_leaves_the_old_one(
    ctfsd: Ctfsd, running: Path
) -> None:
    # Far below what the container already uses: the kernel cannot reclaim that much.
    assert write_errno(running / "limits", b"physpages 0:100K") == errno.EIO
    assert "physpages unlimited:unlimited enforced" in (running / "limits").read_text()
    assert "the kernel refused it" in (running / "events").read_text().splitlines()[-1]
    assert host_knobs().memory_limit(ctfsd.cgroup_files(int(running.name))) is None
