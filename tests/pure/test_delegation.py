"""Which files a container may write from inside (ctfs.policy.delegation)."""

from __future__ import annotations

import errno

import pytest

from ctfs.errors import CtfsError
from ctfs.policy import delegation


def test_names_are_kept_sorted_and_once() -> None:
    assert delegation.parse("nameserver hostname hostname") == "hostname nameserver"


@pytest.mark.parametrize("text", ["", "none", " \n"])
def test_nothing_or_none_delegates_nothing(text: str) -> None:
    assert delegation.parse(text) == ""


@pytest.mark.parametrize("name", ["state", "limits", "ip", "delegated", "cpuunits"])
def test_files_that_reach_beyond_the_container_are_refused(name: str) -> None:
    with pytest.raises(CtfsError) as refused:
        delegation.parse(name)
    assert refused.value.errno_value == errno.EINVAL


def test_an_unknown_name_in_ctid_conf_delegates_nothing() -> None:
    assert delegation.delegated({"DELEGATED": "hostname state"}) == {"hostname"}
