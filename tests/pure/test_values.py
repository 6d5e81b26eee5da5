"""Pure parsers: CTIDs, host names, written commands and how values are quoted."""

from __future__ import annotations

import errno

import pytest

from ctfs.errors import CtfsError
from ctfs.policy.values import command_text, parse_ctid, parse_hostname, shown


@pytest.mark.parametrize("name,ctid", [("1", 1), ("101", 101), ("2147483644", 2147483644)])
def test_ctid_accepts_decimal_numbers_in_range(name: str, ctid: int) -> None:
    assert parse_ctid(name) == ctid


@pytest.mark.parametrize(
    "name", ["0", "0101", "2147483645", "-1", "1a", "", " 1", "templates", "\u0661\u0660\u0661"]
)
def test_ctid_rejects_everything_else(name: str) -> None:
    assert parse_ctid(name) is None


def test_command_text_strips_surrounding_white_space() -> None:
    assert command_text(b"  running \n") == "running"


def test_command_text_refuses_non_utf8() -> None:
    with pytest.raises(CtfsError) as info:
        command_text(b"\xff\xfe")
    assert info.value.errno_value == errno.EINVAL


def test_command_text_refuses_nul() -> None:
    with pytest.raises(CtfsError):
        command_text(b"run\0ning")


def test_command_text_refuses_more_than_a_page() -> None:
    with pytest.raises(CtfsError) as info:
        command_text(b"a" * 4097)
    assert "too long" in info.value.sentence


@pytest.mark.parametrize("name", ["ct101", "web-1.example.com", "a", "x" * 63])
def test_hostname_accepts_rfc1123_names(name: str) -> None:
    assert parse_hostname(name) == name


@pytest.mark.parametrize(
    "name", ["", "-lead", "trail-", "under_score", "a..b", "x" * 65, "two words"]
)
def test_hostname_rejects_invalid_names(name: str) -> None:
    with pytest.raises(CtfsError) as info:
        parse_hostname(name)
    assert info.value.errno_value == errno.EINVAL


def test_shown_escapes_control_bytes_once() -> None:
    assert shown(b"\xff\x01a") == "\\xff\\x01a"


def test_shown_truncates_long_values_and_says_how_long() -> None:
    text = shown(b"a" * 1000)
    assert text.startswith("a" * 64) and "1000 bytes" in text
