"""The ``quota`` file: OpenVZ's first-level disk quota, diskspace and diskinodes.

Read, one line each: the name, usage, soft limit, hard limit; diskspace in 1K
blocks, diskinodes in inodes, 9223372036854775807 for unlimited::

    diskspace 10240 10485760 11534336
    diskinodes 312 200000 220000

Write ``diskspace SOFT:HARD`` and/or ``diskinodes SOFT:HARD`` (vzctl's value
syntax, see ``ctfs.sizes``), one per line; every line is applied or none.

Who enforces what:
- diskspace usage is the btrfs qgroup's *referenced* bytes of the private area:
  every extent its files use, shared with the template or not.  That is what the
  container sees of its own files, and it is what the qgroup limit counts.
- the diskspace hard limit is that qgroup's referenced limit, so btrfs itself
  refuses writes past it with EDQUOT.  It lives on the subvolume, so it holds
  whether the container runs or not, and is shown as the kernel has it.
- the diskspace soft limit and both diskinodes limits are reported only (btrfs
  has neither soft nor inode limits); inodes are counted by walking the private
  area at each read.  Usage found above a limit is noted in ``events`` once per
  crossing, and once more when it is back within.
"""

from __future__ import annotations

import functools
import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ctfs import diskquota
from ctfs.diskquota import INODES, KIB, MAX_SPACE_BLOCKS, RESOURCES, SPACE, Resource, limits_in
from ctfs.errors import CtfsError, invalid, kernel_failed, out_of_range
from ctfs.files.base import ContainerFile
from ctfs.kernel import quota
from ctfs.sizes import UNLIMITED, parse_pair

if TYPE_CHECKING:
    from ctfs.container import Container

log = logging.getLogger(__name__)

USAGE = "write 'diskspace SOFT:HARD' or 'diskinodes SOFT:HARD', one per line"

# The level each container's usage was last seen at, per resource: 0 within its
# limits, 1 above the soft limit, 2 above the hard limit.  Kept only while ctfsd
# runs; a forgotten container's entry goes with it.
_last_level: weakref.WeakKeyDictionary[Container, dict[str, int]] = weakref.WeakKeyDictionary()


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


def _shown(value: int) -> str:
    return "unlimited" if value == UNLIMITED else str(value)


def _measure(pool: Path, subvolume: Path) -> tuple[quota.SpaceUsage, int]:
    quota.ensure_enabled(pool)
    return quota.space_usage(subvolume), quota.count_inodes(subvolume)


async def _quota(ct: Container) -> str:
    try:
        usage, inodes = await trio.to_thread.run_sync(_measure, ct.host.state_dir, ct.root)
    except OSError as exc:
        raise kernel_failed(f"cannot read the disk quota: {exc}") from exc
    space_used = -(-usage.referenced // KIB)
    space_soft, _saved_hard = limits_in(ct.settings, SPACE)
    space_hard = UNLIMITED if usage.limit is None else min(usage.limit // KIB, UNLIMITED)
    inode_soft, inode_hard = limits_in(ct.settings, INODES)
    _note_crossing(ct, SPACE, space_used, space_soft, space_hard)
    _note_crossing(ct, INODES, inodes, inode_soft, inode_hard)
    return (
        f"diskspace {space_used} {space_soft} {space_hard}\n"
        f"diskinodes {inodes} {inode_soft} {inode_hard}\n"
    )


def _note_crossing(ct: Container, resource: Resource, used: int, soft: int, hard: int) -> None:
    """Record in ``events`` when usage went above a limit, or back within, since last seen."""
    level = 2 if used > hard else 1 if used > soft else 0
    levels = _last_level.setdefault(ct, {})
    before = levels.get(resource.name, 0)
    levels[resource.name] = level
    if level == before:
        return
    what = f"quota: {resource.name} usage {used} {resource.unit}"
    if level == 2:
        consequence = (
            "writes fail with EDQUOT" if resource is SPACE else "reported only, not enforced"
        )
        ct.events.record(f"{what} is above the hard limit {hard}; {consequence}", logging.WARNING)
    elif level == 1 and before == 0:
        ct.events.record(
            f"{what} is above the soft limit {soft}; reported only, not enforced", logging.WARNING
        )
    elif level == 1:
        ct.events.record(f"{what} is back under the hard limit {hard}")
    else:
        ct.events.record(f"{what} is back within its limits ({_shown(soft)}:{_shown(hard)})")


async def _set_quota(ct: Container, text: str) -> None:
    changes = parse_command(text)
    described = []
    for resource in (SPACE, INODES):
        if resource.key in changes:
            old = ":".join(map(_shown, limits_in(ct.settings, resource)))
            new = ":".join(map(_shown, limits_in(changes, resource)))
            described.append(f"{resource.name} {old} -> {new}")
    enforce = None
    if SPACE.key in changes:
        enforce = functools.partial(diskquota.apply, ct.host.state_dir, ct.root)
    # The limit lives on the subvolume: it applies whether the container runs or not.
    await ct.update_settings(changes, "quota: " + ", ".join(described), enforce, always=True)


FILES = (ContainerFile("quota", _quota, _set_quota),)
