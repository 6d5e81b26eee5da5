"""ctfsd's side of starting containers: a warm launcher process, asked over a socket.

Invariant: at most one launcher process runs per ctfsd; it is started lazily,
restarted if it died, and ends by itself when ctfsd closes the control socket.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger(__name__)


BeforeExec = Callable[[int], Awaitable[None]]


async def _answer(talk: trio.socket.SocketType) -> dict[str, Any]:
    reply = await talk.recv(1 << 16)
    if not reply:
        raise LaunchError("the launcher ended without an answer")
    result: dict[str, Any] = json.loads(reply)
    return result


class LaunchError(Exception):
    """The launcher could not be reached or gave no answer."""


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
                    "ctfs.kernel.launcher",
                    "--serve",
                    str(theirs.fileno()),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._control = ours
        log.debug("launcher started, PID %d", self._proc.pid)
        return ours

    def _alive_control(self) -> socket.socket:
        if self._proc is not None and self._proc.poll() is not None:
            log.warning("the launcher exited with %s; starting a new one", self._proc.returncode)
            self.close()
        return self._control or self._spawn()

    async def launch(
        self, spec: dict[str, Any], before_exec: BeforeExec | None = None
    ) -> dict[str, Any]:
        """Send ``spec``; return the launcher's reply (``pid`` or ``error``).

        With ``before_exec``, init waits before exec'ing the template's init until
        ``before_exec(host PID of init)`` has returned; if it raises, init exits
        without exec and the exception propagates (the caller cleans the cgroups).
        """
        spec = {**spec, "hold": before_exec is not None}
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
                    raise LaunchError(f"cannot reach the launcher: {exc}") from exc

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
