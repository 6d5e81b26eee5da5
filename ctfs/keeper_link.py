"""ctfsd's side of the keeper (ctfs.keeper): find or start it, take the connection, stop it.

Invariant: ctfsd asks the keeper before it touches the mount point.  A mount that a
keeper holds but no ctfsd serves answers nothing: a stat or statfs of it would
wait for a ctfsd to serve it, i.e. forever for the ctfsd that is about to.  The
whole find-or-start runs under a lock file, so two ctfsds started together cannot
both mount.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from ctfs import keeper

log = logging.getLogger("ctfsd")

# A keeper answers from a loop that does nothing else: a silence this long is a
# keeper that is stuck, not busy.
ANSWER_TIMEOUT_S = 10.0
# Python's start and one mount(2); measured 0.1 s here.
KEEPER_START_TIMEOUT_S = 30.0


class KeeperBusy(Exception):
    """Another ctfsd serves the mount."""


class KeeperFailed(Exception):
    """No keeper could be started, or it answered nonsense."""


@dataclass
class Held:
    """A ctfsd's hold on the connection; closing ``link`` (exit, crash, exec) frees it.

    ``fuse_fd`` is this process's descriptor of the keeper's /dev/fuse (the same
    open file, not a new one); it is not inherited by children or across exec.
    """

    link: socket.socket
    fuse_fd: int
    init_request: bytes
    keeper_pid: int
    fresh: bool = False  # the keeper was started for this ctfsd: the mount is new

    def stop(self) -> bool:
        """Ask the keeper to unmount and exit; whether it says it did."""
        self.link.settimeout(ANSWER_TIMEOUT_S)
        try:
            self.link.send(keeper.STOP)
            return self.link.recv(keeper.MESSAGE_MAX).startswith(keeper.STOPPED)
        except OSError:
            return False
        finally:
            self.link.close()
            _reap(self.keeper_pid)

    def leave(self) -> None:
        """Let go of the connection; the keeper keeps the mount for the next ctfsd."""
        self.link.close()

    async def keeper_gone(self) -> None:
        """Return once the keeper's end of the link is closed (killed, or mount gone)."""
        while True:
            await trio.lowlevel.wait_readable(self.link)
            try:
                if not self.link.recv(keeper.MESSAGE_MAX, socket.MSG_DONTWAIT):
                    break
            except BlockingIOError:
                continue
            except OSError:
                break
        _reap(self.keeper_pid)


def take_or_start(
    mountpoint: Path, prepare_mountpoint: Callable[[], None], keeper_log: int | None
) -> Held:
    """Take the connection of ``mountpoint`` from its keeper, starting one if none runs.

    ``prepare_mountpoint`` runs only when no keeper answers (it may look at the
    mount point then).  The keeper logs to ``keeper_log`` (else our stderr).
    Raises KeeperBusy or KeeperFailed.
    """
    paths = keeper.paths_for(mountpoint)
    keeper.RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(paths.lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        held = _take(paths.socket)
        if held is not None:
            return held
        prepare_mountpoint()
        _start_keeper(mountpoint, keeper_log)
        held = _take(paths.socket)
        if held is None:
            raise KeeperFailed(f"the keeper of {mountpoint} started but does not answer")
        held.fresh = True
        return held


def _connect(path: Path) -> socket.socket | None:
    """A link to the keeper at ``path``; None if no keeper runs (a dead one's socket goes)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(ANSWER_TIMEOUT_S)
    try:
        sock.connect(str(path))
    except FileNotFoundError:
        sock.close()
        return None
    except ConnectionRefusedError:
        sock.close()
        path.unlink(missing_ok=True)
        log.info("removed %s, the socket of a keeper that is gone", path)
        return None
    return sock


def _take(path: Path) -> Held | None:
    sock = _connect(path)
    if sock is None:
        return None
    try:
        keeper_pid, uid = keeper.peer_credentials(sock)
        if uid != 0:
            raise KeeperFailed(f"{path} belongs to uid {uid}, not to a keeper (root)")
        sock.send(keeper.TAKE)
        message, fds = _receive(sock)
    except TimeoutError as exc:
        sock.close()
        raise KeeperFailed(f"the keeper at {path} does not answer") from exc
    except BaseException:
        sock.close()
        raise
    status, _, rest = message.partition(b"\n")
    if status != keeper.OK or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        sock.close()
        sentence = rest.decode(errors="replace") or f"the keeper answered {message[:40]!r}"
        raise (KeeperBusy if status == keeper.BUSY else KeeperFailed)(sentence)
    sock.settimeout(None)
    return Held(sock, fds[0], rest, keeper_pid)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """A message and the descriptors with it, not inherited by children or across exec.

    Not socket.recv_fds: Python 3.11's ignores its flags, so MSG_CMSG_CLOEXEC.
    """
    fds = array.array("i")
    message, ancillary, _, _ = sock.recvmsg(
        keeper.MESSAGE_MAX, socket.CMSG_LEN(fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return message, list(fds)


def _start_keeper(mountpoint: Path, keeper_log: int | None) -> None:
    """Start a keeper for ``mountpoint`` and wait until it has mounted and listens."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "ctfs.keeper", str(mountpoint)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=keeper_log,
        cwd="/",
        # Its own session: a signal to ctfsd's terminal or process group spares it.
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdout is not None
    with proc.stdout:
        ready, _, _ = select.select([proc.stdout], [], [], KEEPER_START_TIMEOUT_S)
        line = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
    if line == "ready":
        log.info("started the keeper of %s, PID %d", mountpoint, proc.pid)
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    raise KeeperFailed(line.removeprefix("error: ") or "the keeper did not start")


def _reap(pid: int) -> None:
    """Collect the keeper if it was our child and has exited (ctfsd started it)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
