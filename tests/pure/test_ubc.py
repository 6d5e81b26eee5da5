"""Beancounter table, vzctl limit syntax and /proc/user_beancounters text (pure)."""

from __future__ import annotations

import errno

import pytest

from ctfs.errors import CtfsError
from ctfs.kernel.api import Counted, KernelCounters, ProcessCounts
from ctfs.policy import beancounters as ubc
from ctfs.policy.sizes import PAGE_BYTES, UNLIMITED


def test_the_table_has_24_rows_in_openvz_order() -> None:
    assert len(ubc.ROWS) == 24
    assert ubc.ROWS[0] == "kmemsize" and ubc.ROWS[5] == "numproc" and ubc.ROWS[23] == "numiptent"
    assert [i for i, name in enumerate(ubc.ROWS) if name == "dummy"] == [4, 20, 21, 22]


def test_header_matches_the_kernels_printf() -> None:
    assert ubc.render([]) == (
        "Version: 2.5\n"
        "       uid  resource                     held              maxheld"
        "              barrier                limit              failcnt\n"
    )


def test_a_block_has_the_ctid_on_its_first_row_only() -> None:
    rows = ubc.render_block(101, {}).splitlines()
    assert len(rows) == 24
    assert rows[0].startswith("      101:  kmemsize ")
    assert all(row.startswith(" " * 12) for row in rows[1:])


def test_row_widths_are_64_bit_and_unlimited_is_long_max() -> None:
    row = ubc.render_block(7, {"kmemsize": ubc.Counter(1, 2, UNLIMITED, UNLIMITED, 3)})
    first = row.splitlines()[0]
    assert first == (
        f"{'7:':>10}  {'kmemsize':<12} {1:>20} {2:>20} {UNLIMITED:>20} {UNLIMITED:>20} {3:>20}"
    )


def test_dummy_rows_are_all_zero() -> None:
    assert ubc.render_block(1, {}).splitlines()[4].split() == ["dummy", "0", "0", "0", "0", "0"]


def test_limits_take_vzctl_syntax() -> None:
    assert ubc.parse_limits("numproc 200\nphyspages 0:512M\nprivvmpages unlimited") == {
        "numproc": (200, 200),
        "physpages": (0, 512 * 1024 * 1024 // PAGE_BYTES),
        "privvmpages": (UNLIMITED, UNLIMITED),
    }


def test_bytes_resources_take_fractions_and_page_suffixes() -> None:
    assert ubc.parse_limits("kmemsize 10P:2.5M") == {
        "kmemsize": (10 * PAGE_BYTES, int(2.5 * 1024 * 1024))
    }


def test_what_reading_limits_shows_can_be_written_back() -> None:
    assert ubc.parse_limits("numproc 50:60 enforced  # from cat limits") == {"numproc": (50, 60)}


@pytest.mark.parametrize(
    "text,code,words",
    [
        ("numprocs 10", errno.EINVAL, "not a beancounter"),
        ("numproc 10K", errno.EINVAL, "suffix"),
        ("numproc 20:10", errno.EINVAL, "above the limit"),
        ("physpages 1:2:3", errno.EINVAL, "colons"),
        ("numproc", errno.EINVAL, "write"),
        ("numproc 1\nnumproc 2", errno.EINVAL, "twice"),
        ("numproc 99999999999999999999", errno.ERANGE, "beyond"),
        ("", errno.EINVAL, "empty"),
    ],
)
def test_bad_limits_are_refused_with_a_reason(text: str, code: int, words: str) -> None:
    with pytest.raises(CtfsError) as info:
        ubc.parse_limits(text)
    assert info.value.errno_value == code
    assert words in info.value.sentence


def test_limits_of_defaults_to_unlimited_and_reads_ctid_conf() -> None:
    limits = ubc.limits_of({"NUMPROC": "100:120", "PHYSPAGES": "0:unlimited"})
    assert limits["numproc"] == (100, 120)
    assert limits["physpages"] == (0, UNLIMITED)
    assert limits["numfile"] == (UNLIMITED, UNLIMITED)


def test_only_a_resource_with_a_bound_or_above_one_is_watched() -> None:
    limits = ubc.limits_of(
        {"NUMTCPSOCK": "100:120", "PRIVVMPAGES": "0:unlimited", "NUMFILE": "0:5"}
    )
    assert ubc.watched(limits, crossed=[], enforced=frozenset()) == {"numtcpsock", "numfile"}
    # A bound lifted while above it: watched until it is seen back within.
    assert ubc.watched(ubc.limits_of({}), ["numtcpsock"], frozenset()) == {"numtcpsock"}
    assert ubc.watched(ubc.limits_of({}), crossed=[], enforced=frozenset()) == set()


def test_what_the_kernel_keeps_within_its_limit_is_watched_below_a_barrier_only() -> None:
    kept = frozenset({"numproc", "physpages"})
    limits = ubc.limits_of({"NUMPROC": "200:200", "PHYSPAGES": "0:1000"})
    assert ubc.watched(limits, crossed=[], enforced=kept) == set()
    assert ubc.watched(limits, crossed=[], enforced=frozenset()) == {"numproc", "physpages"}
    soft = ubc.limits_of({"NUMPROC": "150:200", "PHYSPAGES": "500:1000"})
    assert ubc.watched(soft, crossed=[], enforced=kept) == {"numproc", "physpages"}
    assert ubc.watched(limits, crossed=["numproc"], enforced=kept) == {"numproc"}


def test_every_resource_says_what_reading_it_takes() -> None:
    assert set(ubc.SOURCES) == set(ubc.RESOURCES)
    assert ubc.needed_for(["numproc"]) == {Counted.TASKS}
    assert ubc.needed_for(["numothersock", "numfile"]) == {Counted.OPEN_FILES, Counted.TCP_SOCKETS}
    assert ubc.needed_for([]) == frozenset()


def test_a_partial_reading_gives_only_the_rows_it_has_all_the_figures_of() -> None:
    kernel = KernelCounters(tasks=3, tasks_peak=9, tasks_refused=1, ram=4096 * 7)
    rows = ubc.held_now(kernel, ProcessCounts(files=5), frozenset({Counted.TASKS}))
    # dcachesize is counted from nothing; numfile needs the processes, physpages memory.
    assert rows == {"numproc": (3, 9, 1), "dcachesize": (0, 0, 0)}
    assert set(ubc.held_now(kernel, ProcessCounts())) == set(ubc.RESOURCES)
