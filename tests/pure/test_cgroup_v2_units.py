"""cgroup v2's units and files: CPU weights, device rules, counters from its files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctfs.kernel import v2_counters
from ctfs.kernel.api import EVERYTHING, Disk
from ctfs.kernel.cgroup_mode import detect
from ctfs.kernel.cgroup_v1 import cpu_shares
from ctfs.kernel.cgroup_v2 import WEIGHT_MAX, cpu_weight
from ctfs.kernel.device_filter import ANY, Rule, assemble, parse_rule
from ctfs.policy.security import ALLOWED_DEVICES


@pytest.mark.parametrize("low,high", [(1000, 3000), (1000, 10000), (250, 1000)])
def test_cpu_weights_keep_the_ratios_v1_shares_give(low: int, high: int) -> None:
    largest = 500_000
    v2 = cpu_weight(high / largest) / cpu_weight(low / largest)
    v1 = cpu_shares(high / largest) / cpu_shares(low / largest)
    assert v2 == pytest.approx(high / low, rel=0.05)
    assert v2 == pytest.approx(v1, rel=0.05)


def test_cpu_weight_stays_in_the_kernels_range() -> None:
    assert cpu_weight(1.0) == WEIGHT_MAX
    assert cpu_weight(1e-9) == 1


def test_device_rules_read_as_devices_allow_writes_them() -> None:
    assert parse_rule("c 1:3 rwm") == Rule(2, 1, 3, 7)
    assert parse_rule("c 136:* rw") == Rule(2, 136, ANY, 6)
    assert parse_rule("a *:* m") == Rule(ANY, ANY, ANY, 1)


@pytest.mark.parametrize("text", ["c 1:3", "x 1:3 r", "c a:3 r", "c 1:3 rx", "c 1:3 "])
def test_a_bad_device_rule_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(text)


def test_the_program_has_a_test_block_per_rule_and_denies_at_the_end() -> None:
    rules = [parse_rule(r) for r in ALLOWED_DEVICES]
    program = assemble(rules)
    assert len(program) % 8 == 0
    assert program[-16:] == bytes.fromhex("b7000000000000009500000000000000")


def _files(directory: Path, **files: str) -> str:
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text)
    return str(directory)


def test_v2_counters_come_from_the_unified_files(tmp_path: Path) -> None:
    top = _files(
        tmp_path,
        memory__current="1000\n",
        memory__peak="2000\n",
        memory__events="low 0\nhigh 3\nmax 4\noom 1\noom_kill 1\n",
        memory__swap__current="50\n",
        memory__stat="anon 10\nfile 20\nkernel 30\nsock 40\nshmem 5\n",
        pids__current="7\n",
        pids__peak="9\n",
        pids__events="max 2\n",
        cpu__stat="usage_usec 1500\nuser_usec 1000000\nsystem_usec 500000\n",
        io__stat="7:1 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
    )
    counted = v2_counters.read(top, EVERYTHING)
    assert (counted.ram, counted.ram_peak, counted.ram_failcnt, counted.swap) == (1000, 2000, 4, 50)
    assert (counted.kmem, counted.tcp, counted.shmem) == (30, 40, 5)
    assert (counted.tasks, counted.tasks_peak, counted.tasks_refused) == (7, 9, 2)
    assert counted.cpu_ns == 1_500_000
    assert v2_counters.cpu_time(top).user == 100 and v2_counters.cpu_time(top).system == 50
    io = v2_counters.disk_io(top, Disk("loop1", 7, 1))
    assert (io.reads, io.read_bytes, io.writes, io.write_bytes) == (1, 4096, 2, 8192)
    assert v2_counters.memory_detail(top).cache == 20


def test_a_missing_cgroup_reads_as_zeros(tmp_path: Path) -> None:
    assert v2_counters.read(str(tmp_path / "gone"), EVERYTHING).ram == 0


@pytest.mark.parametrize(
    "made,mode",
    [
        (["cgroup.controllers"], "unified"),
        (["unified/cgroup.controllers"], "hybrid"),
        ([], "legacy"),
    ],
)
def test_the_hosts_cgroup_layout_is_told_from_its_files(
    tmp_path: Path, made: list[str], mode: str
) -> None:
    for name in made:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert detect(tmp_path) == mode
