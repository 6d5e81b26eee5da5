"""What ctfs gives every container's init (systemd.io/CONTAINER_INTERFACE), on busybox.

/etc/hostname and a machine-id of its own, its cgroup2 tree at /sys/fs/cgroup,
the cgroups made inside kept across a checkpoint, template halt signals by any
name or number, CRIU's log kept after a failure, and no zombie left behind.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ctfsd_harness import Ctfsd, ctfs_exec, process_gone, wait_for, write_errno


def _in(ct: Path, script: str) -> str:
    done = ctfs_exec(ct, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _machine_id(ctfsd: Ctfsd, ct: Path) -> str:
    return (ctfsd.state / ct.name / "root" / "etc" / "machine-id").read_text()


def test_etc_hostname_holds_the_containers_hostname(container: Path) -> None:
    assert write_errno(container / "hostname", b"web1.example") == 0
    assert write_errno(container / "state", b"running") == 0
    assert _in(container, "cat /etc/hostname") == "web1.example\n"


def test_every_container_gets_a_machine_id_of_its_own(
    ctfsd: Ctfsd, running: Path, stopped_neighbour: Path
) -> None:
    # A change of hostname writes /etc as a start does (machine-id included).
    assert write_errno(stopped_neighbour / "hostname", b"other") == 0
    mine, theirs = _machine_id(ctfsd, running), _machine_id(ctfsd, stopped_neighbour)
    assert re.fullmatch(r"[0-9a-f]{32}\n", mine)
    assert re.fullmatch(r"[0-9a-f]{32}\n", theirs)
    assert mine != theirs
    assert _in(running, "cat /etc/machine-id") == mine


def test_a_containers_machine_id_stays_across_restarts(ctfsd: Ctfsd, running: Path) -> None:
    before = _machine_id(ctfsd, running)
    assert write_errno(running / "state", b"stopped") == 0
    assert write_errno(running / "state", b"running") == 0
    assert _machine_id(ctfsd, running) == before


def test_sys_fs_cgroup_inside_is_the_containers_own_cgroup2_tree(running: Path) -> None:
    mounts = _in(running, "cat /proc/self/mountinfo")
    assert re.search(r" /sys/fs/cgroup \S+ - cgroup2 ", mounts), mounts
    # Rooted at the container's own cgroup: its processes, and nothing above.
    assert _in(running, "cat /proc/1/cgroup").splitlines()[-1] == "0::/"
    assert "1" in _in(running, "cat /sys/fs/cgroup/cgroup.procs").split()


def test_cgroups_made_inside_are_back_after_a_restore_owned_by_its_root(
    ctfsd: Ctfsd, private: Path
) -> None:
    _in(private, "mkdir -p /sys/fs/cgroup/app.slice/empty.service")
    unified = ctfsd.cgroup_dir("unified", int(private.name))
    owner = (unified / "app.slice").stat().st_uid
    assert owner != 0
    assert write_errno(private / "state", b"frozen") == 0, (private / "events").read_text()
    assert not unified.exists()
    assert write_errno(private / "state", b"running") == 0, (private / "events").read_text()
    made = unified / "app.slice" / "empty.service"
    assert made.is_dir()
    assert {p.stat().st_uid for p in (made, made / "cgroup.procs")} == {owner}
    _in(private, "rmdir /sys/fs/cgroup/app.slice/empty.service")


def _fail_a_restore(ctfsd: Ctfsd, ct: Path) -> None:
    """Freeze ``ct`` and have its restore fail: its processes run /bin/busybox."""
    assert write_errno(ct / "state", b"frozen") == 0
    busybox = ctfsd.state / ct.name / "root" / "bin" / "busybox"
    busybox.rename(busybox.with_name("busybox.away"))
    try:
        assert write_errno(ct / "state", b"running") == errno.EIO
    finally:
        busybox.with_name("busybox.away").rename(busybox)


def test_a_failed_restore_keeps_criu_log_and_events_names_it(ctfsd: Ctfsd, running: Path) -> None:
    _fail_a_restore(ctfsd, running)
    last = (running / "events").read_text().splitlines()[-1]
    named = re.search(r"\(CRIU's log: (\S+)\)", last)
    assert named, last
    log = Path(named.group(1))
    assert log.parent == ctfsd.state / running.name / "criu-logs"
    assert "Error" in log.read_text()
    assert write_errno(running / "state", b"running") == 0


def test_a_failed_restore_leaves_no_criu_process_behind(ctfsd: Ctfsd, running: Path) -> None:
    _fail_a_restore(ctfsd, running)
    assert ctfsd.proc is not None
    assert wait_for(lambda: _children_named(ctfsd.proc.pid, "criu") == [], timeout=5)
    assert write_errno(running / "state", b"running") == 0


def test_starting_leaves_no_zombie_in_the_launcher(ctfsd: Ctfsd, running: Path) -> None:
    assert ctfsd.proc is not None
    launchers = [
        pid
        for pid in _children(ctfsd.proc.pid)
        if b"ctfs.kernel.spawner" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(launchers) == 1
    assert wait_for(lambda: not [p for p in _children(launchers[0]) if process_gone(p)])


# ------------------------------------------------------------ halt signals

BUSYBOX_CONF = 'INIT="/sbin/init"\nHALT_SIGNAL="{}"\n'


@pytest.fixture(scope="module")
def signals_ctfsd() -> Iterator[Ctfsd]:
    """A ctfsd offered busybox under other halt signals, a bad one among them."""
    daemon = Ctfsd()
    try:
        daemon.add_template("bb-number", "busybox", BUSYBOX_CONF.format("10"))
        daemon.add_template("bb-unknown", "busybox", BUSYBOX_CONF.format("SIGFOO"))
        daemon.add_template("bb-kill", "busybox", BUSYBOX_CONF.format("KILL"))
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


def test_a_template_with_an_unknown_halt_signal_is_not_imported(signals_ctfsd: Ctfsd) -> None:
    installed = (signals_ctfsd.mount / "templates").read_text().split()
    assert "bb-unknown" not in installed
    assert "bb-kill" not in installed
    log = signals_ctfsd.log_text()
    assert "not importing bb-unknown" in log and "unknown signal 'FOO'" in log
    assert "SIGKILL cannot be a halt signal" in log


def test_a_halt_signal_given_by_number_stops_the_container(signals_ctfsd: Ctfsd) -> None:
    ct = signals_ctfsd.mount / "777"
    ct.mkdir()
    try:
        assert write_errno(ct / "template", b"bb-number") == 0
        assert write_errno(ct / "state", b"running") == 0
        assert write_errno(ct / "state", b"stopped") == 0
        assert re.search(r"stopped: \d+ ms after SIGUSR1$", (ct / "events").read_text().strip())
    finally:
        write_errno(ct / "state", b"stopped")
        ct.rmdir()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found += [int(w) for w in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def _children_named(pid: int, name: str) -> list[int]:
    named = []
    for child in _children(pid):
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == name:
                named.append(child)
        except FileNotFoundError:
            continue
    return named
