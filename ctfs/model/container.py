"""A container: identity, paths, settings, derived state and the one transition guard.

Invariants:
- ``state`` is derived from facts: a transition under way, else a live init
  process (a pidfd ctfs watches), else a dump file (frozen), else stopped.
- At most one state transition runs per container; every change of state goes
  through ``changing``, which refuses a second one with EBUSY rather than queue it.
- A transition is never abandoned half-way: it runs shielded from cancellation, so
  even a daemon shutdown waits for it to finish.
- ``settings`` is ctid.conf as last written: ctid.conf is the truth, the kernel
  follows it (see ``ctfs.model.settings``).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import trio

from ctfs import conffile
from ctfs.errors import busy
from ctfs.kernel.api import Backends, IPAddress, Processes
from ctfs.model.context import Context
from ctfs.model.events import EventLog
from ctfs.policy import netaddr
from ctfs.policy.beancounters import Counter, crossing

log = logging.getLogger(__name__)

CONF = "ctid.conf"
REAP_POLL_S = 0.02
DUMP = "dump"


class State(enum.StrEnum):
    STOPPED = "stopped"
    RUNNING = "running"
    FROZEN = "frozen"
    STARTING = "starting"
    STOPPING = "stopping"
    FREEZING = "freezing"
    RESTORING = "restoring"
    MIGRATING = "migrating"


@dataclass
class InitProcess:
    """The container's init as seen from the host; ``exited`` is set once it is gone."""

    pid: int
    pidfd: int
    exited: trio.Event = field(default_factory=trio.Event)


@dataclass
class Usage:
    """What ctfs remembers of a container's usage between reads (not persisted).

    ``maxheld`` per beancounter since the start; ``crossed``: the bound each one is
    above now ("barrier", "limit"); ``quota_levels``: each disk quota resource's
    level (``ctfs.policy.quota``) when last read; ``load``: see ``ctfs.model.views``.
    """

    maxheld: dict[str, int] = field(default_factory=dict)
    crossed: dict[str, str] = field(default_factory=dict)
    quota_levels: dict[str, int] = field(default_factory=dict)
    # The load averages its views show, and when (monotonic seconds) they were due.
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_at: float = 0.0
    # (init's PID, when it started): see ctfs.model.views.uptime.
    init_started: tuple[int, float] | None = None
    # The views' last cgroup readings, by kind, with when (monotonic): see
    # ctfs.model.views.READING_TTL_S.
    readings: dict[str, tuple[float, object]] = field(default_factory=dict)

    def reset(self) -> None:
        self.maxheld.clear()
        self.crossed.clear()
        self.load, self.load_at = (0.0, 0.0, 0.0), 0.0
        self.readings.clear()


