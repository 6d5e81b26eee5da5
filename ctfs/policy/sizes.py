"""vzctl's size syntax: ``10G``, ``2.5g``, ``512P``, ``unlimited``, ``soft:hard``.

Pure functions raising ``CtfsError``: EINVAL for bad syntax, ERANGE for a number
beyond ``UNLIMITED``.  Shared by every file that takes sizes (quota, limits).

A size is a decimal number, possibly with a fraction, then at most one suffix:
K, M, G, T (powers of 1024 bytes), P (pages), B (bytes), in either case.  Without a
suffix the number counts the caller's own unit (1K blocks for diskspace, bytes or
pages for beancounters).  The result is in that unit, rounded down as vzctl does
(``1500B`` is one 1K block).  ``unlimited`` is ``UNLIMITED`` (LONG_MAX, OpenVZ's
convention), and so is that number written out, which is what reads print.
"""

from __future__ import annotations

import os
from fractions import Fraction

from ctfs.errors import invalid, out_of_range

UNLIMITED = 9223372036854775807
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SUFFIX_BYTES = {
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "T": 1 << 40,
    "P": PAGE_BYTES,
    "B": 1,
}


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _decimal(number: str, word: str) -> Fraction:
    """``number`` ("12", "2.5", ".5") as an exact fraction; EINVAL otherwise."""
    whole, dot, part = number.partition(".")
    valid = (_is_digits(part) and (not whole or _is_digits(whole))) if dot else _is_digits(whole)
    if not valid:
        raise invalid(f"{word!r} is not a number; write digits, a size such as 10G, or unlimited")
    return int(whole or "0") + Fraction(int(part or "0"), 10 ** len(part))


def parse_size(text: str, default_unit_bytes: int, *, allow_suffix: bool = True) -> int:
    """One size in units of ``default_unit_bytes``; ``UNLIMITED`` for ``unlimited``.

    ``allow_suffix=False`` is for plain counts (inodes, processes): a suffix or a
    fraction is then EINVAL.
    """
    if default_unit_bytes <= 0:
        raise ValueError(f"default_unit_bytes must be positive, not {default_unit_bytes}")
    word = text
    if not word:
        raise invalid("empty value; write a number, a size such as 10G, or unlimited")
    if word.lower() == "unlimited":
        return UNLIMITED
    number, suffix = word, ""
    if word[-1].isalpha():
        number, suffix = word[:-1], word[-1].upper()
        if not allow_suffix:
            raise invalid(f"{word!r} has a suffix; a plain count is expected here")
        if suffix not in SUFFIX_BYTES:
            raise invalid(f"{word!r} has an unknown suffix {word[-1]!r}; use K, M, G, T, P or B")
        if not number:
            raise invalid(f"{word!r} has a suffix but no number before it")
    amount = _decimal(number, word)
    if not allow_suffix and amount.denominator != 1:
        raise invalid(f"{word!r} is not a whole number; a plain count is expected here")
    if suffix:
        amount = amount * SUFFIX_BYTES[suffix] / default_unit_bytes
    value = int(amount)  # rounds down, as vzctl does
    if value > UNLIMITED:
        raise out_of_range(f"{word!r} is beyond {UNLIMITED}, the largest value (unlimited)")
    return value


def parse_pair(
    text: str,
    default_unit_bytes: int,
    allow_suffix: bool = True,
    names: tuple[str, str] = ("barrier", "limit"),
) -> tuple[int, int]:
    """``first:second``, or one value for both; the first may not exceed the second.

    ``names`` say what the two values are in the error sentence, e.g.
    ``("soft limit", "hard limit")``.
    """
    parts = text.split(":")
    if len(parts) > 2:
        raise invalid(
            f"{text!r} has {len(parts) - 1} colons; write one value or {names[0]}:{names[1]}"
        )
    first = parse_size(parts[0], default_unit_bytes, allow_suffix=allow_suffix)
    second = (
        parse_size(parts[1], default_unit_bytes, allow_suffix=allow_suffix)
        if len(parts) == 2
        else first
    )
    if first > second:
        raise invalid(f"the {names[0]} {first} is above the {names[1]} {second}")
    return first, second
