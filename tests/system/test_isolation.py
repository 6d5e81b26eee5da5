"""What a container is isolated from: namespaces, mounts, devices, capabilities, fds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctfs.policy.security import DROPPED_CAPABILITIES
from tests.ctfsd_harness import ctfs_exec, write_errno


def _init(container: Path) -> int:
    return int((container / "procs").read_text().split()[0])


@pytest.mark.parametrize("ns", ["pid", "mnt", "uts", "ipc", "net", "cgroup"])
def test_init_has_its_own_namespace(running: Path, ns: str) -> None:
    assert os.readlink(f"/proc/{_init(running)}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")


def test_root_is_the_private_area_by_pivot_root(running: Path) -> None:
    mounts = ctfs_exec(running, "cat", "/proc/self/mountinfo").stdout
    root_line = next(line for line in mounts.splitlines() if line.split()[4] == "/")
    assert f"/{running.name}/root" in root_line.split()[3]


def test_network_has_only_loopback_and_it_is_up(running: Path) -> None:
    links = ctfs_exec(running, "ip", "-o", "link").stdout.splitlines()
    assert len(links) == 1
    assert ": lo:" in links[0] and "UP" in links[0]


def test_sys_is_read_only(running: Path) -> None:
    result = ctfs_exec(running, "sh", "-c", "echo 1 > /sys/kernel/mm/ksm/run")
    assert result.returncode != 0
    assert "Read-only" in result.stderr


def test_proc_sys_is_not_writable(running: Path) -> None:
    # The host's root owns it; the container's root is an unprivileged host user.
    result = ctfs_exec(running, "sh", "-c", "echo 1 > /proc/sys/vm/drop_caches")
    assert result.returncode != 0
    assert "Permission denied" in result.stderr


def test_proc_sys_is_read_only_with_the_hosts_ids(container: Path) -> None:
    assert write_errno(container / "idmap", b"host\n") == 0
    assert write_errno(container / "state", b"running") == 0
    result = ctfs_exec(container, "sh", "-c", "echo 1 > /proc/sys/vm/drop_caches")
    assert result.returncode != 0
    assert "Read-only" in result.stderr


def test_proc_sys_net_is_writable_in_its_own_network_namespace(running: Path) -> None:
    result = ctfs_exec(running, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    assert result.returncode == 0


def test_dev_has_the_usual_nodes_devpts_and_shm(running: Path) -> None:
    script = "ls /dev; grep -E ' /dev/(pts|shm) ' /proc/mounts"
    out = ctfs_exec(running, "sh", "-c", script).stdout
    for node in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm"):
        assert node in out.split(), node
    assert "devpts" in out and "tmpfs" in out


def test_devices_cgroup_refuses_a_disk_even_when_its_node_exists(running: Path) -> None:
    script = "mknod /tmp/disk b 7 0 && head -c1 /tmp/disk"
    result = ctfs_exec(running, "sh", "-c", script)
    assert result.returncode != 0
    assert "Operation not permitted" in result.stderr


@pytest.mark.parametrize(
    "cap", ["sys_module", "sys_rawio", "sys_time", "sys_boot", "mac_admin", "mac_override"]
)
def test_dangerous_capability_is_not_in_inits_bounding_set(running: Path, cap: str) -> None:
    status = Path(f"/proc/{_init(running)}/status").read_text()
    bounding = int(
        next(line for line in status.splitlines() if line.startswith("CapBnd:")).split()[1], 16
    )
    assert not bounding & (1 << DROPPED_CAPABILITIES[cap])


def test_setting_the_clock_inside_is_not_permitted(running: Path) -> None:
    result = ctfs_exec(running, "date", "-s", "2001-01-01")
    # busybox date reports the refusal but exits 0 regardless.
    assert "Operation not permitted" in result.stderr


def test_init_holds_no_host_file_descriptor(running: Path) -> None:
    fd_dir = Path(f"/proc/{_init(running)}/fd")
    targets = {os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)}
    assert targets == {"/dev/null"}


def test_processes_of_two_containers_cannot_see_each_other(running: Path, mount: Path) -> None:
    other = mount / str(int(running.name) + 100000)
    other.mkdir()
    try:
        (other / "state").write_text("running\n")
        ours = ctfs_exec(running, "ps", "-o", "pid").stdout.split()[1:]
        theirs = (other / "procs").read_text().split()
        assert len(ours) < 10
        assert not set(theirs) & set(ours)
    finally:
        (other / "state").write_text("stopped\n")
        other.rmdir()
