"""CRIU's action script asks ctfsd through two FIFOs (ctfs.kernel.criu_action): the
script is run here as CRIU runs it, with CRIU's environment."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from ctfs.kernel.criu_action import ActionServer, script


def _run_script(work: Path, stage: str, pid: str = "4242") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRTOOLS_SCRIPT_ACTION": stage, "CRTOOLS_INIT_PID": pid}
    return subprocess.run([str(script(work))], env=env, capture_output=True, text=True, timeout=10)


def test_the_script_has_ctfsd_act_for_the_restored_init(tmp_path: Path) -> None:
    seen: list[int] = []
    server = ActionServer(tmp_path, seen.append)
    try:
        done = _run_script(tmp_path, "post-setup-namespaces")
    finally:
        server.close()
    assert (done.returncode, seen) == (0, [4242])


def test_a_failed_action_fails_the_script_with_its_reason(tmp_path: Path) -> None:
    def refuse(pid: int) -> None:
        raise OSError(f"no veth for {pid}")

    server = ActionServer(tmp_path, refuse)
    try:
        done = _run_script(tmp_path, "post-setup-namespaces")
    finally:
        server.close()
    assert done.returncode == 1
    assert "no veth for 4242" in done.stderr
    assert server.error is not None and "no veth for 4242" in server.error


def test_other_stages_ask_nothing(tmp_path: Path) -> None:
    seen: list[int] = []
    server = ActionServer(tmp_path, seen.append)
    try:
        done = _run_script(tmp_path, "pre-restore")
    finally:
        server.close()
    assert (done.returncode, seen) == (0, [])


def test_closing_a_server_never_asked_returns_at_once_and_leaves_no_fifo(tmp_path: Path) -> None:
    server = ActionServer(tmp_path, lambda pid: None)
    began = time.monotonic()
    server.close()
    assert time.monotonic() - began < 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
