"""The quick command-line form of ctfs exec, read without argparse (pure)."""

from __future__ import annotations

import pytest

from ctfs.cli import quick_exec


def test_quick_exec_reads_ctid_and_command() -> None:
    assert quick_exec(["exec", "101", "--", "ps", "-ef"]) == ("/ctfs", "101", ["ps", "-ef"])


@pytest.mark.parametrize("prefix", [["--mount", "/m"], ["-m", "/m"], ["--mount=/m"]])
def test_quick_exec_reads_the_mount_option(prefix: list[str]) -> None:
    assert quick_exec([*prefix, "exec", "7", "--", "true"]) == ("/m", "7", ["true"])


def test_quick_exec_takes_the_mount_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTFS_MOUNT", "/srv/ctfs")
    assert quick_exec(["exec", "1", "--", "true"]) == ("/srv/ctfs", "1", ["true"])


@pytest.mark.parametrize(
    "argv",
    [["list"], ["exec", "101", "true"], ["exec", "101", "--"], ["--help"], ["enter", "101"], []],
)
def test_everything_else_goes_to_argparse(argv: list[str]) -> None:
    assert quick_exec(argv) is None
