"""Joining a running container: its cgroups, namespaces, root and security baseline.

Used by ``ctfs exec``/``ctfs enter`` (a single-threaded process that then forks
the command) and by ctfsd to change a running container's host name (in a
throw-away thread, because setns changes only the calling thread's UTS namespace).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ctfs.kernel import libc
from ctfs.kernel.cgroups import CGROUP_ROOT

T = TypeVar("T")

# Order matters: the mount namespace last, since /proc paths change meaning after it.
ALL_NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "mnt")


def _cgroup_dirs(pid: int) -> list[Path]:
    """The v1 cgroup directories of ``pid`` that ctfs manages (skips named hierarchies)."""
    dirs: list[Path] = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers or controllers.startswith("name="):
                continue
            for controller in controllers.split(","):
                base = CGROUP_ROOT / controller
                if (base / "cgroup.procs").exists():
                    dirs.append(base / path.lstrip("/"))
                    break
    return dirs


def _bounding_set(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    raise OSError(f"no CapBnd for {pid}")


def join_container(init_pid: int) -> None:
    """Move the calling (single-threaded) process into the container of ``init_pid``.

    Afterwards its root and cwd are the container's root; the pid namespace applies
    to children, so the caller must fork before running anything.
    """
    ns_fds = {
        ns: os.open(f"/proc/{init_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        for ns in ALL_NAMESPACES
    }
    try:
        for cgroup_dir in _cgroup_dirs(init_pid):
            with open(cgroup_dir / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
        # Whatever init may not have, the joining process may not have either.
        allowed = _bounding_set(init_pid)
        last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last_cap + 1):
            if not allowed & (1 << cap):
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
        for ns in ALL_NAMESPACES:
            libc.setns(ns_fds[ns])
    finally:
        for fd in ns_fds.values():
            os.close(fd)


def _in_uts_namespace(init_pid: int, action: Callable[[], T]) -> T:
    """Run ``action`` in a throw-away thread that has joined the UTS namespace of ``init_pid``."""
    result: list[T] = []
    errors: list[BaseException] = []

    def in_namespace() -> None:
        # A fresh thread: if switching back failed, the foreign namespace dies with it.
        try:
            own = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
            target = os.open(f"/proc/{init_pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc.setns(target, libc.CLONE_NEWUTS)
                try:
                    result.append(action())
                finally:
                    libc.setns(own, libc.CLONE_NEWUTS)
            finally:
                os.close(own)
                os.close(target)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_namespace, name="ctfs-uts")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def set_hostname(init_pid: int, name: str) -> None:
    """Set the host name in the UTS namespace of ``init_pid``."""
    _in_uts_namespace(init_pid, lambda: libc.sethostname(name))


def get_hostname(init_pid: int) -> str:
    """The live host name in the UTS namespace of ``init_pid``."""
    return _in_uts_namespace(init_pid, lambda: os.uname().nodename)
