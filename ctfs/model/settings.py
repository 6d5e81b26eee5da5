"""Changing settings: validate (done by the caller), apply, persist, undo.

Invariants:
- ctid.conf is the truth.  A change reaches the kernel first, then ctid.conf; if
  the kernel refuses it, the kernel gets the old settings back and nothing is
  saved; if saving fails, the kernel gets the old settings back too.
- Which kernel knobs a change drives is decided here, from ``apply.APPLIERS``.
- ``reconcile`` brings the kernel back to ctid.conf, for a container found running
  after a crash (a kill in the middle of a change can leave them apart).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from ctfs.errors import kernel_failed
from ctfs.model import apply
from ctfs.model.container import Container

log = logging.getLogger(__name__)


def _appliers_for(
    ct: Container, old: Mapping[str, str], new: Mapping[str, str]
) -> list[apply.Applier]:
    changed = {key for key in {*old, *new} if old.get(key) != new.get(key)}
    running = ct.init is not None
    return [a for a in apply.APPLIERS if a.keys & changed and (a.always or running)]


def _apply_all(ct: Container, appliers: list[apply.Applier], settings: Mapping[str, str]) -> None:
    for applier in appliers:
        applier.apply(ct, settings)


async def update(ct: Container, changes: dict[str, str], summary: str) -> None:
    """Change settings already validated: kernel first, then ctid.conf, all or nothing."""
    ct.refuse_while_changing()
    await _become(ct, {**ct.settings, **changes}, summary)


async def revert(ct: Container, saved: dict[str, str], why: str) -> None:
    """Put every setting back as ``saved`` had it (undo a command that failed half-way)."""
    await _become(ct, dict(saved), why)


async def _become(ct: Container, new: dict[str, str], summary: str) -> None:
    old = dict(ct.settings)
    if new == old:
        return
    appliers = _appliers_for(ct, old, new)
    if appliers:
        try:
            await trio.to_thread.run_sync(_apply_all, ct, appliers, new)
        except (OSError, ValueError) as exc:
            await _undo(ct, appliers, old)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise kernel_failed(f"the kernel refused it: {reason}") from exc
    try:
        ct.save(new)
    except OSError as exc:
        await _undo(ct, appliers, old)
        raise kernel_failed(f"cannot save ctid.conf: {exc}") from exc
    ct.events.record(summary)


async def _undo(ct: Container, appliers: list[apply.Applier], old: dict[str, str]) -> None:
    """Put the old settings back in the kernel; if even that fails, say so."""
    try:
        await trio.to_thread.run_sync(_apply_all, ct, appliers, old)
    except (OSError, ValueError) as exc:
        ct.events.record(f"could not restore the previous settings: {exc}", logging.ERROR)


def reconcile(ct: Container) -> None:
    """The kernel to ctid.conf for a running container (slow: off the trio loop)."""
    running = [a for a in apply.APPLIERS if not a.always]
    _apply_all(ct, running, ct.settings)
