"""The /proc and /sys views a container gets (ctfs.policy.procviews)."""

from __future__ import annotations

import pytest

from ctfs.kernel.api import CpuCap, CpuTime, MemoryDetail, TaskStates
from ctfs.policy import procviews
from ctfs.policy.procviews import Reading

MIB = 1 << 20
HOST_CPUINFO = "".join(
    f"processor\t: {n}\nvendor_id\t: Test\nmodel name\t: CPU {n}\n\n" for n in range(4)
)


def _reading(**changes: object) -> Reading:
    values: dict[str, object] = {
        "ram_limit": 256 * MIB,
        "swap_limit": 64 * MIB,
        "host_ram": 24000 * MIB,
        "host_swap": 1000 * MIB,
        "cpus": [0, 1],
        "uptime": 100.0,
        "memory": MemoryDetail(used=100 * MIB, cache=30 * MIB, active_file=10 * MIB),
    }
    values.update(changes)
    return Reading(**values)  # type: ignore[arg-type]


def _fields(text: str) -> dict[str, int]:
    return {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in text.splitlines())}


def test_memtotal_is_the_ram_limit() -> None:
    assert _fields(procviews.meminfo(_reading()))["MemTotal"] == 256 * 1024


def test_memtotal_is_the_hosts_ram_without_a_limit() -> None:
    assert _fields(procviews.meminfo(_reading(ram_limit=None)))["MemTotal"] == 24000 * 1024


def test_memfree_is_what_the_limit_leaves() -> None:
    assert _fields(procviews.meminfo(_reading()))["MemFree"] == 156 * 1024


def test_memavailable_adds_the_droppable_page_cache() -> None:
    assert _fields(procviews.meminfo(_reading()))["MemAvailable"] == 166 * 1024


def test_memfree_is_never_negative() -> None:
    over = _reading(memory=MemoryDetail(used=300 * MIB))
    assert _fields(procviews.meminfo(over))["MemFree"] == 0


def test_swap_is_the_swap_limit_within_the_hosts_swap() -> None:
    assert _fields(procviews.meminfo(_reading()))["SwapTotal"] == 64 * 1024
    assert _fields(procviews.meminfo(_reading(host_swap=0)))["SwapTotal"] == 0


@pytest.mark.parametrize(
    ("cpu_set", "quota", "shown"),
    [
        ([0, 1, 2, 3], None, [0, 1, 2, 3]),
        ([2, 3], None, [2, 3]),
        ([0, 1, 2, 3], 150_000, [0, 1]),
        ([0, 1, 2, 3], 10_000, [0]),
    ],
)
def test_visible_cpus_follow_the_set_and_the_cap(
    cpu_set: list[int], quota: int | None, shown: list[int]
) -> None:
    assert procviews.visible_cpus(cpu_set, CpuCap(quota, 100_000)) == shown


def test_cpuinfo_numbers_the_shown_cpus_from_zero() -> None:
    text = procviews.cpuinfo(HOST_CPUINFO, [2, 3])
    assert [ln for ln in text.splitlines() if ln.startswith("processor")] == [
        "processor\t: 0",
        "processor\t: 1",
    ]
    assert "model name\t: CPU 2" in text and "CPU 0" not in text


@pytest.mark.parametrize(("cpus", "text"), [([5], "0\n"), ([0, 1, 2], "0-2\n")])
def test_cpu_online_is_a_range_from_zero(cpus: list[int], text: str) -> None:
    assert procviews.cpu_online(cpus) == text


def test_uptime_idle_is_what_its_cpus_did_not_use() -> None:
    reading = _reading(cpu=CpuTime(user=5000, system=1000))
    assert procviews.uptime(reading) == "100.00 140.00\n"


def test_stat_counts_the_containers_cpu_time() -> None:
    lines = procviews.stat(_reading(cpu=CpuTime(user=600, system=200)), now=1000.0).splitlines()
    assert lines[0] == "cpu 600 0 200 19200 0 0 0 0 0 0"
    assert [ln.split()[0] for ln in lines[1:3]] == ["cpu0", "cpu1"]
    assert "btime 900" in lines


def test_load_approaches_the_number_of_active_tasks() -> None:
    load = procviews.decay((0.0, 0.0, 0.0), 2, 600.0)
    assert load[0] == pytest.approx(2.0, abs=0.01)
    assert load[0] > load[1] > load[2] > 0


def test_load_does_not_change_without_time() -> None:
    assert procviews.decay((1.0, 2.0, 3.0), 5, 0.0) == (1.0, 2.0, 3.0)


def test_loadavg_counts_its_reader_as_running() -> None:
    text = procviews.loadavg((0.5, 0.25, 0.125), TaskStates(running=0, blocked=1, total=3))
    assert text == "0.50 0.25 0.12 1/3 0\n"


def test_veinfo_is_openvzs_line() -> None:
    assert procviews.veinfo(101, 7, ["198.18.0.2"]) == "       101     0     7      198.18.0.2\n"


def test_diskstats_is_the_pool_disk_with_the_containers_own_io() -> None:
    from ctfs.kernel.api import Disk, DiskIo

    reading = _reading(disk=Disk("loop1", 7, 1), io=DiskIo(3, 4096, 5, 1 << 20))
    fields = procviews.diskstats(reading).split()
    assert fields[:3] == ["7", "1", "loop1"]
    assert fields[3] == "3" and fields[5] == "8"  # reads, sectors read
    assert fields[7] == "5" and fields[9] == "2048"  # writes, sectors written
    assert len(fields) == 20


def test_diskstats_is_empty_without_a_disk() -> None:
    assert procviews.diskstats(_reading()) == ""
