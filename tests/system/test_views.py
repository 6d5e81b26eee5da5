"""Self-inspection: a container sees its own directory of ctfs and its own figures in
/proc and /sys, computed from its limits and usage."""

from __future__ import annotations

import errno
import subprocess
import time
from pathlib import Path

import pytest

from tests.ctfsd_harness import ctfs_exec, wait_for, write_errno
from tests.system.conftest import _booted


def _inside(container: Path, script: str) -> str:
    done = ctfs_exec(container, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _start(container: Path, *settings: tuple[str, bytes]) -> Path:
    for name, text in settings:
        assert write_errno(container / name, text) == 0, name
    assert write_errno(container / "state", b"running") == 0
    assert wait_for(lambda: _booted(container), timeout=10), "the container did not boot"
    return container


@pytest.fixture
def limited(container: Path) -> Path:
    """Running, with 256 MiB of RAM, 64 MiB of swap and one CPU."""
    limits = b"physpages 0:256M\nswappages 0:64M\n"
    return _start(container, ("limits", limits), ("cpus", b"1"))


def test_its_own_directory_is_at_ctfs_ctid_inside(private: Path) -> None:
    assert _inside(private, f"cat /ctfs/{private.name}/state") == "running\n"


def test_ctfs_inside_holds_only_its_own_directory(private: Path, stopped_neighbour: Path) -> None:
    assert _inside(private, "ls -a /ctfs").split() == [".", "..", private.name]


def test_a_write_from_inside_is_refused_with_eperm(private: Path) -> None:
    done = ctfs_exec(private, "sh", "-c", f"echo stopped > /ctfs/{private.name}/state")
    assert done.returncode != 0
    assert "not permitted" in done.stderr
    assert "not allowed from container" in (private / "events").read_text()
    assert (private / "state").read_text() == "running\n"


@pytest.mark.parametrize(
    "path",
    [
        "/ctfs/{other}/state",
        "/ctfs/{own}/../{other}/state",
        "/ctfs/{own}/../../{other}/state",
        "/ctfs/{own}/../version",
    ],
)
def test_another_container_and_the_host_files_are_unreachable(
    private: Path, stopped_neighbour: Path, path: str
) -> None:
    target = path.format(own=private.name, other=stopped_neighbour.name)
    assert ctfs_exec(private, "cat", target).returncode != 0


def _meminfo(container: Path) -> dict[str, int]:
    lines = _inside(container, "cat /proc/meminfo").splitlines()
    return {key: int(rest.split()[0]) for key, _, rest in (ln.partition(":") for ln in lines)}


def test_meminfo_inside_shows_the_ram_limit(limited: Path) -> None:
    fields = _meminfo(limited)
    assert fields["MemTotal"] == 256 * 1024
    assert 0 < fields["MemFree"] <= fields["MemAvailable"] <= 256 * 1024


def test_meminfo_inside_shows_the_swap_the_limit_allows(limited: Path) -> None:
    host = int(Path("/proc/meminfo").read_text().split("SwapTotal:")[1].split()[0])
    assert _meminfo(limited)["SwapTotal"] == min(64 * 1024, host)


def test_free_inside_shows_the_available_memory_within_the_limit(limited: Path) -> None:
    # busybox free takes total and free from sysinfo(2), which is the host's (see
    # ctfs(5)); "available" comes from /proc/meminfo.
    available = _inside(limited, "free -m").splitlines()[1].split()[-1]
    assert 0 < int(available) <= 256


def test_one_cpu_inside_when_cpus_is_1(limited: Path) -> None:
    assert _inside(limited, "cat /sys/devices/system/cpu/online") == "0\n"
    assert _inside(limited, "grep -c ^processor /proc/cpuinfo") == "1\n"
    assert _inside(limited, "nproc") == "1\n"


def test_uptime_inside_counts_from_the_start(private: Path) -> None:
    seconds = float(_inside(private, "cat /proc/uptime").split()[0])
    host = float(Path("/proc/uptime").read_text().split()[0])
    assert 0 < seconds < 60 < host


def test_a_view_kept_open_shows_the_present_when_read_again(private: Path) -> None:
    # procps (top, free -s) keeps /proc/meminfo and /proc/uptime open and reads
    # them again from offset 0 at every refresh.
    with open(private / "proc" / "uptime", "rb", buffering=0) as uptime:
        first = float(uptime.read().split()[0])
        time.sleep(1.2)
        uptime.seek(0)
        second = float(uptime.read().split()[0])
    assert second - first >= 1.0


def test_loadavg_inside_counts_its_tasks(private: Path) -> None:
    running, total = _inside(private, "cat /proc/loadavg").split()[3].split("/")
    assert int(running) >= 1
    assert 2 <= int(total) <= 10


def test_user_beancounters_inside_is_its_own_block(private: Path) -> None:
    text = _inside(private, f"cat /ctfs/{private.name}/proc/user_beancounters")
    assert text.startswith("Version: 2.5\n")
    assert text.splitlines()[2].split()[0] == f"{private.name}:"


def test_views_can_be_unmounted_by_the_containers_root(private: Path) -> None:
    _inside(private, "umount /proc/meminfo")
    assert "MemTotal" in _inside(private, "cat /proc/meminfo")


def test_the_host_reads_the_views_in_the_container_directory(private: Path) -> None:
    assert (private / "proc" / "uptime").read_text().count(" ") == 1
    assert (private / "proc" / "vz" / "veinfo").read_text().split()[0] == private.name


def test_uptime_goes_on_across_a_checkpoint(private: Path) -> None:
    before = float(_inside(private, "cat /proc/uptime").split()[0])
    began = time.monotonic()
    assert write_errno(private / "state", b"frozen") == 0
    time.sleep(1)
    assert write_errno(private / "state", b"running") == 0
    after = float(_inside(private, "cat /proc/uptime").split()[0])
    assert before <= after < before + time.monotonic() - began


def test_views_are_back_after_a_checkpoint(private: Path) -> None:
    assert write_errno(private / "state", b"frozen") == 0
    assert write_errno(private / "state", b"running") == 0
    assert _inside(private, f"cat /ctfs/{private.name}/state") == "running\n"
    assert "MemTotal" in _inside(private, "cat /proc/meminfo")


def test_readers_inside_never_hold_up_a_checkpoint(private: Path) -> None:
    loop = "while :; do cat /proc/meminfo /proc/uptime /ctfs/*/state > /dev/null; done"
    _inside(private, f"setsid sh -c '{loop}' > /dev/null 2>&1 < /dev/null &")
    assert wait_for(lambda: len((private / "procs").read_text().split()) >= 4, timeout=10)
    for _ in range(8):
        assert write_errno(private / "state", b"frozen") == 0
        assert write_errno(private / "state", b"running") == 0
    assert "MemTotal" in _inside(private, "cat /proc/meminfo")


def test_nothing_is_delegated_by_default(private: Path) -> None:
    assert (private / "delegated").read_text() == ""


def test_a_delegated_file_can_be_written_from_inside(private: Path) -> None:
    assert write_errno(private / "delegated", b"hostname\n") == 0
    _inside(private, f"echo inner-name > /ctfs/{private.name}/hostname")
    assert (private / "hostname").read_text() == "inner-name\n"
    assert _inside(private, "hostname") == "inner-name\n"


def test_only_delegable_files_can_be_delegated(private: Path) -> None:
    assert write_errno(private / "delegated", b"state\n") == errno.EINVAL
    assert (private / "delegated").read_text() == ""


def test_delegated_itself_cannot_be_written_from_inside(private: Path) -> None:
    done = ctfs_exec(private, "sh", "-c", f"echo hostname > /ctfs/{private.name}/delegated")
    assert done.returncode != 0 and "not permitted" in done.stderr


def test_a_delegated_nameserver_cannot_inherit_the_hosts(private: Path) -> None:
    assert write_errno(private / "delegated", b"nameserver\n") == 0
    done = ctfs_exec(private, "sh", "-c", f"echo inherit > /ctfs/{private.name}/nameserver")
    assert done.returncode != 0 and "not permitted" in done.stderr
    _inside(private, f"echo 198.18.0.53 > /ctfs/{private.name}/nameserver")
    assert (private / "nameserver").read_text() == "198.18.0.53\n"


def test_concurrent_sendfile_readers_never_stall_ctfsd(private: Path) -> None:
    # busybox's cat reads with sendfile: page reads of a file hold its page lock
    # while ctfsd serves them, and ctfsd must never wait for that lock itself.
    loop = "while :; do cat /proc/uptime /proc/meminfo > /dev/null; done"
    for _ in range(6):
        _inside(private, f"setsid sh -c '{loop}' > /dev/null 2>&1 < /dev/null &")
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["timeout", "-s", "KILL", "5", "cat", str(private / "proc" / "uptime")],
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, "ctfsd stopped answering"


def test_sysinfo_uptime_inside_counts_from_the_start(private: Path) -> None:
    # busybox's uptime asks sysinfo(2): the container's time namespace answers.
    assert " up 0 min," in _inside(private, "uptime")


def test_diskstats_inside_counts_its_own_writes(private: Path) -> None:
    _inside(private, "dd if=/dev/zero of=/root/blob bs=1M count=4 oflag=direct 2>/dev/null")
    fields = _inside(private, "cat /proc/diskstats").split()
    assert len(fields) == 20
    assert int(fields[9]) >= 4 * 2048  # sectors written, by its own tasks
