"""Template halt signals: every name, number and real-time form; nothing guessed."""

from __future__ import annotations

import signal

import pytest

from ctfs.policy.signals import parse_halt_signal, parse_signal, signal_name


@pytest.mark.parametrize(
    "text,number",
    [
        ("USR1", signal.SIGUSR1),
        ("SIGPWR", signal.SIGPWR),
        ("sigterm", signal.SIGTERM),
        (" PWR\n", signal.SIGPWR),
        ("10", 10),
        ("SIGRTMIN", signal.SIGRTMIN),
        ("SIGRTMIN+3", signal.SIGRTMIN + 3),
        ("rtmin+4", signal.SIGRTMIN + 4),
        ("SIGRTMAX-2", signal.SIGRTMAX - 2),
        ("SIGRTMAX", signal.SIGRTMAX),
    ],
)
def test_a_signal_is_read_by_name_number_or_real_time_offset(text: str, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize(
    "text", ["", "SIGFOO", "PW R", "0", "65", "SIGRTMIN+", "SIGRTMIN+x", "RTMIN+40", "RTMAX-40"]
)
def test_an_unknown_or_out_of_range_signal_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_signal(text)


@pytest.mark.parametrize("text", ["KILL", "SIGSTOP", "9", "19"])
def test_kill_and_stop_cannot_be_halt_signals(text: str) -> None:
    with pytest.raises(ValueError, match="cannot be a halt signal"):
        parse_halt_signal(text)


@pytest.mark.parametrize(
    "number,name",
    [
        (signal.SIGUSR1, "SIGUSR1"),
        (signal.SIGRTMIN, "SIGRTMIN"),
        (signal.SIGRTMIN + 4, "SIGRTMIN+4"),
        (signal.SIGPWR, "SIGPWR"),
    ],
)
def test_a_signal_number_is_named_as_templates_write_it(number: int, name: str) -> None:
    assert signal_name(number) == name
    assert parse_signal(name) == number
