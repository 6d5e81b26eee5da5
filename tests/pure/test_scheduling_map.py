"""OpenVZ scheduling settings to kernel values (pure)."""

from __future__ import annotations

import errno

import pytest

from ctfs.errors import CtfsError
from ctfs.kernel.cgroup_v1 import cpu_shares
from ctfs.policy.scheduling import Scheduling, parse_number


def shares(units: int) -> int:
    return cpu_shares(Scheduling(cpuunits=units).cpu_weight())


@pytest.mark.parametrize("units", [8, 1000, 3000, 250_000, 500_000])
def test_cpuunits_map_into_the_kernels_share_range(units: int) -> None:
    assert 2 <= shares(units) <= 262_144


def test_cpuunits_ratios_survive_the_mapping() -> None:
    assert shares(3000) / shares(1000) == pytest.approx(3, rel=0.01)


def test_extreme_cpuunits_keep_their_ratio() -> None:
    assert shares(500_000) / shares(1000) == pytest.approx(500, rel=0.01)


def test_the_cpu_weight_is_proportional_to_cpuunits() -> None:
    assert Scheduling(cpuunits=500_000).cpu_weight() == 1
    assert Scheduling(cpuunits=1000).cpu_weight() == pytest.approx(0.002)


def test_no_cpulimit_and_all_cpus_is_no_cap() -> None:
    assert Scheduling().cpu_cap().quota_us is None


def test_cpulimit_is_a_quota_per_100_ms() -> None:
    cap = Scheduling(cpulimit=25).cpu_cap()
    assert (cap.quota_us, cap.period_us) == (25_000, 100_000)


def test_cpus_caps_cpulimit() -> None:
    assert Scheduling(cpulimit=300, cpus=2).cpu_cap().quota_us == 200_000


def test_cpus_picks_that_many_cpus_rotated_by_ctid() -> None:
    assert Scheduling(cpus=1).cpu_set(101, [0, 1]) == [1]
    assert Scheduling(cpus=1).cpu_set(102, [0, 1]) == [0]
    assert Scheduling(cpus=2).cpu_set(7, [0, 1, 2, 3]) == [3, 0]


def test_zero_cpus_means_all() -> None:
    assert Scheduling(cpus=0).cpu_set(101, [0, 1]) == [0, 1]


@pytest.mark.parametrize("prio,weight", [(0, 100), (4, 500), (7, 800)])
def test_ioprio_maps_to_bfq_weights(prio: int, weight: int) -> None:
    assert Scheduling(ioprio=prio).io_weight() == weight


def test_unreadable_settings_fall_back_to_defaults() -> None:
    assert Scheduling.from_settings({"CPUUNITS": "x"}) == Scheduling()


@pytest.mark.parametrize(
    "text,code",
    [("", errno.EINVAL), ("12a", errno.EINVAL), ("-1", errno.EINVAL), ("9", errno.ERANGE)],
)
def test_parse_number_errors(text: str, code: int) -> None:
    with pytest.raises(CtfsError) as info:
        parse_number(text, "x", 0, 8)
    assert info.value.errno_value == code
