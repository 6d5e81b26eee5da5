"""vzctl's size syntax (ctfs.sizes): pure parsing, no kernel."""

from __future__ import annotations

import errno

import pytest

from ctfs.errors import CtfsError
from ctfs.policy.sizes import PAGE_BYTES, UNLIMITED, parse_pair, parse_size

KIB = 1024


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [
        ("0", KIB, 0),
        ("10240", KIB, 10240),  # no suffix: the caller's unit
        ("10240", 1, 10240),
        ("1K", KIB, 1),
        ("1k", KIB, 1),
        ("10M", KIB, 10240),
        ("10m", 1, 10 << 20),
        ("2G", KIB, 2 << 20),
        ("1T", KIB, 1 << 30),
        ("1t", 1, 1 << 40),
        ("2048B", KIB, 2),
        ("2048b", 1, 2048),
        ("3P", 1, 3 * PAGE_BYTES),
        ("4p", PAGE_BYTES, 4),
        ("8K", PAGE_BYTES, 8 * KIB // PAGE_BYTES),
    ],
)
def test_suffixes_are_powers_of_1024_pages_or_bytes(text: str, unit: int, expected: int) -> None:
    assert parse_size(text, unit) == expected


def test_pages_are_4096_bytes_here() -> None:
    assert PAGE_BYTES == 4096


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [
        ("2.5G", KIB, 2621440),
        ("2.5g", 1, 2684354560),
        ("0.5K", 1, 512),
        (".5M", KIB, 512),
        ("1.5", KIB, 1),  # fractions of the unit itself round down
    ],
)
def test_fractions_are_exact_and_round_down(text: str, unit: int, expected: int) -> None:
    assert parse_size(text, unit) == expected


def test_a_size_below_one_unit_rounds_down_as_vzctl_does() -> None:
    assert parse_size("1500B", KIB) == 1
    assert parse_size("1023B", KIB) == 0


@pytest.mark.parametrize("text", ["unlimited", "UNLIMITED", "Unlimited", str(UNLIMITED)])
def test_unlimited_is_long_max(text: str) -> None:
    assert parse_size(text, KIB) == UNLIMITED
    assert UNLIMITED == 2**63 - 1


def test_long_max_with_a_suffix_that_keeps_it_in_range_is_unlimited() -> None:
    assert parse_size(f"{UNLIMITED}K", KIB) == UNLIMITED


def _errno_of(text: str, unit: int = KIB, allow_suffix: bool = True) -> tuple[int, str]:
    with pytest.raises(CtfsError) as caught:
        parse_size(text, unit, allow_suffix=allow_suffix)
    return caught.value.errno_value, caught.value.sentence


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty value"),
        ("10X", "unknown suffix 'X'"),
        ("10KB", "not a number"),
        ("K", "no number"),
        ("-1", "not a number"),
        ("+1", "not a number"),
        ("1e3", "not a number"),
        ("1.", "not a number"),
        (".", "not a number"),
        ("1.2.3", "not a number"),
        ("1,5G", "not a number"),
        ("١٢", "not a number"),  # Arabic-Indic digits are digits to Python, not to us
        ("0x10", "not a number"),
        ("ten", "unknown suffix"),
        ("unlimitedK", "not a number"),
    ],
)
def test_bad_syntax_is_einval_with_a_sentence(text: str, words: str) -> None:
    number, sentence = _errno_of(text)
    assert number == errno.EINVAL
    assert words in sentence


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        (str(UNLIMITED + 1), KIB),
        ("99999999999999999999999", 1),
        (f"{UNLIMITED}K", 1),  # in range as written, beyond it in bytes
        ("9000000000T", 1),
    ],
)
def test_a_number_beyond_long_max_is_erange(text: str, unit: int) -> None:
    number, sentence = _errno_of(text, unit)
    assert number == errno.ERANGE
    assert str(UNLIMITED) in sentence


@pytest.mark.parametrize("text", ["10K", "1k", "2.5", "1B"])
def test_plain_counts_take_no_suffix_and_no_fraction(text: str) -> None:
    number, sentence = _errno_of(text, 1, allow_suffix=False)
    assert number == errno.EINVAL
    assert "plain count" in sentence


def test_plain_counts_take_unlimited() -> None:
    assert parse_size("unlimited", 1, allow_suffix=False) == UNLIMITED
    assert parse_size("200000", 1, allow_suffix=False) == 200000


def test_a_pair_is_soft_colon_hard() -> None:
    assert parse_pair("10M:11M", KIB) == (10240, 11264)
    assert parse_pair("1G:unlimited", KIB) == (1 << 20, UNLIMITED)
    assert parse_pair("100:200", 1, allow_suffix=False) == (100, 200)


def test_a_single_value_sets_both() -> None:
    assert parse_pair("10M", KIB) == (10240, 10240)
    assert parse_pair("unlimited", KIB) == (UNLIMITED, UNLIMITED)


def test_equal_soft_and_hard_are_fine() -> None:
    assert parse_pair("5:5", 1) == (5, 5)


def test_soft_above_hard_is_einval_naming_both() -> None:
    with pytest.raises(CtfsError) as caught:
        parse_pair("20M:10M", KIB, names=("soft limit", "hard limit"))
    assert caught.value.errno_value == errno.EINVAL
    assert caught.value.sentence == "the soft limit 20480 is above the hard limit 10240"


@pytest.mark.parametrize("text", ["1:2:3", ":5", "5:", ":", "5 :6"])
def test_a_malformed_pair_is_einval(text: str) -> None:
    with pytest.raises(CtfsError) as caught:
        parse_pair(text, 1)
    assert caught.value.errno_value == errno.EINVAL


def test_a_pair_beyond_long_max_is_erange() -> None:
    with pytest.raises(CtfsError) as caught:
        parse_pair(f"1:{UNLIMITED + 1}", 1)
    assert caught.value.errno_value == errno.ERANGE


def test_a_pair_without_suffixes_refuses_one_on_either_side() -> None:
    with pytest.raises(CtfsError) as caught:
        parse_pair("100:2K", 1, allow_suffix=False)
    assert caught.value.errno_value == errno.EINVAL
