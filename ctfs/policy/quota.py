"""OpenVZ's first-level disk quota: diskspace and diskinodes, their syntax and levels.

Settings DISKSPACE and DISKINODES in ctid.conf hold ``soft:hard`` (1K blocks and
inodes).  Only the diskspace hard limit is enforced (by the kernel, on the private
area); the rest is reported.  Pure: no kernel here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from ctfs.errors import CtfsError, invalid, out_of_range
from ctfs.policy.sizes import UNLIMITED, parse_pair

log = logging.getLogger(__name__)

KIB = 1024
# btrfs limits are bytes in a u64; ctfs keeps them within LONG_MAX bytes (8 EiB).
MAX_SPACE_BLOCKS = UNLIMITED // KIB


@dataclass(frozen=True)
class Resource:
    name: str  # as written and read in the file
    key: str  # in ctid.conf
    unit_bytes: int  # what a number without suffix counts
    allow_suffix: bool
    unit: str  # for sentences


SPACE = Resource("diskspace", "DISKSPACE", KIB, True, "1K blocks")
INODES = Resource("diskinodes", "DISKINODES", 1, False, "inodes")
RESOURCES = {r.name: r for r in (SPACE, INODES)}


def limits_in(settings: Mapping[str, str], resource: Resource) -> tuple[int, int]:
    """(soft, hard) as saved in ctid.conf; unlimited when unset or unreadable."""
    saved = settings.get(resource.key)
    if saved is None:
        return UNLIMITED, UNLIMITED
    try:
        return parse_pair(saved, resource.unit_bytes, resource.allow_suffix)
    except CtfsError as exc:
        log.warning("ignoring %s=%r in ctid.conf: %s", resource.key, saved, exc.sentence)
        return UNLIMITED, UNLIMITED


def space_limit_bytes(settings: Mapping[str, str]) -> int | None:
    _soft, hard = limits_in(settings, SPACE)
    return None if hard > MAX_SPACE_BLOCKS else hard * KIB


USAGE = "write 'diskspace SOFT:HARD' or 'diskinodes SOFT:HARD', one per line"


def parse_command(text: str) -> dict[str, str]:
    """A write to ``quota`` as ctid.conf changes, e.g. ``{"DISKSPACE": "10240:11264"}``."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        raise invalid(f"empty value; {USAGE}")
    changes: dict[str, str] = {}
    for words in lines:
        resource = RESOURCES.get(words[0].lower())
        if resource is None:
            raise invalid(f"unknown keyword {words[0]!r}; {USAGE}")
        if len(words) != 2:
            raise invalid(
                f"{resource.name} takes one value, SOFT:HARD or one for both; got {len(words) - 1}"
            )
        if resource.key in changes:
            raise invalid(f"{resource.name} is given twice")
        try:
            soft, hard = parse_pair(
                words[1],
                resource.unit_bytes,
                resource.allow_suffix,
                names=("soft limit", "hard limit"),
            )
        except CtfsError as exc:
            raise CtfsError(exc.errno_value, f"{resource.name}: {exc.sentence}") from None
        if resource is SPACE and MAX_SPACE_BLOCKS < hard < UNLIMITED:
            raise out_of_range(
                f"diskspace: {hard} 1K blocks is beyond what btrfs can limit "
                f"(at most {MAX_SPACE_BLOCKS}, 8 EiB); write unlimited"
            )
        changes[resource.key] = f"{soft}:{hard}"
    return changes


def shown(value: int) -> str:
    return "unlimited" if value == UNLIMITED else str(value)


def describe_change(old: Mapping[str, str], changes: Mapping[str, str]) -> str:
    """``diskspace 1:2 -> 3:4`` for each resource ``changes`` sets, for events."""
    described = []
    for resource in (SPACE, INODES):
        if resource.key in changes:
            before = ":".join(map(shown, limits_in(old, resource)))
            after = ":".join(map(shown, limits_in(changes, resource)))
            described.append(f"{resource.name} {before} -> {after}")
    return ", ".join(described)


# Levels of usage against a soft:hard pair.
WITHIN, ABOVE_SOFT, ABOVE_HARD = 0, 1, 2


def level(used: int, soft: int, hard: int) -> int:
    return ABOVE_HARD if used > hard else ABOVE_SOFT if used > soft else WITHIN


def crossing_sentence(
    resource: Resource, used: int, soft: int, hard: int, before: int, now: int
) -> str:
    """What ``events`` says when usage moved from level ``before`` to ``now``."""
    what = f"quota: {resource.name} usage {used} {resource.unit}"
    if now == ABOVE_HARD:
        consequence = (
            "writes fail with EDQUOT" if resource is SPACE else "reported only, not enforced"
        )
        return f"{what} is above the hard limit {hard}; {consequence}"
    if now == ABOVE_SOFT and before == WITHIN:
        return f"{what} is above the soft limit {soft}; reported only, not enforced"
    if now == ABOVE_SOFT:
        return f"{what} is back under the hard limit {hard}"
    return f"{what} is back within its limits ({shown(soft)}:{shown(hard)})"
