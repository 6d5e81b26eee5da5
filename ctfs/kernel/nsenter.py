"""Joining a running container: its cgroups, namespaces, root and security baseline.

Used by ``ctfs exec``/``ctfs enter``, a single-threaded process that then forks the
command.  Every ``ctfs exec`` pays for this module's imports, so it keeps to os and
``ctfs.kernel.libc``.
"""

from __future__ import annotations

import os

from ctfs.kernel import CGROUP_ROOT, libc

# Order matters: the mount namespace last, since /proc paths change meaning after it.
# time: a restored container runs in the time namespace CRIU made for it; a process
# joining it must see the same clocks, or the next checkpoint cannot be restored.
ALL_NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "time", "mnt")


def _cgroup_dirs(pid: int) -> list[str]:
    """The cgroup directories of ``pid`` in every hierarchy ctfs manages.

    v1: one per controller line (named hierarchies such as name=systemd are the
    host init's and skipped).  v2: the one ``0::`` line, when the unified
    hierarchy is mounted at CGROUP_ROOT (on a hybrid host it holds no controller
    ctfs uses, and is skipped).
    """
    unified = os.path.exists(f"{CGROUP_ROOT}/cgroup.controllers")
    dirs: list[str] = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                if unified:
                    dirs.append(f"{CGROUP_ROOT}/{path.lstrip('/')}".rstrip("/"))
                continue
            if controllers.startswith("name="):
                continue
            for controller in controllers.split(","):
                base = f"{CGROUP_ROOT}/{controller}"
                if os.path.exists(f"{base}/cgroup.procs"):
                    dirs.append(f"{base}/{path.lstrip('/')}".rstrip("/"))
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
        # v1: "0" in tasks moves the calling thread without the kernel's global
        # threadgroup lock (see CgroupsV1.join_files); the caller is single-threaded.
        # v2 has no tasks file: cgroup.procs moves the whole (one-thread) process.
        for cgroup_dir in _cgroup_dirs(init_pid):
            name = "tasks" if os.path.exists(f"{cgroup_dir}/tasks") else "cgroup.procs"
            with open(f"{cgroup_dir}/{name}", "w") as f:
                f.write("0")
        # Whatever init may not have, the joining process may not have either.
        allowed = _bounding_set(init_pid)
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last_cap = int(f.read())
        for cap in range(last_cap + 1):
            if not allowed & (1 << cap):
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
        for ns in ALL_NAMESPACES:
            libc.setns(ns_fds[ns])
    finally:
        for fd in ns_fds.values():
            os.close(fd)