class Container:
    def __init__(self, ctx: Context, ctid: int) -> None:
        self.ctx = ctx
        self.ctid = ctid
        self.dir = ctx.state_dir / str(ctid)
        self.root = self.dir / "root"
        self.dump_path = self.dir / DUMP
        self.events = EventLog(self.dir / "events", ctid)
        self.settings: dict[str, str] = {}
        self.usage = Usage()
        self.init: InitProcess | None = None
        # Whether a complete dump file is there (the container is frozen if not running).
        self.frozen = False
        # The dump file as this ctfsd last wrote or verified it (see ctfs.model.checkpoint).
        self.dump_stamp: tuple[int, ...] | None = None
        self._transition: State | None = None

    @property
    def backends(self) -> Backends:
        return self.ctx.backends

    # ----------------------------------------------------------- settings

    def load(self) -> None:
        """Read ctid.conf; a temporary file a crash left beside it goes."""
        self.settings = conffile.read(self.dir / CONF)
        conffile.remove_stale_temporary(self.dir / CONF)
        self.frozen = self.dump_path.exists()

    def persist(self, **changes: str) -> None:
        """Write ``changes`` into ctid.conf atomically; the in-memory copy follows."""
        self.save({**self.settings, **changes})

    def save(self, settings: dict[str, str]) -> None:
        """Replace ctid.conf by ``settings`` atomically; the in-memory copy follows."""
        conffile.write_atomic(
            self.dir / CONF, conffile.render(settings, header=f"ctfs container {self.ctid}")
        )
        self.settings = dict(settings)

    @property
    def template_name(self) -> str:
        return self.settings.get("OSTEMPLATE", "")

    @property
    def hostname(self) -> str:
        return hostname_in(self.ctid, self.settings)

    @property
    def addresses(self) -> list[IPAddress]:
        return netaddr.from_setting(self.settings.get("IP_ADDRESS", ""))

    @property
    def ever_started(self) -> bool:
        return self.settings.get("STARTED_ONCE") == "yes"

    # -------------------------------------------------------------- state

    @property
    def state(self) -> State:
        if self._transition is not None:
            return self._transition
        if self.init is not None:
            return State.RUNNING
        if self.frozen:
            return State.FROZEN
        return State.STOPPED

    @property
    def init_pid(self) -> int | None:
        return self.init.pid if self.init is not None else None

    def pids(self) -> list[int]:
        """Host PIDs of the container's processes, init first, then ascending."""
        found = sorted(self.backends.cgroups.pids(self.ctid))
        init = self.init_pid
        if init is not None and init in found:
            found.remove(init)
            found.insert(0, init)
        return found

    def refuse_while_changing(self) -> None:
        if self._transition is not None:
            raise busy(f"a change is under way (the container reads {self._transition.value})")

    @contextlib.asynccontextmanager
    async def changing(self, during: State, requested: bool = True) -> AsyncIterator[None]:
        """The one transition guard: the state reads ``during`` until the body is done.

        ``requested``: someone asked for this change, so a change already under way
        refuses it (EBUSY).  An unrequested one (init exited by itself) is simply
        skipped by the caller when a change is under way; see ``lifecycle.watch``.
        """
        if requested:
            self.refuse_while_changing()
        self._transition = during
        try:
            with trio.CancelScope(shield=True):
                yield
        finally:
            self._transition = None

    @property
    def changing_now(self) -> bool:
        return self._transition is not None

    # ---------------------------------------------------------- usage

    def fold_counters(
        self,
        now: dict[str, tuple[int, int, int]],
        limits: dict[str, tuple[int, int]],
        enforced: frozenset[str],
    ) -> dict[str, Counter]:
        """Fold one measurement into maxheld and crossing events; the file's rows."""
        counters: dict[str, Counter] = {}
        for name, (held, kernel_max, failcnt) in now.items():
            maxheld = max(self.usage.maxheld.get(name, 0), held, kernel_max)
            self.usage.maxheld[name] = maxheld
            barrier, limit = limits[name]
            self._note_crossing(name, held, barrier, limit, enforced)
            counters[name] = Counter(held, maxheld, barrier, limit, failcnt)
        return counters

    def _note_crossing(
        self, name: str, held: int, barrier: int, limit: int, enforced: frozenset[str]
    ) -> None:
        level = crossing(held, barrier, limit)
        if level == self.usage.crossed.get(name, ""):
            return
        if level:
            self.usage.crossed[name] = level
            bound = limit if level == "limit" else barrier
            how = "enforced by the kernel" if name in enforced else "accounted only"
            self.events.record(
                f"{name}: held {held} is above its {level} {bound} ({how})", logging.WARNING
            )
        else:
            self.usage.crossed.pop(name, None)
            self.events.record(f"{name}: held {held} is back within its barrier {barrier}")


def hostname_in(ctid: int, settings: Mapping[str, str]) -> str:
    return settings.get("HOSTNAME", f"ct{ctid}")


async def reap(processes: Processes, pid: int, patience: float = 5.0) -> str:
    """Collect ``pid``, which has ended or is about to; describe how it ended.

    ctfsd is a subreaper: a process whose parent ends becomes its child.  One whose
    parent descends from ctfsd (init's helper, a CRIU on its way out) is waited for
    until it is handed over, ``patience`` seconds at most; one adopted by an
    earlier ctfsd, or gone, is not ours to collect.
    """
    done, status = 0, 0
    with trio.move_on_after(patience):
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                if not processes.will_be_ours(pid):
                    return "status unknown: it was adopted by an earlier ctfsd"
                done = 0
            if done:
                break
            await trio.sleep(REAP_POLL_S)
    if not done:
        return f"status unknown: not handed to ctfsd within {patience:g} s"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return "status unknown"
