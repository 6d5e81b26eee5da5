"""Writes to ``state`` and ``template``: which transition a request is, through the one guard."""

from __future__ import annotations

from pathlib import Path

import trio

from ctfs.errors import busy, invalid, not_found, not_permitted
from ctfs.model import checkpoint, handover, lifecycle, settings
from ctfs.model.container import Container, State
from ctfs.policy import idmap, quota

REQUESTABLE = (State.RUNNING, State.STOPPED, State.FROZEN)


async def request(ct: Container, word: str) -> None:
    """Carry out a write to ``state``; returns once the new state is reached."""
    if word not in REQUESTABLE:
        if ct.ctx.migrate is None:
            raise invalid(f"unknown state {word!r}; write running, stopped or frozen")
        await ct.ctx.migrate(ct, word)  # a peer's name: the container moves there
        return
    ct.refuse_while_changing()
    current = ct.state
    if word == current:
        return
    if word == State.RUNNING:
        if current is State.FROZEN and handover.HANDED_TO in ct.settings:
            await _confirm_not_handed_over(ct)
        during, action = (
            (State.RESTORING, checkpoint.restore)
            if current is State.FROZEN
            else (State.STARTING, lifecycle.start)
        )
    elif word == State.STOPPED:
        during, action = (
            (State.STOPPING, checkpoint.discard)
            if current is State.FROZEN
            else (State.STOPPING, lifecycle.stop)
        )
    elif current is State.STOPPED:
        raise invalid("only a running container can be frozen")
    else:
        during, action = State.FREEZING, checkpoint.freeze
    async with ct.changing(during):
        await action(ct)
    if current is State.FROZEN and word == State.STOPPED:
        await trio.to_thread.run_sync(handover.forget, ct)  # no copy here now


async def _confirm_not_handed_over(ct: Container) -> None:
    """A container handed to a peer that did not confirm: restored here only once
    that peer says it has no such container (see ctfs.model.handover)."""
    if ct.ctx.confirm_not_there is None:
        raise busy(
            f"it was handed to {ct.settings[handover.HANDED_TO]}, and this ctfsd has no "
            "peers to ask whether it runs there"
        )
    await ct.ctx.confirm_not_there(ct)


async def set_template(ct: Container, name: str) -> None:
    """Make the private area anew from template ``name``: only before the first start."""
    if name == ct.template_name:
        return
    if ct.ever_started:
        raise not_permitted("the template can be changed only before the first start")
    if ct.state is not State.STOPPED:
        raise busy(f"the container is {ct.state.value}")
    template = ct.backends.templates.get(name)
    if template is None:
        raise not_found(f"template {name!r} is not installed")
    # Reads stay "stopped" while the private area is swapped; a start meanwhile is EBUSY.
    async with ct.changing(State.STOPPED):
        await trio.to_thread.run_sync(_swap_private_area, ct, template.root, name)
    ct.events.record(f"template: {name} (private area recreated)")


def _swap_private_area(ct: Container, template_root: Path, name: str) -> None:
    storage = ct.backends.storage
    fresh, old = ct.dir / ".root.new", ct.dir / ".root.old"
    storage.delete(fresh)
    storage.snapshot(template_root, fresh)
    if quota.SPACE.key in ct.settings:
        # A new subvolume has a new quota group: give it the saved limit.
        ct.backends.quota.set_space_limit(fresh, quota.space_limit_bytes(ct.settings))
    ct.root.rename(old)
    fresh.rename(ct.root)
    try:
        ct.persist(OSTEMPLATE=name)
    except OSError:
        ct.root.rename(fresh)
        old.rename(ct.root)
        storage.delete(fresh)
        raise
    storage.delete(old)


async def set_id_range(ct: Container, mode: str) -> None:
    """``private``: its own unprivileged id range from the next start; ``host``: none."""
    if ct.state is not State.STOPPED:
        raise busy(f"the container is {ct.state.value}; its ids change only while it is stopped")
    current = idmap.base_of(ct.settings)
    if mode == idmap.PRIVATE:
        if current is not None:
            return
        value = idmap.setting(idmap.free_base(ct.ctx.id_bases_taken(), ct.ctid))
    else:
        if current is None:
            return
        value = idmap.HOST
    await settings.update(ct, {idmap.KEY: value}, f"idmap: {mode} ({value})")
