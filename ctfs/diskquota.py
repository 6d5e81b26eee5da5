"""Disk quota settings (DISKSPACE, DISKINODES in ctid.conf) and the kernel limit they set.

Like ``ctfs.scheduling`` and ``ctfs.beancounters``: ``apply`` gives the private area
the hard diskspace limit of a settings mapping, so it serves a change, an undo, and
a private area made anew from another template.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ctfs.errors import CtfsError
from ctfs.kernel import quota
from ctfs.sizes import UNLIMITED, parse_pair

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


def apply(pool: Path, subvolume: Path, settings: Mapping[str, str]) -> None:
    """Give the private area the hard diskspace limit of ``settings`` (off the trio loop)."""
    quota.ensure_enabled(pool)
    quota.set_space_limit(subvolume, space_limit_bytes(settings))
