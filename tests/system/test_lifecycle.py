"""Starting, stopping, and the settings of a container's lifecycle."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import psutil

from tests.ctfsd_harness import ALT_TEMPLATE, CONTROLLERS, Ctfsd, ctfs_exec, wait_for, write_errno


def _nspid(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no NSpid")


def test_writing_running_starts_the_container(running: Path) -> None:
    assert (running / "state").read_text() == "running\n"


def test_procs_lists_init_first_and_init_is_pid_1_inside(running: Path) -> None:
    pids = [int(p) for p in (running / "procs").read_text().split()]
    assert _nspid(pids[0])[-1] == 1


def test_init_is_the_templates_own_busybox_init(running: Path) -> None:
    init = int((running / "procs").read_text().split()[0])
    assert os.readlink(f"/proc/{init}/exe").endswith("/bin/busybox")
    assert Path(f"/proc/{init}/comm").read_text().strip() == "init"


def test_the_templates_startup_scripts_run(running: Path) -> None:
    # rcS starts syslogd; its process shows up in procs.
    def syslogd_running() -> bool:
        for pid in (running / "procs").read_text().split():
            try:
                if "syslogd" in Path(f"/proc/{pid}/cmdline").read_text():
                    return True
            except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
                pass
        return False

    assert wait_for(syslogd_running, timeout=5)


def test_each_container_has_a_cgroup_in_every_controller(ctfsd: Ctfsd, running: Path) -> None:
    init = (running / "procs").read_text().split()[0]
    for controller in CONTROLLERS:
        procs = (ctfsd.cgroup_dir(controller, int(running.name)) / "cgroup.procs").read_text()
        assert init in procs.split(), controller


def test_writing_the_current_state_again_does_nothing(running: Path) -> None:
    # The same init before and after: nothing was restarted.
    init = (running / "procs").read_text().split()[0]
    starts = (running / "events").read_text().count(" started: ")
    assert write_errno(running / "state", b"running\n") == 0
    assert (running / "procs").read_text().split()[0] == init
    assert (running / "events").read_text().count(" started: ") == starts


def test_stop_ends_every_process_and_removes_the_cgroups(ctfsd: Ctfsd, running: Path) -> None:
    pids = [int(p) for p in (running / "procs").read_text().split()]
    assert write_errno(running / "state", b"stopped") == 0
    assert (running / "state").read_text() == "stopped\n"
    assert (running / "procs").read_text() == ""
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    for controller in CONTROLLERS:
        assert not ctfsd.cgroup_dir(controller, int(running.name)).exists(), controller


def test_stop_leaves_no_mount_of_the_container_on_the_host(ctfsd: Ctfsd, running: Path) -> None:
    write_errno(running / "state", b"stopped")
    private = str(ctfsd.state / running.name / "root")
    assert private not in Path("/proc/self/mountinfo").read_text()


def test_stop_is_graceful_and_runs_the_shutdown_scripts(ctfsd: Ctfsd, running: Path) -> None:
    log = ctfsd.state / running.name / "root" / "var" / "log" / "messages"
    assert wait_for(log.exists, timeout=5)
    assert write_errno(running / "state", b"stopped") == 0
    # rcK stopped syslogd with SIGTERM, which it logs on the way out.
    assert "exiting" in log.read_text()
    assert "stopped:" in (running / "events").read_text().splitlines()[-1]


def test_stop_kills_a_container_that_does_not_halt_within_the_timeout(
    ctfsd: Ctfsd, running: Path
) -> None:
    init = int((running / "procs").read_text().split()[0])
    os.kill(init, 19)  # SIGSTOP from the host: init cannot act on the halt signal
    assert write_errno(running / "state", b"stopped") == 0
    assert (running / "state").read_text() == "stopped\n"
    assert not ctfsd.container_pids(int(running.name))
    events = (running / "events").read_text()
    assert "killing" in events and "killed:" in events.splitlines()[-1]


def test_a_container_whose_init_halts_by_itself_reads_stopped(ctfsd: Ctfsd, running: Path) -> None:
    init = int((running / "procs").read_text().split()[0])
    os.kill(init, 10)  # SIGUSR1: busybox init halts, as "halt" inside would make it
    assert wait_for(lambda: (running / "state").read_text() == "stopped\n", timeout=10)
    assert "exited by itself" in (running / "events").read_text()
    assert wait_for(lambda: not ctfsd.cgroup_dir("pids", int(running.name)).exists())


def test_a_stopped_container_starts_again(running: Path) -> None:
    assert write_errno(running / "state", b"stopped") == 0
    assert write_errno(running / "state", b"running") == 0
    assert (running / "state").read_text() == "running\n"


def test_rmdir_of_a_running_container_is_ebusy(running: Path) -> None:
    try:
        running.rmdir()
    except OSError as exc:
        assert exc.errno == errno.EBUSY
    else:
        raise AssertionError("rmdir of a running container succeeded")
    assert (running / "state").read_text() == "running\n"


def test_a_second_concurrent_state_writer_gets_ebusy(container: Path) -> None:
    # The kernel serialises writes to one file; concurrency shows at open().
    first = os.open(container / "state", os.O_WRONLY | os.O_TRUNC)
    try:
        assert write_errno(container / "state", b"stopped") == errno.EBUSY
        os.write(first, b"running\n")
    finally:
        os.close(first)
    assert (container / "state").read_text() == "running\n"
    assert "refused a second writer" in (container / "events").read_text()


def test_simultaneous_state_writers_one_wins_the_others_get_ebusy(container: Path) -> None:
    results: list[int] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        results.append(write_errno(container / "state", b"running"))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) <= {0, errno.EBUSY}
    assert results.count(0) >= 1
    assert (container / "state").read_text() == "running\n"


def test_back_to_back_state_writes_are_never_refused(container: Path) -> None:
    for word in (b"running", b"stopped", b"running", b"stopped"):
        assert write_errno(container / "state", word) == 0


def test_hostname_write_during_a_state_change_is_ebusy(running: Path) -> None:
    # A host-stopped init cannot halt, so the stop lasts the whole stop timeout.
    os.kill(int((running / "procs").read_text().split()[0]), 19)
    writer = threading.Thread(target=write_errno, args=(running / "state", b"stopped"))
    writer.start()
    try:
        assert wait_for(lambda: (running / "state").read_text() == "stopping\n", timeout=5)
        assert write_errno(running / "hostname", b"racing") == errno.EBUSY
    finally:
        writer.join()
    assert (running / "hostname").read_text() == f"ct{running.name}\n"


def test_state_reads_starting_while_a_start_is_under_way(container: Path) -> None:
    seen: set[str] = set()
    writer = threading.Thread(target=write_errno, args=(container / "state", b"running"))
    writer.start()
    while writer.is_alive():
        seen.add((container / "state").read_text().strip())
    writer.join()
    assert seen <= {"stopped", "starting", "running"}
    assert (container / "state").read_text() == "running\n"


def test_hostname_is_set_in_the_container_at_start(container: Path) -> None:
    (container / "hostname").write_text("web1.example.com\n")
    write_errno(container / "state", b"running")
    assert ctfs_exec(container, "hostname").stdout.strip() == "web1.example.com"


def test_hostname_changes_live_in_a_running_container(running: Path) -> None:
    (running / "hostname").write_text("renamed\n")
    assert ctfs_exec(running, "hostname").stdout.strip() == "renamed"
    assert (running / "hostname").read_text() == "renamed\n"


def test_template_change_before_the_first_start_recreates_the_private_area(
    ctfsd: Ctfsd, container: Path
) -> None:
    marker = ctfsd.state / container.name / "root" / "marker"
    marker.write_text("from the old template\n")
    assert write_errno(container / "template", f"{ALT_TEMPLATE}\n".encode()) == 0
    assert (container / "template").read_text() == f"{ALT_TEMPLATE}\n"
    assert not marker.exists()
    conf = (ctfsd.state / container.name / "ctid.conf").read_text()
    assert f'OSTEMPLATE="{ALT_TEMPLATE}"' in conf


def test_rewriting_the_same_template_keeps_the_private_area(ctfsd: Ctfsd, container: Path) -> None:
    marker = ctfsd.state / container.name / "root" / "marker"
    marker.write_text("kept\n")
    assert write_errno(container / "template", b"busybox") == 0
    assert marker.exists()


def test_unknown_template_is_enoent_and_changes_nothing(container: Path) -> None:
    assert write_errno(container / "template", b"centos-7") == errno.ENOENT
    assert (container / "template").read_text() == "busybox\n"
    assert 'template: rejected "centos-7"' in (container / "events").read_text()


def test_template_cannot_change_after_the_first_start(running: Path) -> None:
    write_errno(running / "state", b"stopped")
    assert write_errno(running / "template", ALT_TEMPLATE.encode()) == errno.EPERM
    assert (running / "template").read_text() == "busybox\n"


def test_events_record_start_and_stop_with_timings(running: Path) -> None:
    write_errno(running / "state", b"stopped")
    lines = (running / "events").read_text().splitlines()
    assert any(" started: " in line and " ms)" in line for line in lines)
    assert any(" stopped: " in line and " ms after SIGUSR1" in line for line in lines)


def test_a_failed_start_is_eio_with_the_reason_and_leaves_nothing(
    ctfsd: Ctfsd, container: Path
) -> None:
    (ctfsd.state / container.name / "root" / "sbin" / "init").unlink()
    assert write_errno(container / "state", b"running") == errno.EIO
    assert (container / "state").read_text() == "stopped\n"
    last = (container / "events").read_text().splitlines()[-1]
    assert 'state: failed "running": start failed: exec /sbin/init' in last
    for controller in CONTROLLERS:
        assert not ctfsd.cgroup_dir(controller, int(container.name)).exists(), controller


def test_a_failed_start_leaves_no_zombie_behind(ctfsd: Ctfsd, container: Path) -> None:
    (ctfsd.state / container.name / "root" / "sbin" / "init").unlink()
    assert write_errno(container / "state", b"running") == errno.EIO
    assert ctfsd.proc is not None
    zombies = [
        child.pid
        for child in psutil.Process(ctfsd.proc.pid).children()
        if child.status() == psutil.STATUS_ZOMBIE
    ]
    names = {pid: Path(f"/proc/{pid}/status").read_text() for pid in zombies}
    log = [line for line in ctfsd.log_text().splitlines() if any(str(p) in line for p in zombies)]
    assert zombies == [], (names, log)
