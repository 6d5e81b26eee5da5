"""Attack: system calls a container's root could use against the host (seccomp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ctfsd_harness import ctfs_exec

DENIED = [
    # Attack 3 of the isolation issue: a handle opened past the mounts.
    ("open_by_handle_at", "EPERM"),
    ("kexec_load", "EPERM"),
    ("init_module", "EPERM"),
    ("finit_module", "EPERM"),
    ("delete_module", "EPERM"),
    ("bpf", "EPERM"),
    ("perf_event_open", "EPERM"),
    ("userfaultfd", "EPERM"),
    ("acct", "EPERM"),
    ("swapoff", "EPERM"),
    # The keyring is the host's: it answers as a kernel without one would.
    ("keyctl", "ENOSYS"),
]


def _probe(running: Path, probe: str, call: str) -> str:
    done = ctfs_exec(running, probe, call)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[1]


@pytest.mark.parametrize(("call", "expected"), DENIED, ids=[c for c, _ in DENIED])
def test_a_denied_call_fails_from_an_exec_session(
    running: Path, probe: str, call: str, expected: str
) -> None:
    assert _probe(running, probe, call) == expected


def test_every_process_of_the_container_runs_under_the_filter(running: Path) -> None:
    # Inherited from init by everything the template starts (syslogd here).
    pids = (running / "procs").read_text().split()
    assert len(pids) >= 2
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        assert "Seccomp:\t2" in status, pid  # SECCOMP_MODE_FILTER


def test_a_block_device_node_cannot_even_be_made(running: Path) -> None:
    done = ctfs_exec(running, "mknod", "/tmp/ctfs-loop", "b", "7", "0")
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr
