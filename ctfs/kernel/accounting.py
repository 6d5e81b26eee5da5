"""What ctfs counts itself, where the kernel keeps no per-container count.

Files, sockets, file locks, pseudo-terminals, pending signals, locked and private
memory of a container's processes (from /proc); TCP sockets, UDP queues and packet
filter rules of its network namespace (sockstat, netlink).  One ``count`` per
container reads a few small /proc files per process, so a host with a thousand
idle containers is scanned in well under a second.
Processes may exit while they are counted: whatever vanished counts as nothing.

Never /proc/<pid>/net/tcp: it walks the host's whole TCP hash table (shared by
every namespace unless tcp_child_ehash_entries is set), 4-5 ms per read here, which
made a thousand containers cost 9 s.  The namespace's sockstat counts the same
sockets in microseconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ctfs.kernel import nft_rules
from ctfs.kernel.api import ProcessCounts

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _status_fields(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
    except (FileNotFoundError, ProcessLookupError):
        pass
    return fields


def _kb(fields: dict[str, str], key: str) -> int:
    value = fields.get(key, "0 kB").split()
    return int(value[0]) if value else 0


def _fds(pid: int) -> tuple[int, int]:
    """(open files, sockets among them) of one process."""
    files = sockets = 0
    try:
        with os.scandir(f"/proc/{pid}/fd") as entries:
            for entry in entries:
                files += 1
                try:
                    if os.readlink(entry.path).startswith("socket:"):
                        sockets += 1
                except OSError:
                    pass
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return files, sockets


def _net_queues(init_pid: int, table: str) -> tuple[int, int, int]:
    """(sockets, tx bytes, rx bytes) in /proc/<init>/net/<table>: the container's netns."""
    count = tx = rx = 0
    try:
        with open(f"/proc/{init_pid}/net/{table}") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    tx_hex, _, rx_hex = fields[4].partition(":")
                    count += 1
                    tx += int(tx_hex, 16)
                    rx += int(rx_hex, 16)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return count, tx, rx


def _sockets_in_use(init_pid: int, table: str, protocol: str) -> int:
    """``<protocol>: inuse N`` from the namespace's /proc/net/sockstat or sockstat6."""
    try:
        with open(f"/proc/{init_pid}/net/{table}") as f:
            for line in f:
                words = line.split()
                if words and words[0] == f"{protocol}:" and "inuse" in words:
                    return int(words[words.index("inuse") + 1])
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        pass
    return 0


def _ptys(init_pid: int) -> int:
    try:
        return sum(1 for name in os.listdir(f"/proc/{init_pid}/root/dev/pts") if name.isdigit())
    except OSError:
        return 0


def lock_holders() -> dict[int, int]:
    """File locks per host PID, from /proc/locks (read once for all containers)."""
    holders: dict[int, int] = {}
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "1: POSIX  ADVISORY  WRITE 1234 08:01:1234 0 EOF"; "->" marks waiters.
                if len(fields) > 4 and fields[1] != "->":
                    pid = int(fields[4]) if fields[4].isdigit() else -1
                    holders[pid] = holders.get(pid, 0) + 1
    except FileNotFoundError:
        pass
    return holders


def count(pids: Iterable[int], init_pid: int | None, locks: dict[int, int]) -> ProcessCounts:
    """Everything ctfs counts for the container whose processes are ``pids``."""
    files = sockets = file_locks = signals = locked_kb = private_kb = 0
    for pid in pids:
        fields = _status_fields(pid)
        if not fields:
            continue
        locked_kb += _kb(fields, "VmLck")
        private_kb += _kb(fields, "VmData") + _kb(fields, "VmStk")
        for key in ("SigPnd", "ShdPnd"):
            signals += bin(int(fields.get(key, "0"), 16)).count("1")
        f, s = _fds(pid)
        files += f
        sockets += s
        file_locks += locks.get(pid, 0)
    tcp = udp_tx = udp_rx = ptys = rules = 0
    if init_pid is not None:
        try:
            rules = nft_rules.count(init_pid)
        except OSError:
            rules = 0  # init is gone meanwhile
        tcp = _sockets_in_use(init_pid, "sockstat", "TCP")
        tcp += _sockets_in_use(init_pid, "sockstat6", "TCP6")
        for table in ("udp", "udp6"):
            _, tx, rx = _net_queues(init_pid, table)
            udp_tx, udp_rx = udp_tx + tx, udp_rx + rx
        ptys = _ptys(init_pid)
    return ProcessCounts(
        files=files,
        sockets=sockets,
        tcp_sockets=tcp,
        firewall_rules=rules,
        file_locks=file_locks,
        ptys=ptys,
        pending_signals=signals,
        locked_pages=locked_kb // PAGE_KB,
        private_pages=private_kb // PAGE_KB,
        udp_send_bytes=udp_tx,
        udp_receive_bytes=udp_rx,
    )
