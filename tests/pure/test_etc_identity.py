"""/etc/hostname and /etc/machine-id as ctfs renders them."""

from __future__ import annotations

import pytest

from ctfs.policy.etc_identity import is_machine_id, render_hostname, render_machine_id

FRESH = "0123456789abcdef0123456789abcdef"


def test_hostname_file_holds_the_hostname_whatever_was_there() -> None:
    assert render_hostname("template-host\n", "ct101") == "ct101\n"


def test_a_container_keeps_its_machine_id() -> None:
    own = "fedcba9876543210fedcba9876543210\n"
    assert render_machine_id(own, FRESH) == own


@pytest.mark.parametrize(
    "old", ["", "\n", "uninitialized\n", "0" * 32 + "\n", "FEDCBA9876543210FEDCBA9876543210", "abc"]
)
def test_an_empty_or_invalid_machine_id_is_replaced_by_a_fresh_one(old: str) -> None:
    assert not is_machine_id(old)
    assert render_machine_id(old, FRESH) == FRESH + "\n"
