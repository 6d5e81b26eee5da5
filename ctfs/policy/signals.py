"""Signal names as templates write them: ``USR1``, ``SIGPWR``, ``SIGRTMIN+4``, ``37``.

Pure functions.  A template's halt signal is parsed once, when the template is
imported, so an unknown name is refused there and never replaced by a guess.
"""

from __future__ import annotations

import signal

# What a halt signal cannot be: KILL and STOP cannot be caught, so init cannot
# shut anything down gracefully on them (stopping sends SIGKILL after the timeout
# anyway).
NOT_HALT = {int(signal.SIGKILL): "SIGKILL", int(signal.SIGSTOP): "SIGSTOP"}


def parse_signal(text: str) -> int:
    """The number of a signal written as a name, ``SIGRTMIN+N``/``SIGRTMAX-N`` or a number.

    Case and the ``SIG`` prefix are optional.  Raises ValueError with a sentence.
    """
    word = text.strip().upper()
    if not word:
        raise ValueError("no signal given")
    number = int(word) if word.isdigit() else _by_name(word.removeprefix("SIG"))
    if not 1 <= number <= signal.SIGRTMAX:
        raise ValueError(f"signal {text.strip()!r} is out of range (1..{int(signal.SIGRTMAX)})")
    return number


def parse_halt_signal(text: str) -> int:
    """A signal init can act on: as ``parse_signal``, without KILL and STOP."""
    number = parse_signal(text)
    if number in NOT_HALT:
        raise ValueError(f"{NOT_HALT[number]} cannot be a halt signal: init cannot catch it")
    return number


def signal_name(number: int) -> str:
    """``SIGUSR1``, ``SIGRTMIN+4``: the name a signal number is written as."""
    if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
        offset = number - signal.SIGRTMIN
        return "SIGRTMIN" if offset == 0 else f"SIGRTMIN+{offset}"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _by_name(name: str) -> int:
    for base, sign in (("RTMIN", 1), ("RTMAX", -1)):
        if name == base:
            return int(getattr(signal, f"SIG{base}"))
        operator = "+" if sign > 0 else "-"
        if name.startswith(base + operator):
            offset = name[len(base) + 1 :]
            if not offset.isdigit():
                raise ValueError(f"bad real-time signal {name!r}: SIG{base}{operator}N wanted")
            number = int(getattr(signal, f"SIG{base}")) + sign * int(offset)
            if not signal.SIGRTMIN <= number <= signal.SIGRTMAX:
                raise ValueError(f"{name!r} is not a real-time signal here")
            return number
    member = signal.Signals.__members__.get(f"SIG{name}")
    if member is None or name.startswith(("RTMIN", "RTMAX")):
        raise ValueError(f"unknown signal {name!r}")
    return int(member)
