"""Attacks of a container's root, where that root is an unprivileged range of host ids.

These are attacks 1, 2, 4 and 5 of the isolation issue and the nested user namespace
escape.  Each writes back the value that is already there, so even a hole that is
open changes nothing on the host; the test then checks that the host is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ctfsd_harness import UNIFIED, Ctfsd, ctfs_exec

HOST_SYSCTLS = ("kernel/randomize_va_space", "kernel/core_pattern", "vm/overcommit_memory")


def _sysctl(name: str) -> str:
    return (Path("/proc/sys") / name).read_text().strip()


def _mounts() -> list[str]:
    return sorted(Path("/proc/self/mountinfo").read_text().splitlines())


@pytest.mark.parametrize("name", HOST_SYSCTLS)
def test_host_sysctls_cannot_be_written_even_after_a_remount(private: Path, name: str) -> None:
    value = _sysctl(name)
    # The attack as it was run: make /proc/sys writable again, then write.
    remount = "mount -o remount,rw /proc/sys 2>/dev/null; mount -o remount,rw /proc 2>/dev/null"
    script = f"{remount}; printf '%s\\n' '{value}' > /proc/sys/{name}"
    done = ctfs_exec(private, "sh", "-c", script)
    assert done.returncode != 0
    assert "Permission denied" in done.stderr or "Read-only" in done.stderr
    assert _sysctl(name) == value


def test_a_nested_user_namespace_gains_nothing(private: Path) -> None:
    value = _sysctl("kernel/randomize_va_space")
    script = f"unshare -U -r sh -c 'echo {value} > /proc/sys/kernel/randomize_va_space'"
    done = ctfs_exec(private, "sh", "-c", script)
    assert done.returncode != 0
    assert _sysctl("kernel/randomize_va_space") == value


@pytest.mark.parametrize("target", ["/sys", "/proc", "/dev"])
def test_what_ctfs_mounted_cannot_be_unmounted(private: Path, target: str) -> None:
    done = ctfs_exec(private, "umount", target)
    assert done.returncode != 0
    assert target in ctfs_exec(private, "cat", "/proc/self/mounts").stdout


def test_a_sysfs_mounted_inside_writes_nothing_of_the_hosts(private: Path) -> None:
    knob = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not knob.exists():
        pytest.skip("this kernel has no transparent hugepages knob")
    before = knob.read_text()
    current = before.split("[")[1].split("]")[0]
    script = (
        "mkdir -p /tmp/sys && mount -t sysfs sysfs /tmp/sys && "
        f"echo {current} > /tmp/sys/kernel/mm/transparent_hugepage/enabled"
    )
    done = ctfs_exec(private, "sh", "-c", script)
    assert done.returncode != 0
    assert knob.read_text() == before


def test_sys_cannot_be_made_writable(private: Path) -> None:
    done = ctfs_exec(private, "mount", "-o", "remount,rw", "/sys")
    assert done.returncode != 0


@pytest.mark.skipif(UNIFIED, reason="cgroup v1 controllers (the v2 files: the next test)")
@pytest.mark.parametrize(
    ("controller", "name"),
    [
        ("pids", "pids.max"),
        ("memory", "memory.limit_in_bytes"),
        ("devices", "devices.allow"),
        ("cpu", "cpu.shares"),
    ],
)
def test_its_own_limits_are_out_of_reach(
    ctfsd: Ctfsd, private: Path, controller: str, name: str
) -> None:
    host_file = ctfsd.cgroup_dir(controller, int(private.name)) / name
    before = host_file.read_text() if name != "devices.allow" else ""
    written = "a *:* rwm" if name == "devices.allow" else before.strip()
    script = (
        f"mkdir -p /tmp/cg && mount -t cgroup -o {controller} cgroup /tmp/cg && "
        f"echo '{written}' > /tmp/cg/{name}"
    )
    done = ctfs_exec(private, "sh", "-c", script)
    assert done.returncode != 0
    if name == "devices.allow":
        listed = (host_file.parent / "devices.list").read_text()
        assert "a *:* rwm" not in listed
    else:
        assert host_file.read_text() == before


@pytest.mark.skipif(not UNIFIED, reason="cgroup v2 files (the v1 ones: the test above)")
@pytest.mark.parametrize("name", ["pids.max", "memory.max", "memory.high", "cpu.weight", "cpu.max"])
def test_its_own_cgroup2_limits_are_out_of_reach(ctfsd: Ctfsd, private: Path, name: str) -> None:
    host_file = ctfsd.cgroup_dir("unified", int(private.name)) / name
    before = host_file.read_text()
    # Its /sys/fs/cgroup is its own cgroup, the root of its cgroup namespace; so is
    # the root of a cgroup2 it mounts itself.  Either way the host's limit stays.
    for script in (
        f"echo 1 > /sys/fs/cgroup/{name}",
        f"mkdir -p /tmp/cg && mount -t cgroup2 cgroup2 /tmp/cg && echo 1 > /tmp/cg/{name}",
    ):
        done = ctfs_exec(private, "sh", "-c", script)
        ctfs_exec(private, "umount", "/tmp/cg")
        assert done.returncode != 0, script
        assert host_file.read_text() == before


def test_a_block_device_cannot_be_made_or_mounted(private: Path) -> None:
    mounts = _mounts()
    done = ctfs_exec(private, "sh", "-c", "mknod /tmp/loop0 b 7 0 && mount -r /tmp/loop0 /mnt")
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr
    assert _mounts() == mounts


def test_mapped_files_of_processes_cannot_be_opened(private: Path) -> None:
    # Attack 2 went through /proc/PID/map_files to host files an exec helper mapped.
    done = ctfs_exec(
        private, "sh", "-c", "ls /proc/1/map_files/ && cat /proc/1/map_files/* >/dev/null"
    )
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr or "Permission denied" in done.stderr


def test_a_file_handle_opens_nothing(private: Path, ctfsd: Ctfsd, probe_binary: Path) -> None:
    target = ctfsd.state / private.name / "root" / "tmp" / "ctfs-probe"
    target.write_bytes(probe_binary.read_bytes())
    target.chmod(0o755)
    done = ctfs_exec(private, "/tmp/ctfs-probe", "open_by_handle_at")
    assert done.stdout.split() == ["open_by_handle_at", "EPERM"]


def test_the_host_is_unchanged_afterwards(ctfsd: Ctfsd, private: Path) -> None:
    # All of the above, once more in a row, against a neighbour that keeps running.
    sysctls = {name: _sysctl(name) for name in HOST_SYSCTLS}
    mounts = _mounts()
    script = (
        "mount -o remount,rw /proc 2>/dev/null; umount /sys 2>/dev/null; "
        "mkdir -p /tmp/cg && mount -t cgroup -o pids cgroup /tmp/cg 2>/dev/null; "
        "echo 1 > /tmp/cg/pids.max 2>/dev/null; mknod /tmp/b b 7 0 2>/dev/null; "
        "mkdir -p /tmp/cg2 && mount -t cgroup2 cgroup2 /tmp/cg2 2>/dev/null; "
        "echo 1 > /tmp/cg2/pids.max 2>/dev/null; echo 1 > /sys/fs/cgroup/pids.max 2>/dev/null; "
        "umount /tmp/cg2 2>/dev/null; true"
    )
    assert ctfs_exec(private, "sh", "-c", script).returncode == 0
    assert {name: _sysctl(name) for name in HOST_SYSCTLS} == sysctls
    assert _mounts() == mounts
    pids_max = ctfsd.cgroup_dir("pids", int(private.name)) / "pids.max"
    assert pids_max.read_text().strip() == "max"
