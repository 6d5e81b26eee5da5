"""What every container shares with the host that holds it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ctfs.kernel.api import Backends, IPAddress


@dataclass
class Context:
    """The host's backends, options and coordination points, as containers see them.

    ``nursery`` is set once the host starts serving; per-container background
    tasks (init watchers) run there.
    """

    backends: Backends
    state_dir: Path
    stop_timeout: float
    address_owner: Callable[[IPAddress], int | None]
    # The first host ids of every private id range containers hold.
    id_bases_taken: Callable[[], set[int]]
    nursery: trio.Nursery | None = None
    # Where ctfs is mounted; None when nothing is (the model alone, in tests).
    mountpoint: Path | None = None
    # How many files of ctfs processes of container CTID hold open (set by ctfs.fs).
    open_inside: Callable[[int], int] = field(default=lambda ctid: 0)
    # Set once CRIU has been probed; checkpoint requests wait for it.
    checkpoints_probed: trio.Event = field(default_factory=trio.Event)
    # Address changes take turns, so two containers never claim one address.
    address_lock: trio.Lock = field(default_factory=trio.Lock)
    # Moves a container (the first argument: ctfs.model.container imports this
    # module, so it cannot be named here) to the peer a word names; set when this
    # host has peers (ctfs.model.host.Host.serve_peers).
    migrate: Callable[[Any, str], Awaitable[None]] | None = None
    # Asks the peer a container was handed to whether it has it (see migration).
    confirm_not_there: Callable[[Any], Awaitable[None]] | None = None

    def start_soon(self, task: Callable[[], Awaitable[object]]) -> None:
        assert self.nursery is not None, "the host is not serving yet"
        self.nursery.start_soon(task)
