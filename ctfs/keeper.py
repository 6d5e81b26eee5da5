"""The keeper: holds a ctfs mount's FUSE connection while ctfsds come and go.

ctfsd (the core) may crash, be killed or re-execute itself for an upgrade.  If the
FUSE connection died with it, every reader of the mount (and of its binds inside
containers) would get ENOTCONN for good.  So this small process, which is never
upgraded in normal operation, mounts the filesystem, keeps the kernel's FUSE_INIT
request and holds /dev/fuse; each core takes a copy of the descriptor and the INIT
bytes over a unix socket and serves them (ctfs.fs.takeover).  While no core
serves, the kernel queues the requests and readers simply wait.

Protocol: SOCK_SEQPACKET at ``paths_for(mountpoint).socket``, root peers only
(SO_PEERCRED), one message each way:

- ``take`` -> ``ok\\n`` + the INIT request, with the descriptor attached, or
  ``busy\\n<sentence>`` while another core holds the connection.  The connection
  that took is the holder; when it closes (exit, crash, exec) the keeper is free.
- ``stop`` (from the holder, or from anyone while nobody holds) -> the keeper
  unmounts (detached), answers ``stopped\\n`` and exits.

Invariants: the keeper reads exactly one message from /dev/fuse, the INIT request,
so every other request is read by a core; it holds the descriptor until told to
stop or until the connection is gone (unmounted or aborted), so the requests a
dead core had read stay on the connection's processing list, where the next
core's FUSE_NOTIFY_RESEND finds them.  It imports everything it needs at start:
replacing ctfs on disk does not change a running keeper.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import select
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from ctfs.fs import wire
from ctfs.kernel import libc

log = logging.getLogger("ctfs-keeper")

RUN_DIR = Path("/run/ctfs")
TAKE, STOP = b"take", b"stop"
OK, BUSY, STOPPED = b"ok", b"busy", b"stopped"
MESSAGE_MAX = 1 << 16
# What libfuse's fuse_kern_mount does for ctfsd's options (fsname=ctfs,
# subtype=ctfs, allow_other, default_permissions): MS_NOSUID|MS_NODEV and these.
_MOUNT_DATA = "fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"
_POLL_GONE = select.POLLERR | select.POLLHUP | select.POLLNVAL


@dataclass(frozen=True)
class Paths:
    socket: Path
    pidfile: Path
    lock: Path


def paths_for(mountpoint: Path) -> Paths:
    """The keeper's files for ``mountpoint``: readable names, unique by a hash."""
    text = str(mountpoint)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    # Short enough for a socket address (108 bytes) whatever the mount point.
    readable = text.strip("/").replace("/", "-")[-40:] or "root"
    stem = f"{readable}.{digest}"
    return Paths(RUN_DIR / f"{stem}.sock", RUN_DIR / f"{stem}.pid", RUN_DIR / f"{stem}.lock")


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """The (pid, uid) of the process at the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", raw)
    return pid, uid


def connection_number(mountpoint: Path) -> int | None:
    """The FUSE connection number of the ctfs mount at ``mountpoint`` (its minor).

    Read from mountinfo: a stat of the mount point would ask the filesystem, which
    nobody serves yet.
    """
    found = None
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[4] == str(mountpoint) and fields[fields.index("-") + 1] == "fuse.ctfs":
                found = int(fields[2].split(":")[1])
    return found


class Keeper:
    """One mount's connection and the one core (at most) that holds it."""

    def __init__(self, mountpoint: Path, fuse_fd: int, init_request: bytes) -> None:
        self.mountpoint = mountpoint
        self.fuse_fd = fuse_fd
        self.init_request = init_request
        self.holder: socket.socket | None = None
        self.holder_pid = 0
        self.callers: dict[int, tuple[socket.socket, int]] = {}
        self.done = False

    def serve(self, listener: socket.socket, wakeup: int) -> None:
        """Answer cores until told to stop, a signal, or the connection is gone."""
        while not self.done:
            poller = select.poll()
            # Mask 0: only an error (the connection aborted or unmounted) wakes us;
            # the requests that queue up while no core serves are not ours to read.
            poller.register(self.fuse_fd, 0)
            poller.register(listener, select.POLLIN)
            poller.register(wakeup, select.POLLIN)
            for fd in self.callers:
                poller.register(fd, select.POLLIN)
            if self.holder is not None:
                poller.register(self.holder, select.POLLIN)
            for fd, events in poller.poll():
                try:
                    self._on_event(fd, events, listener, wakeup)
                except Exception:  # a misbehaving caller must not end the mount
                    log.exception("while answering on descriptor %d", fd)

    def _on_event(self, fd: int, events: int, listener: socket.socket, wakeup: int) -> None:
        if self.done:
            return
        if fd == self.fuse_fd:
            log.info("the mount at %s is gone (unmounted or aborted); exiting", self.mountpoint)
            self.done = True
        elif fd == wakeup:
            os.read(wakeup, 64)
            self.done = True  # only SIGTERM and SIGINT write there; see main
            self._unmount("a signal")
        elif fd == listener.fileno():
            self._accept(listener)
        elif self.holder is not None and fd == self.holder.fileno():
            self._from_holder(events)
        elif fd in self.callers:
            self._from_caller(fd)

    def _accept(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        pid, uid = peer_credentials(conn)
        if uid != 0:
            log.warning("refused PID %d (uid %d): the keeper answers root only", pid, uid)
            conn.close()
            return
        self.callers[conn.fileno()] = (conn, pid)

    def _from_holder(self, events: int) -> None:
        assert self.holder is not None
        try:
            message = self.holder.recv(MESSAGE_MAX) if events & select.POLLIN else b""
        except OSError:
            message = b""
        if message == STOP:
            self._stop(self.holder, self.holder_pid)
        elif not message or events & _POLL_GONE:
            log.info(
                "ctfsd PID %d let go of the connection; holding %s for the next ctfsd",
                self.holder_pid,
                self.mountpoint,
            )
            self.holder.close()
            self.holder = None

    def _from_caller(self, fd: int) -> None:
        conn, pid = self.callers.pop(fd)
        try:
            message = conn.recv(MESSAGE_MAX)
        except OSError:
            message = b""
        if message == TAKE:
            self._take(conn, pid)
            return
        if message == STOP and not self._held():
            self._stop(conn, pid)
        elif message == STOP:
            _send(conn, BUSY + f"\nctfsd PID {self.holder_pid} serves {self.mountpoint}".encode())
        conn.close()

    def _held(self) -> bool:
        """Whether a holder is still there; its end may be closed but not yet seen."""
        if self.holder is None:
            return False
        try:
            alive = self.holder.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            alive = True
        except OSError:
            alive = False
        if not alive:
            self._from_holder(select.POLLHUP)
        return alive

    def _take(self, conn: socket.socket, pid: int) -> None:
        if self._held():
            log.warning("refused ctfsd PID %d: PID %d serves the mount", pid, self.holder_pid)
            sentence = f"ctfsd PID {self.holder_pid} already serves {self.mountpoint}"
            _send(conn, BUSY + b"\n" + sentence.encode())
            conn.close()
            return
        try:
            socket.send_fds(conn, [OK + b"\n" + self.init_request], [self.fuse_fd])
        except OSError as exc:
            log.warning("ctfsd PID %d left before it got the connection: %s", pid, exc)
            conn.close()
            return
        self.holder, self.holder_pid = conn, pid
        log.info("ctfsd PID %d took the connection of %s", pid, self.mountpoint)

    def _stop(self, conn: socket.socket, pid: int) -> None:
        self._unmount(f"ctfsd PID {pid}")
        _send(conn, STOPPED + b"\n")
        self.done = True

    def _unmount(self, by: str) -> None:
        try:
            libc.umount2(str(self.mountpoint), libc.MNT_DETACH)
            log.info("stopped by %s: unmounted %s", by, self.mountpoint)
        except OSError as exc:
            log.warning("stopped by %s: cannot unmount %s: %s", by, self.mountpoint, exc)


def _send(conn: socket.socket, message: bytes) -> None:
    with contextlib.suppress(OSError):  # the asker is gone: nobody to tell
        conn.send(message)


def mount(mountpoint: Path) -> tuple[int, bytes]:
    """Mount ctfs at ``mountpoint``; return /dev/fuse and the kernel's INIT request."""
    fuse_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        libc.mount(
            "ctfs",
            str(mountpoint),
            "fuse.ctfs",
            libc.MS_NOSUID | libc.MS_NODEV,
            _MOUNT_DATA.format(fd=fuse_fd),
        )
    except OSError:
        os.close(fuse_fd)
        raise
    # The kernel sends FUSE_INIT as the mount completes, before any other request.
    # The kernel refuses a read of /dev/fuse smaller than a request could be.
    init_request = os.read(fuse_fd, wire.BUFFER_SIZE)
    if wire.IN_HEADER.unpack_from(init_request)[1] != wire.INIT:
        libc.umount2(str(mountpoint), libc.MNT_DETACH)
        raise OSError(f"the first request on {mountpoint} was not FUSE_INIT")
    return fuse_fd, init_request


def _listen(path: Path) -> socket.socket:
    RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    RUN_DIR.chmod(0o700)
    path.unlink(missing_ok=True)  # a dead keeper's: ctfsd holds the lock and asked first
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(8)
    return listener


def _report(line: str) -> None:
    """Tell the ctfsd that started us how the start went, then stop using stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def _signals_to_pipe() -> int:
    """SIGTERM and SIGINT end the keeper (unmounting); SIGHUP is ignored."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return read_end


def run(mountpoint: Path) -> int:
    paths = paths_for(mountpoint)
    wakeup = _signals_to_pipe()
    try:
        fuse_fd, init_request = mount(mountpoint)
    except OSError as exc:
        _report(f"error: cannot mount {mountpoint}: {exc}")
        return 1
    try:
        listener = _listen(paths.socket)
        paths.pidfile.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        libc.umount2(str(mountpoint), libc.MNT_DETACH)
        _report(f"error: cannot listen at {paths.socket}: {exc}")
        return 1
    number = connection_number(mountpoint)
    log.info("holding %s (FUSE connection %s) for ctfsd at %s", mountpoint, number, paths.socket)
    _report("ready")
    try:
        Keeper(mountpoint, fuse_fd, init_request).serve(listener, wakeup)
    finally:
        for path in (paths.socket, paths.pidfile):
            path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctfs.keeper",
        description="Hold a ctfs mount's FUSE connection for ctfsd (ctfsd starts this).",
    )
    parser.add_argument("mountpoint", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s ctfs-keeper[%(process)d] %(levelname)s %(message)s",
    )
    if os.geteuid() != 0:
        _report("error: the keeper must run as root")
        return 3
    os.chdir("/")  # hold no directory busy
    return run(args.mountpoint.absolute())


if __name__ == "__main__":
    sys.exit(main())
