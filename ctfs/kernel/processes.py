"""The ``Processes`` backend: facts about containers' processes, read from /proc,
and what ctfsd does inside a running container's namespaces."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable

from ctfs.kernel import accounting, proc_facts, uts
from ctfs.kernel.api import EVERYTHING, Counted, Placement, ProcessCounts, TaskStates

NAMESPACES = ("user", "pid", "mnt", "net", "uts", "ipc", "cgroup")


def namespace_pids(pid: int) -> list[int] | None:
    """The PID in every nested pid namespace (``NSpid``), host first; None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


class HostProcesses:
    def __init__(self) -> None:
        self._own_namespace = _pid_namespace(os.getpid())

    def task_states(self, pids: Iterable[int]) -> TaskStates:
        return proc_facts.task_states(pids)

    def started_at(self, pid: int) -> float | None:
        return proc_facts.started_at(pid)

    def will_be_ours(self, pid: int) -> bool:
        parent = proc_facts.parent_of(pid)
        return parent is not None and proc_facts.under(parent, os.getpid())

    def host_memory(self) -> tuple[int, int]:
        return proc_facts.host_memory()

    def cpuinfo(self) -> str:
        return proc_facts.cpuinfo()

    def find_init(self, pids: Iterable[int]) -> int | None:
        """The container's init among ``pids``: the one that is PID 1 in its namespace."""
        for pid in pids:
            nspids = namespace_pids(pid)
            if nspids and len(nspids) > 1 and nspids[-1] == 1:
                return pid
        return None

    def outside_pid_namespace(self, init_pid: int, pids: Iterable[int]) -> list[int]:
        own = _pid_namespace(init_pid)
        if own is None:
            return []
        outside = set()
        for pid in pids:
            theirs = _pid_namespace(pid)
            if theirs is not None and theirs != own:
                outside.add(pid)
            elif theirs == own and pid != init_pid:
                parent = proc_facts.parent_of(pid)
                if parent is not None and _pid_namespace(parent) not in (own, None):
                    outside.add(parent)
        return sorted(outside)

    def same_pid_namespace(self, pid: int) -> bool | None:
        theirs = _pid_namespace(pid)
        return None if theirs is None else theirs == self._own_namespace

    def lock_holders(self) -> dict[int, int]:
        return accounting.lock_holders()

    def count(
        self,
        pids: Iterable[int],
        init: int | None,
        locks: dict[int, int],
        wanted: frozenset[Counted] = EVERYTHING,
    ) -> ProcessCounts:
        return accounting.count(pids, init, locks, wanted)

    def set_hostname(self, init_pid: int, name: str) -> None:
        uts.set_hostname(init_pid, name)

    def tree(self, pid: int) -> list[int]:
        found: list[int] = []
        pending = [pid]
        while pending:
            current = pending.pop()
            if current in found:
                continue
            found.append(current)
            pending.extend(children(current))
        return found

    def placement(self, pid: int) -> Placement | None:
        try:
            namespaces = {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in NAMESPACES}
            root = os.stat(f"/proc/{pid}/root")
        except OSError:
            return None
        depth = len(namespace_pids(pid) or [])
        return Placement(namespaces, (root.st_dev, root.st_ino), depth)

    def own_placement(self) -> Placement:
        placement = self.placement(os.getpid())
        assert placement is not None
        return placement

    def uid_map(self, pid: int) -> str | None:
        try:
            with open(f"/proc/{pid}/uid_map") as f:
                return " ".join(f.read().split()) + "\n"
        except OSError:
            return None

    def resume(self, pids: Iterable[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def name_of(pid: int) -> str | None:
    """The command name of ``pid`` (/proc/PID/comm), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (/proc/PID/task/TID/children)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(word) for word in f.read().split())
        except OSError:
            continue
    return found
