"""A container handed to a peer that never confirmed it runs there.

At the hand-over (``ctfs.model.migration``) the source writes ``HANDED_TO=PEER``
into ctid.conf.  Invariant: while it is there, the container is not restored
here unless that peer says it has no container of that CTID; it goes when the
peer's restore failed (its copy removed), or when the copy here is discarded.
"""

from __future__ import annotations

import errno

import trio

from ctfs.errors import CtfsError, busy
from ctfs.kernel.api import PeerLinkError
from ctfs.model.container import Container
from ctfs.model.peer_service import PeerService

HANDED_TO = "HANDED_TO"
_LINK_ERRORS = (PeerLinkError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


async def confirm_not_there(ct: Container, service: PeerService) -> None:
    """Before a container handed to a peer that never confirmed is restored here:
    ask the peer.  CtfsError (nothing changed) if it has it, or cannot be asked;
    the mark goes if it has not."""
    name = ct.settings[HANDED_TO]
    peer = service.book.find(name)
    if peer is None:
        raise busy(
            f"it was handed to {name}, which did not confirm and is no peer now; "
            f"remove {HANDED_TO} from ctid.conf to restore it here anyway"
        )
    stream = await service.connect(peer)
    try:
        async with stream:
            await ct.backends.peer_links.send(stream, {"op": "has", "ctid": ct.ctid})
            reply = await ct.backends.peer_links.receive(stream)
    except _LINK_ERRORS as exc:
        raise CtfsError(errno.EHOSTUNREACH, f"cannot ask {name} whether it has it: {exc}") from exc
    there = reply.get("state")
    if there is not None:
        raise CtfsError(
            errno.EEXIST,
            f"it is {there} on {name}, which took it over; write stopped to discard this copy",
        )
    await trio.to_thread.run_sync(forget, ct)
    ct.events.record(f"migration: {name} does not have it; it may be restored here")


def forget(ct: Container) -> None:
    if HANDED_TO in ct.settings:
        ct.save({k: v for k, v in ct.settings.items() if k != HANDED_TO})
