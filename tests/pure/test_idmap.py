"""Private id ranges: which slot a container gets (ctfs.policy.idmap)."""

from __future__ import annotations

import pytest

from ctfs.errors import CtfsError
from ctfs.policy.idmap import FIRST_BASE, LAST_BASE, SIZE, SLOTS, free_base, preferred_base


def test_a_container_gets_the_slot_its_ctid_names() -> None:
    assert free_base(set(), 101) == FIRST_BASE + 101 * SIZE


def test_the_same_ctid_gets_the_same_range_on_another_host() -> None:
    here = free_base({FIRST_BASE}, 4101)
    there = free_base({FIRST_BASE + SIZE, FIRST_BASE + 7 * SIZE}, 4101)
    assert here == there == preferred_base(4101)


def test_a_taken_slot_gives_the_lowest_free_one() -> None:
    taken = {preferred_base(101), FIRST_BASE}
    assert free_base(taken, 101) == FIRST_BASE + SIZE


def test_every_preferred_slot_is_a_valid_range() -> None:
    for ctid in (0, 1, SLOTS - 1, SLOTS, 2**31 - 1):
        base = preferred_base(ctid)
        assert FIRST_BASE <= base <= LAST_BASE and base % SIZE == 0


def test_no_free_slot_is_einval() -> None:
    with pytest.raises(CtfsError):
        free_base(range(FIRST_BASE, LAST_BASE + 1, SIZE), 5)
