"""The last steps of a container start, shared by both ways of building one: the
init process's exec, and the spawner's reply to ctfsd."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
from collections.abc import Callable
from typing import NoReturn

from ctfs.kernel import libc, seccomp
from ctfs.kernel.container_mounts import Step, step
from ctfs.kernel.launch_values import LaunchReply, LaunchRequest

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def exec_init(spec: LaunchRequest, errpipe: int, go: int | None) -> None:
    """In the container's init, its mounts ready: the security baseline, then exec.

    With ``go``, waits before exec until ctfsd (through the spawner) says go: ctfsd
    sets up what lives outside the container, such as its network, meanwhile.
    Never returns.
    """
    for cap in spec.drop_caps:
        step(f"drop capability {cap}", libc.prctl, libc.PR_CAPBSET_DROP, cap)
    os.setsid()
    if go is not None and os.read(go, 1) != b"g":
        raise Step("ctfsd abandoned the start")
    step("load the seccomp filter", seccomp.install)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    # Everything but stdio and the close-on-exec error pipe goes now.
    os.closerange(3, errpipe)
    os.closerange(errpipe + 1, 65536)
    argv = spec.init
    step(f"exec {argv[0]}", os.execve, argv[0], argv, spec.env)


def born(spec: LaunchRequest) -> int:
    """fork(), the child born in the container's cgroup2 cgroup if it has one."""
    if spec.cgroup_birth is None:
        return os.fork()
    fd = os.open(spec.cgroup_birth, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return libc.fork_into_cgroup(fd)
    finally:
        os.close(fd)


def run_init(errpipe: int, body: Callable[[], None]) -> NoReturn:
    """Run ``body`` (which execs the container's init); if it returns or fails, say
    why on ``errpipe``, where the spawner waits, and exit."""
    try:
        body()
    except Step as exc:
        os.write(errpipe, str(exc).encode())
    except BaseException as exc:  # report anything, the spawner is waiting
        os.write(errpipe, f"launcher: {exc!r}".encode())
    os._exit(127)


def hand_over(
    pid: int, talk: socket.socket, errpipe: int, go: int | None, child: bool
) -> LaunchReply:
    """Tell ctfsd about init ``pid`` and wait for its exec (EOF on ``errpipe``).

    With ``go``: ``{"held": PID}`` to ctfsd first, and init goes on once ctfsd
    answers ``go``.  ``child``: init is this process's child, to be reaped if it fails.
    """
    if go is not None:
        talk.sendall(json.dumps({"held": pid}).encode())
        answer = talk.recv(16)
        # Anything but go (ctfsd gave up, or is gone) makes init exit unexec'd.
        os.write(go, b"g" if answer == b"go" else b"x")
        os.close(go)
    # EOF means the exec closed the pipe; text means init failed first.
    chunks = []
    while chunk := os.read(errpipe, 4096):
        chunks.append(chunk)
    if chunks:
        if child:
            os.waitpid(pid, 0)
        return LaunchReply(error=b"".join(chunks).decode(errors="replace"))
    return LaunchReply(pid=pid)
