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
values of ``ctfs.kernel.launch_values``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from dataclasses import asdict

from ctfs.kernel import libc, spawn_private, view_mounts
from ctfs.kernel.container_mounts import mount_filesystems, pivot, step
from ctfs.kernel.handoff import born, exec_init, hand_over, loopback_up, run_init
from ctfs.kernel.launch_values import LaunchReply, LaunchRequest

NAMESPACES = (
    libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWNET | libc.CLONE_NEWPID
)


def _become_init(spec: LaunchRequest, errpipe: int, go: int | None) -> None:
    """Runs in the child (PID 1 of the new pid namespace); never returns."""
    # Rooted where this process was born: the container's cgroup in every hierarchy.
    step("unshare the cgroup namespace", libc.unshare, libc.CLONE_NEWCGROUP)
    os.umask(0o022)
    mount_filesystems(spec.root, cgroup2=spec.cgroup_birth is not None)
    taken = view_mounts.take(spec.views or [])
    pivot(spec.root)
    view_mounts.put(taken)
    step("sethostname", libc.sethostname, spec.hostname)
    step("bring up lo", loopback_up)
    exec_init(spec, errpipe, go)


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
    except OSError as exc:
        return LaunchReply(error=f"cannot enter the container's cgroups: {exc.strerror or exc}")
    if spec.id_base is not None:
        return spawn_private.launch(spec, talk)
    try:
        libc.unshare(NAMESPACES)
    except OSError as exc:
        return LaunchReply(error=f"cannot make namespaces: {exc.strerror or exc}")
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    go_read, go_write = os.pipe2(os.O_CLOEXEC) if spec.hold else (None, None)
    try:
        pid = born(spec)
    except OSError as exc:
        return LaunchReply(error=f"cannot start init: {exc.strerror or exc}")
    if pid == 0:
        os.close(read_end)
        if go_write is not None:
            os.close(go_write)
        run_init(write_end, lambda: _become_init(spec, write_end, go_read))
    os.close(write_end)
    if go_read is not None:
        os.close(go_read)
    return hand_over(pid, talk, read_end, go_write, child=True)


def serve(control: socket.socket) -> None:
    """Answer launch requests until ctfsd closes ``control``.

    Each request is a JSON spec with one socket attached; a forked copy of this
    (single-threaded, already imported) process carries it out and sends the reply
    on that socket.  Forking a warm process instead of starting an interpreter per
    container keeps Python's start-up cost out of every container start.

    Finished copies are reaped by the kernel (SIGCHLD ignored here), so none
    lingers as a zombie between two starts; each copy restores the default first,
    since an ignored SIGCHLD would survive into the container's init.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 20, 1)
        except InterruptedError:
            continue
        if not message:
            return  # ctfsd is gone
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        reply_fd = fds[0]
        if os.fork() == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
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


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] != "--serve":
        sys.stderr.write("usage: python -m ctfs.kernel.spawner --serve FD (ctfsd runs this)\n")
        return 2
    with socket.socket(fileno=int(sys.argv[2])) as control:
        serve(control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
