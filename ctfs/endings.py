"""How ctfsd stops serving, and how an upgrade in place starts it again.

SIGTERM and SIGINT stop: serving ends at once and the keeper unmounts.  SIGHUP
upgrades in place: ctfsd stops reading requests, lets those under way finish (up
to UPGRADE_DRAIN_S) and re-executes itself, keeping its PID; the new code takes
the connection over from the keeper.  A signal that comes while ctfsd is still
starting acts once it serves.  If serving ends any other way, the mount is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

import trio

log = logging.getLogger("ctfsd")

STOP, UPGRADE, GONE = "stop", "upgrade", "gone"
# A stop that leaves the mount to the keeper, for the running containers' views.
KEEP = "keep"
# How long an upgrade waits for the requests under way (a container stopping takes
# up to --stop-timeout); what is still unanswered then is resent to the new ctfsd.
UPGRADE_DRAIN_S = 30.0
# In the environment of the re-executed ctfsd: it is a daemon already.
_UPGRADING = "CTFSD_UPGRADING"

_early: list[int] = []


class Ending:
    """How serving ended: STOP, UPGRADE, or GONE (the mount was removed).

    ``terminate`` stops the FUSE session reading requests (an upgrade's first step).
    """

    def __init__(self, terminate: Callable[[], None]) -> None:
        self.how = GONE
        self.terminate = terminate


def catch_early_signals() -> None:
    """Keep SIGTERM, SIGINT and SIGHUP until ctfsd serves, instead of dying of them.

    Dying would leave the keeper holding a mount nobody serves (and systemd does
    not restart a service that ended by SIGTERM or SIGHUP).
    """
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _: _early.append(signum))


async def on_signals(scope: trio.CancelScope, ending: Ending) -> None:
    """Act on the signals while serving; ``scope`` is what serving runs in."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        for signum in _early:
            if _act_on(signum, scope, ending):
                return
        async for signum in signals:
            if _act_on(signum, scope, ending):
                return


def _act_on(signum: int, scope: trio.CancelScope, ending: Ending) -> bool:
    """Carry out one signal; return whether serving ends now."""
    if signum != signal.SIGHUP:
        log.info("received %s, unmounting", signal.Signals(signum).name)
        ending.how = STOP
        scope.cancel()
        return True
    if ending.how != UPGRADE:
        log.info("received SIGHUP: upgrading in place once the requests under way end")
        ending.how = UPGRADE
        # The session reads no more requests and returns once those it has
        # are answered; the new ctfsd reads the rest from the kernel's queue.
        ending.terminate()
        scope.deadline = trio.current_time() + UPGRADE_DRAIN_S
    return False


def upgrading() -> bool:
    """Whether this process is a ctfsd re-executed for an upgrade (once per process)."""
    return os.environ.pop(_UPGRADING, None) == "1"


def command_line(argv: list[str] | None) -> tuple[str, list[str]]:
    """Where and how to run this ctfsd again with the same arguments (call it first)."""
    cwd = os.getcwd()  # relative arguments are relative to it
    arguments = sys.argv[1:] if argv is None else argv
    script = os.path.abspath(sys.argv[0])
    if argv is None and os.access(script, os.X_OK) and not script.endswith(".py"):
        return cwd, [script, *arguments]  # the entry point: ps and systemd still see ctfsd
    return cwd, [sys.executable, "-m", "ctfs.daemon", *arguments]


def reexecute(again: tuple[str, list[str]]) -> OSError:
    """Become the ctfsd on disk now, same PID; return only if that fails."""
    cwd, command = again
    log.info("re-executing %s for an upgrade in place", command[0])
    os.environ[_UPGRADING] = "1"
    try:
        os.chdir(cwd)
        os.execv(command[0], command)
    except OSError as exc:
        del os.environ[_UPGRADING]
        return exc
