"""CRIU's action at post-setup-namespaces of a restore, done inside ctfsd.

At post-setup-namespaces the container's init has left its top cgroup for its own
and nothing else is restored yet: the controllers the container had enabled below
its cgroups (checked by ctfsd) are enabled again, before the processes that use
their files are; and its veth is readied: CRIU has just made the pair (the host
end down, bare), or, for a container in a user namespace, whose veth CRIU cannot
make, ctfs makes the pair, eth0 in the network namespace of the restored init.

CRIU runs an action script at every stage.  The script is a few lines of sh: at
this stage it writes the init's PID into a FIFO of the work directory and waits
for the answer on a second one; ctfsd (``ActionServer``, a thread) does the work
and answers ``ok``, or the reason, which fails the restore.  A Python script of
its own cost 207 ms of every restore here (the interpreter and pyroute2 starting:
measured in CRIU's log, most of the frozen time of a migration); ctfsd has both
loaded already.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ctfs.kernel.api import NetworkError, SubtreeControls
from ctfs.kernel.network import make_restored_veth, ready_restored_host_end

REQUEST, REPLY = "action.request", "action.reply"
_POLL_S = 0.05
_MAX_REQUEST = 64


@dataclass(frozen=True)
class Action:
    """What the action does for one restore."""

    subtree_controls: SubtreeControls
    host_veth: str | None
    addresses: tuple[str, ...]
    make_veth: bool

    def __call__(self, init_pid: int) -> None:
        """Do it; OSError (NetworkError) says why it cannot."""
        for directory, controllers in self.subtree_controls:
            with open(os.path.join(directory, "cgroup.subtree_control"), "w") as f:
                f.write(" ".join(f"+{c}" for c in controllers))
        if self.host_veth is None:
            return
        addresses = [ipaddress.ip_address(a) for a in self.addresses]
        if self.make_veth:
            # The restored sockets bind their addresses next: they must be there.
            make_restored_veth(self.host_veth, init_pid, addresses)
        else:
            ready_restored_host_end(self.host_veth, addresses)


def script(work: Path) -> Path:
    """The action script CRIU runs: sh, asking the server through the FIFOs."""
    path = work / "action"
    path.write_text(
        "#!/bin/sh\n"
        '[ "$CRTOOLS_SCRIPT_ACTION" = post-setup-namespaces ] || exit 0\n'
        f'echo "$CRTOOLS_INIT_PID" > "{work / REQUEST}" || exit 1\n'
        f'read -r answer < "{work / REPLY}" || exit 1\n'
        '[ "$answer" = ok ] || { echo "ctfs: $answer" >&2; exit 1; }\n'
    )
    path.chmod(0o700)
    return path


class ActionServer:
    """Answers the action script of one restore, from a thread, until ``close``."""

    def __init__(self, work: Path, action: Callable[[int], None]) -> None:
        self.request, self.reply = work / REQUEST, work / REPLY
        for fifo in (self.request, self.reply):
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo, 0o600)
        # Non-blocking: opening waits for no writer; select waits for the script.
        self.fd = os.open(self.request, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.action = action
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="criu-action", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        received = b""
        while not self._stop.is_set() and b"\n" not in received:
            if select.select([self.fd], [], [], _POLL_S)[0]:
                chunk = os.read(self.fd, _MAX_REQUEST)
                received += chunk
                if not chunk or len(received) > _MAX_REQUEST:
                    break
        if b"\n" not in received:
            return
        try:
            self.action(int(received.split(b"\n", 1)[0]))
            answer = "ok"
        except (NetworkError, OSError, ValueError) as exc:
            answer = self.error = f"cannot ready the restored container: {exc}"
        with contextlib.suppress(OSError):
            # Opening waits for the script to open its end (it does at once).
            fd = os.open(self.reply, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, (" ".join(answer.split()) + "\n").encode())
            finally:
                os.close(fd)

    def close(self) -> None:
        self._stop.set()
        # A script stuck opening the reply (CRIU was killed meanwhile) is released.
        with contextlib.suppress(OSError):
            os.close(os.open(self.reply, os.O_RDONLY | os.O_NONBLOCK))
        self._thread.join(timeout=5)
        os.close(self.fd)
        for fifo in (self.request, self.reply):
            fifo.unlink(missing_ok=True)
