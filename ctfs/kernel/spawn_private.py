"""Starting a container with a private id range: its own user namespace owns the rest.

Three processes take part.  This one (W, a fresh fork of the spawner, root on the
host) forks a helper that makes the user namespace U and, once W has written U's
id map, the container's network, UTS, IPC, cgroup, pid and time namespaces inside U, so
that they belong to the container's root; the helper forks the container's init
(PID 1 of the new pid namespace, root of U) and exits.  Init waits.

W then builds the container's mounts with the host's privileges: the private area
idmapped to U (owned by 0 on disk, by the container's root inside), /proc of the
container's pid namespace, /sys, /dev; pivots into them; becomes root of U and
unshares a mount namespace of U's own.  Its copies of those mounts are locked:
from inside they cannot be unmounted, nor made writable, nor their flags cleared.
Then it puts ctfs's views in place, unlocked (see ``ctfs.kernel.view_mounts``).
W passes that namespace to init, which enters it, sets its host name and execs
the template's init under the seccomp filter.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace

from ctfs.kernel import libc, userns, view_mounts
from ctfs.kernel.container_mounts import Owner, Step, mount_filesystems, pivot, step
from ctfs.kernel.handoff import born, exec_init, hand_over, loopback_up, run_init
from ctfs.kernel.launch_values import LaunchReply, LaunchRequest
from ctfs.policy import idmap

OWNED = libc.CLONE_NEWNET | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWCGROUP


def launch(spec: LaunchRequest, talk: socket.socket) -> LaunchReply:
    assert spec.id_base is not None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC) if spec.hold else (None, None)
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    down_r, down_w = os.pipe2(os.O_CLOEXEC)
    try:
        helper = born(spec)
    except OSError as exc:
        return LaunchReply(error=f"cannot start the container: {exc.strerror or exc}")
    if helper == 0:
        ours.close()
        for fd in (err_r, up_r, down_w, go_w):
            if fd is not None:
                os.close(fd)
        _helper(spec, theirs, err_w, go_r, up_w, down_r)
    theirs.close()
    for fd in (err_w, up_w, down_r, go_r):
        if fd is not None:
            os.close(fd)
    init: int | None = None
    try:
        init = _map_ids(helper, spec.id_base, up_r, down_w)
        namespace = _build_mounts(spec, init, spec.id_base)
        socket.send_fds(ours, [b"m"], [namespace])
    except (OSError, Step) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return LaunchReply(error=f"cannot build the container: {reason}", orphan=init)
    finally:
        ours.close()  # an init still waiting sees the end and exits
    reply = hand_over(init, talk, err_r, go_w, child=False)
    # Init is the helper's orphan, not this process's child: ctfsd reaps it.
    return reply if reply.pid is not None else replace(reply, orphan=init)


def _map_ids(helper: int, base: int, up: int, down: int) -> int:
    """Write U's id maps once the helper made it; the host PID of init."""
    try:
        if os.read(up, 1) != b"u":
            raise Step("the user namespace could not be made")
        for which in ("uid_map", "gid_map"):
            with open(f"/proc/{helper}/{which}", "w") as f:
                f.write(userns.id_map(base, idmap.SIZE))
        os.write(down, b"m")
        answer = os.read(up, 32)
        if not answer.isdigit():
            raise Step("the container's namespaces could not be made")
        return int(answer)
    finally:
        os.close(down)
        os.close(up)
        os.waitpid(helper, 0)


def _helper(
    spec: LaunchRequest, sock: socket.socket, errpipe: int, go: int | None, up: int, down: int
) -> None:
    """In the helper: U, then the namespaces U owns, then init.  Never returns."""
    status = 1
    try:
        libc.unshare(libc.CLONE_NEWUSER)
        os.write(up, b"u")
        if os.read(down, 1) == b"m":
            userns.be_root()
            libc.unshare(OWNED | libc.CLONE_NEWPID | libc.CLONE_NEWTIME)
            _start_clocks_at_zero()
            init = os.fork()
            if init == 0:
                os.close(up)
                os.close(down)
                run_init(errpipe, lambda: _init(spec, sock, errpipe, go))
            os.write(up, str(init).encode())
            status = 0
    finally:
        os._exit(status)


def _start_clocks_at_zero() -> None:
    """The time namespace init is born into counts boot time from now: sysinfo(2) and
    the kernel's /proc/uptime show the container's uptime (CRIU carries the offset
    through checkpoints).  Set before any process enters the namespace."""
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    seconds, nanoseconds = divmod(-now, 1_000_000_000)
    # Becoming root of U made this process non-dumpable, which gives its /proc
    # files to the host's root; for as long as the write takes, they are its own.
    libc.prctl(libc.PR_SET_DUMPABLE, 1)
    try:
        with open("/proc/self/timens_offsets", "w") as f:
            f.write(f"boottime {seconds} {nanoseconds}\n")
    finally:
        libc.prctl(libc.PR_SET_DUMPABLE, 0)


def _init(spec: LaunchRequest, sock: socket.socket, errpipe: int, go: int | None) -> None:
    """In init (PID 1, root of U): wait for the mounts, enter them, exec."""
    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    sock.close()
    if not fds:
        raise Step("the container's mounts were not built")
    step("enter the container's mounts", libc.setns, fds[0], libc.CLONE_NEWNS)
    os.close(fds[0])
    os.chdir("/")
    os.umask(0o022)
    step("sethostname", libc.sethostname, spec.hostname)
    step("bring up lo", loopback_up)
    exec_init(spec, errpipe, go)


def _build_mounts(spec: LaunchRequest, init: int, base: int) -> int:
    """The container's mount namespace, built here and locked; a descriptor of it.

    Leaves this process root of U in that namespace (it only replies to ctfsd
    afterwards).
    """
    host_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    names = ("user", "net", "uts", "ipc", "cgroup")
    spaces = {n: os.open(f"/proc/{init}/ns/{n}", os.O_RDONLY | os.O_CLOEXEC) for n in names}
    try:
        step("unshare the mount namespace", libc.unshare, libc.CLONE_NEWNS)
        # sysfs shows the network namespace, mqueue the IPC namespace, cgroup2 the
        # cgroup namespace, of its mounter.
        for name in ("net", "uts", "ipc", "cgroup"):
            step(f"enter the container's {name} namespace", libc.setns, spaces[name], 0)
        owner = Owner(base, f"/proc/{init}/ns/pid", spaces["user"])
        mount_filesystems(spec.root, owner, cgroup2=spec.cgroup_birth is not None)
        taken = view_mounts.take(spec.views or [])
        pivot(spec.root)
        step("become the container's root", userns.become_root, spaces["user"])
        step("lock the container's mounts", libc.unshare, libc.CLONE_NEWNS)
        # After the lock, so that the views are the container's to unmount.
        view_mounts.put(taken)
        return os.open(f"{os.getpid()}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=host_proc)
    finally:
        for fd in (host_proc, *spaces.values()):
            os.close(fd)
