"""The quota file's command syntax (pure)."""

from __future__ import annotations

import errno

import pytest

from ctfs.errors import CtfsError
from ctfs.policy.quota import parse_command

UNLIMITED = 9223372036854775807


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("diskspace 10M:12M", {"DISKSPACE": "10240:12288"}),
        ("DISKSPACE 1g", {"DISKSPACE": "1048576:1048576"}),
        ("diskinodes 100:unlimited", {"DISKINODES": f"100:{UNLIMITED}"}),
        ("\ndiskspace 2048B\n\ndiskinodes 7\n", {"DISKSPACE": "2:2", "DISKINODES": "7:7"}),
    ],
)
def test_a_command_becomes_ctid_conf_values(text: str, expected: dict[str, str]) -> None:
    assert parse_command(text) == expected


def test_a_diskspace_btrfs_cannot_hold_is_erange() -> None:
    with pytest.raises(CtfsError) as caught:
        parse_command(f"diskspace {UNLIMITED - 1}")
    assert caught.value.errno_value == errno.ERANGE
