"""Process facts read from /proc."""

from __future__ import annotations


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


def find_init(pids: list[int]) -> int | None:
    """The container's init among ``pids``: the one that is PID 1 in its namespace."""
    for pid in pids:
        nspids = namespace_pids(pid)
        if nspids and len(nspids) > 1 and nspids[-1] == 1:
            return pid
    return None
