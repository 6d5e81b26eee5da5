"""A container's user id range: which host ids its ids 0..65535 are.

A private range is ``ID_RANGE="BASE:65536"`` in ctid.conf: ids 0..65535 inside are
host ids BASE..BASE+65535, so the container's root is an unprivileged host user.
Ranges are 65536-aligned slots from 2^30 up, far above the ids of host users and
of the ranges /etc/subuid usually hands out (100000 + n x 65536); no two
containers share a slot.  A container takes the slot its CTID names when it is
free (``preferred_base``), so the same CTID has the same range on every host and
a migration finds it free there.  ``ID_RANGE="host"`` (and no ID_RANGE at all) is a
privileged container: its ids are the host's.  Pure: no kernel here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ctfs.errors import invalid

SIZE = 65536
FIRST_BASE = 1 << 30
LAST_BASE = (1 << 31) - SIZE
KEY = "ID_RANGE"
HOST = "host"
PRIVATE = "private"
# What /proc/PID/uid_map shows for the host's own ids.
HOST_MAP = "0 0 4294967295\n"


def base_of(settings: Mapping[str, str]) -> int | None:
    """The first host id of the container's private range; None for host ids."""
    value = settings.get(KEY, HOST)
    if value == HOST:
        return None
    base, _, size = value.partition(":")
    if not (base.isdigit() and size == str(SIZE)):
        return None
    number = int(base)
    if number % SIZE or not FIRST_BASE <= number <= LAST_BASE:
        return None
    return number


def setting(base: int) -> str:
    return f"{base}:{SIZE}"


def render(settings: Mapping[str, str]) -> str:
    """The ``idmap`` file: one line in /proc/PID/uid_map's format."""
    base = base_of(settings)
    return HOST_MAP if base is None else f"0 {base} {SIZE}\n"


def parse_mode(text: str) -> str:
    """A write to ``idmap``: ``private`` or ``host``."""
    word = text.strip().lower()
    if word not in (PRIVATE, HOST):
        raise invalid(f"write {PRIVATE} (its own unprivileged id range) or {HOST} (not safe)")
    return word


SLOTS = (LAST_BASE - FIRST_BASE) // SIZE + 1


def preferred_base(ctid: int) -> int:
    """The slot container ``ctid`` takes when it is free: the same on every host,
    so a container moved to another host keeps its range there (its files are
    owned by those ids) unless a container of another CTID took it."""
    return FIRST_BASE + (ctid % SLOTS) * SIZE


def free_base(taken: Iterable[int], ctid: int | None = None) -> int:
    """Container ``ctid``'s preferred slot if no container holds it, else the
    lowest slot none holds."""
    used = set(taken)
    if ctid is not None and preferred_base(ctid) not in used:
        return preferred_base(ctid)
    for base in range(FIRST_BASE, LAST_BASE + 1, SIZE):
        if base not in used:
            return base
    raise invalid("every private id range is taken")
