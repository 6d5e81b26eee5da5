"""The program that becomes a container's init: ``python -m ctfs.kernel.spawner --serve FD``.

ctfsd keeps one running (see ``ctfs.kernel.launcher``) and sends it a
``LaunchRequest`` as JSON per start.  A forked copy joins the container's
cgroups, unshares the namespaces and forks; that child is PID 1 of the new pid
namespace, builds the container's mounts, pivots into the private area and execs
the template's init.  The copy replies ``{"pid": N}`` (the host PID of init) once
the exec has happened, or ``{"error": "..."}``, and exits, so the container's init
is orphaned at once and never dies with ctfsd.

Invariants: no host file descriptor survives into the container (init's stdio is
the container's own /dev/null); nothing mounted here propagates to the host (the
new mount namespace is made private before anything is mounted).

It must import quickly: the standard library, ``ctfs.kernel.libc`` and the plain
value types of ``ctfs.kernel.api``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
import sys
from dataclasses import asdict
from typing import Any

from ctfs.kernel import libc, seccomp
from ctfs.kernel.api import LaunchReply, LaunchRequest

NAMESPACES = (
    libc.CLONE_NEWNS
    | libc.CLONE_NEWUTS
    | libc.CLONE_NEWIPC
    | libc.CLONE_NEWNET
    | libc.CLONE_NEWPID
    | libc.CLONE_NEWCGROUP
)

# (name, major, minor) of the nodes every container's private /dev gets.
DEV_NODES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
DEV_LINKS = (
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)

# Host-wide knobs in /proc that stay visible but must not be written.
READ_ONLY_PROC_ENTRIES = ("sysrq-trigger", "irq", "bus")

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class Step(Exception):
    """A failed setup step; its text is what ctfsd reports."""


def _step(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except OSError as exc:
        raise Step(f"{what}: {exc.strerror or exc}") from exc


NOSUID_NODEV = libc.MS_NOSUID | libc.MS_NODEV


def _mount_filesystems(root: str) -> None:
    # Nothing mounted from here on may propagate back to the host.
    _step("make mounts private", libc.mount, None, "/", None, libc.MS_REC | libc.MS_PRIVATE, None)
    # pivot_root needs the new root to be a mount point of its own.
    _step("bind private area", libc.mount, root, root, None, libc.MS_BIND | libc.MS_REC, None)
    _mount_proc(root)
    _step(
        "mount /sys",
        libc.mount,
        "sysfs",
        f"{root}/sys",
        "sysfs",
        libc.MS_RDONLY | NOSUID_NODEV | libc.MS_NOEXEC,
        None,
    )
    _mount_dev(f"{root}/dev")


def _mount_proc(root: str) -> None:
    nosuid_nodev = NOSUID_NODEV
    proc = f"{root}/proc"
    _step("mount /proc", libc.mount, "proc", proc, "proc", nosuid_nodev | libc.MS_NOEXEC, None)
    # /proc/sys is read-only except net, which the container's netns makes safe.
    _step("bind /proc/sys", libc.mount, f"{proc}/sys", f"{proc}/sys", None, libc.MS_BIND, None)
    _step(
        "bind /proc/sys/net",
        libc.mount,
        f"{proc}/sys/net",
        f"{proc}/sys/net",
        None,
        libc.MS_BIND,
        None,
    )
    ro_remount = libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | nosuid_nodev | libc.MS_NOEXEC
    _step("make /proc/sys read-only", libc.mount, None, f"{proc}/sys", None, ro_remount, None)
    for entry in READ_ONLY_PROC_ENTRIES:
        path = f"{proc}/{entry}"
        if os.path.exists(path):  # absent when the kernel lacks the feature
            _step(f"bind /proc/{entry}", libc.mount, path, path, None, libc.MS_BIND, None)
            _step(f"make /proc/{entry} read-only", libc.mount, None, path, None, ro_remount, None)


def _mount_dev(dev: str) -> None:
    nosuid_nodev = NOSUID_NODEV
    _step(
        "mount /dev",
        libc.mount,
        "tmpfs",
        dev,
        "tmpfs",
        libc.MS_NOSUID | libc.MS_NOEXEC,
        "mode=755,size=65536k",
    )
    old_umask = os.umask(0)
    try:
        for name, major, minor in DEV_NODES:
            _step(
                f"mknod /dev/{name}", os.mknod, f"{dev}/{name}", 0o20666, os.makedev(major, minor)
            )
    finally:
        os.umask(old_umask)
    for name, target in DEV_LINKS:
        os.symlink(target, f"{dev}/{name}")
    for sub in ("pts", "shm", "mqueue"):
        os.mkdir(f"{dev}/{sub}", 0o755)
    _step(
        "mount /dev/pts",
        libc.mount,
        "devpts",
        f"{dev}/pts",
        "devpts",
        libc.MS_NOSUID | libc.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    _step(
        "mount /dev/shm",
        libc.mount,
        "shm",
        f"{dev}/shm",
        "tmpfs",
        nosuid_nodev,
        "mode=1777,size=65536k",
    )
    _step(
        "mount /dev/mqueue",
        libc.mount,
        "mqueue",
        f"{dev}/mqueue",
        "mqueue",
        nosuid_nodev | libc.MS_NOEXEC,
        None,
    )


def _pivot(root: str) -> None:
    os.chdir(root)
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching
    # it leaves only the private area, with no directory to hold the old root.
    _step("pivot_root", libc.pivot_root, ".", ".")
    _step("detach old root", libc.umount2, ".", libc.MNT_DETACH)
    os.chdir("/")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _become_init(spec: LaunchRequest, errpipe: int, go: int | None) -> None:
    """Runs in the child (PID 1 of the new pid namespace); never returns.

    With ``go``, waits before exec until ctfsd (through the parent) says go: ctfsd
    sets up what lives outside the container, such as its network, meanwhile.
    """
    os.umask(0o022)
    _mount_filesystems(spec.root)
    _pivot(spec.root)
    _step("sethostname", libc.sethostname, spec.hostname)
    _step("bring up lo", _loopback_up)
    for cap in spec.drop_caps:
        _step(f"drop capability {cap}", libc.prctl, libc.PR_CAPBSET_DROP, cap)
    os.setsid()
    if go is not None and os.read(go, 1) != b"g":
        raise Step("ctfsd abandoned the start")
    _step("load the seccomp filter", seccomp.install)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    # Everything but stdio and the close-on-exec error pipe goes now.
    os.closerange(3, errpipe)
    os.closerange(errpipe + 1, 65536)
    argv = spec.init
    _step(f"exec {argv[0]}", os.execve, argv[0], argv, spec.env)


def launch(spec: LaunchRequest, talk: socket.socket) -> LaunchReply:
    """Start the container described by ``spec``; return the final reply for ctfsd.

    With ``spec.hold``, init waits before its exec: ``{"held": PID}`` goes to
    ctfsd on ``talk`` first, and init goes on once ctfsd answers ``go``.
    """
    try:
        # This process is single-threaded: it moves itself (see CgroupsV1.join_files).
        for join_file in spec.cgroup_join:
            with open(join_file, "w") as f:
                f.write("0")
        libc.unshare(NAMESPACES)
    except OSError as exc:
        return LaunchReply(error=f"cannot enter cgroups and namespaces: {exc.strerror or exc}")

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    go_read, go_write = os.pipe2(os.O_CLOEXEC) if spec.hold else (None, None)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        if go_write is not None:
            os.close(go_write)
        try:
            _become_init(spec, write_end, go_read)
        except Step as exc:
            os.write(write_end, str(exc).encode())
        except BaseException as exc:  # report anything, the parent is waiting
            os.write(write_end, f"launcher: {exc!r}".encode())
        os._exit(127)

    os.close(write_end)
    if go_read is not None and go_write is not None:
        os.close(go_read)
        talk.sendall(json.dumps({"held": pid}).encode())
        answer = talk.recv(16)
        # Anything but go (ctfsd gave up, or is gone) makes init exit unexec'd.
        os.write(go_write, b"g" if answer == b"go" else b"x")
        os.close(go_write)
    # EOF means the child's exec closed the pipe; text means it failed first.
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    if chunks:
        os.waitpid(pid, 0)
        return LaunchReply(error=b"".join(chunks).decode(errors="replace"))
    return LaunchReply(pid=pid)


def serve(control: socket.socket) -> None:
    """Answer launch requests until ctfsd closes ``control``.

    Each request is a JSON spec with one socket attached; a forked copy of this
    (single-threaded, already imported) process carries it out and sends the reply
    on that socket.  Forking a warm process instead of starting an interpreter per
    container keeps Python's start-up cost out of every container start.
    """
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 20, 1)
        except InterruptedError:
            continue
        _reap_finished()
        if not message:
            return  # ctfsd is gone
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        reply_fd = fds[0]
        if os.fork() == 0:
            control.close()
            talk = socket.socket(fileno=reply_fd)
            try:
                reply = launch(LaunchRequest(**json.loads(message)), talk)
            except BaseException as exc:  # always answer: ctfsd is waiting
                reply = LaunchReply(error=f"launcher: {exc!r}")
            with contextlib.suppress(OSError):
                talk.sendall(json.dumps(asdict(reply)).encode())
            os._exit(0)
        os.close(reply_fd)


def _reap_finished() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] != "--serve":
        sys.stderr.write("usage: python -m ctfs.kernel.spawner --serve FD (ctfsd runs this)\n")
        return 2
    with socket.socket(fileno=int(sys.argv[2])) as control:
        serve(control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
