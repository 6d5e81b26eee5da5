"""ctfsd's side of starting containers: the ``Launcher`` backend.

It keeps a warm spawner process (``ctfs.kernel.spawner``) and asks it over a socket.
Invariant: at most one spawner process runs per ctfsd; it is started lazily,
restarted if it died, and ends by itself when ctfsd closes the control socket.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from dataclasses import asdict
from typing import Any

import trio

from ctfs.kernel.api import BeforeExec, LaunchReply, LaunchRequest

log = logging.getLogger(__name__)


async def _answer(talk: trio.socket.SocketType) -> dict[str, Any]:
    reply = await talk.recv(1 << 16)
    if not reply:
        raise LaunchError("the spawner ended without an answer")
    result: dict[str, Any] = json.loads(reply)
    return result


class LaunchError(Exception):
    """The spawner could not be reached or gave no answer."""


class Launcher:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lock = trio.Lock()

    def _spawn(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-m",
                    "ctfs.kernel.spawner",
                    "--serve",
                    str(theirs.fileno()),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._control = ours
        log.debug("spawner started, PID %d", self._proc.pid)
        return ours

    def _alive_control(self) -> socket.socket:
        if self._proc is not None and self._proc.poll() is not None:
            log.warning("the spawner exited with %s; starting a new one", self._proc.returncode)
            self.close()
        return self._control or self._spawn()

    async def launch(
        self, request: LaunchRequest, before_exec: BeforeExec | None = None
    ) -> LaunchReply:
        """Send ``request``; return the spawner's reply (a PID or an error).

        With ``before_exec``, init waits before exec'ing the template's init until
        ``before_exec(host PID of init)`` has returned; if it raises, init exits
        without exec and the exception propagates (the caller cleans the cgroups).
        A spawner that cannot be reached is an error reply, not an exception.
        """
        spec = asdict(request) | {"hold": before_exec is not None}
        try:
            result = await self._exchange(spec, before_exec)
        except LaunchError as exc:
            return LaunchReply(error=str(exc))
        if "pid" in result and result["pid"] is not None:
            return LaunchReply(pid=int(result["pid"]))
        orphan = result.get("orphan")
        return LaunchReply(
            error=str(result.get("error") or "no reason given"),
            orphan=int(orphan) if orphan is not None else None,
        )

    async def _exchange(
        self, spec: dict[str, Any], before_exec: BeforeExec | None
    ) -> dict[str, Any]:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with mine:
            try:
                async with self._lock:
                    self._send(json.dumps(spec).encode(), theirs)
            finally:
                theirs.close()
            talk = trio.socket.from_stdlib_socket(mine)
            result = await _answer(talk)
            if before_exec is not None and "held" in result:
                try:
                    await before_exec(int(result["held"]))
                except BaseException:
                    await talk.send(b"abort")
                    await _answer(talk)
                    raise
                await talk.send(b"go")
                result = await _answer(talk)
        return result

    def _send(self, message: bytes, reply_end: socket.socket) -> None:
        for attempt in (1, 2):
            control = self._alive_control()
            try:
                socket.send_fds(control, [message], [reply_end.fileno()])
                return
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 2:
                    raise LaunchError(f"cannot reach the spawner: {exc}") from exc

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
