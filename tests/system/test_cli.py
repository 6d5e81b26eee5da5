"""The ctfs command: list, exec, enter."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

from tests.ctfsd_harness import CTFS, ctfs_exec


def _ctfs(mount: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CTFS), "--mount", str(mount), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def test_exec_runs_the_command_inside_and_prints_its_output(running: Path) -> None:
    result = ctfs_exec(running, "cat", "/etc/os-release")
    assert result.returncode == 0
    assert "BusyBox" in result.stdout


def test_exec_sees_only_the_containers_processes_with_init_as_pid_1(running: Path) -> None:
    lines = ctfs_exec(running, "ps", "-o", "pid,comm").stdout.split("\n")[1:]
    processes = {tuple(line.split(None, 1)) for line in lines if line.strip()}
    assert ("1", "init") in processes
    assert len(processes) < 10


def test_exec_returns_the_commands_exit_status(running: Path) -> None:
    assert ctfs_exec(running, "sh", "-c", "exit 7").returncode == 7


def test_exec_of_a_missing_command_is_127(running: Path) -> None:
    result = ctfs_exec(running, "no-such-command")
    assert result.returncode == 127
    assert "not found" in result.stderr


def test_exec_in_a_stopped_container_is_125_with_a_reason(container: Path) -> None:
    result = ctfs_exec(container, "true")
    assert result.returncode == 125
    assert "not running" in result.stderr


def test_exec_passes_no_host_file_descriptor_into_the_container(running: Path) -> None:
    with open("/dev/null") as extra:  # an inherited descriptor beyond stdio
        result = subprocess.run(
            [
                str(CTFS),
                "--mount",
                str(running.parent),
                "exec",
                running.name,
                "--",
                "ls",
                "/proc/self/fd",
            ],
            capture_output=True,
            text=True,
            pass_fds=(extra.fileno(),),
            check=False,
        )
    # ls itself holds one descriptor on the directory it lists.
    assert set(result.stdout.split()) <= {"0", "1", "2", "3"}


def test_list_shows_ctid_nproc_status_and_hostname(running: Path) -> None:
    out = _ctfs(running.parent, "list").stdout.splitlines()
    assert out[0].split() == ["CTID", "NPROC", "STATUS", "HOSTNAME"]
    row = next(line.split() for line in out[1:] if line.split()[0] == running.name)
    assert row[2] == "running" and row[3] == f"ct{running.name}" and int(row[1]) >= 1


def test_list_shows_stopped_containers_without_a_process_count(container: Path) -> None:
    out = _ctfs(container.parent, "list", "--no-header").stdout.splitlines()
    row = next(line.split() for line in out if line.split()[0] == container.name)
    assert row[1:3] == ["-", "stopped"]


def test_enter_runs_a_login_shell_inside(running: Path) -> None:
    result = _ctfs(running.parent, "enter", running.name, stdin="hostname; exit 3\n")
    assert result.returncode == 3
    assert f"ct{running.name}" in result.stdout


def _run_on_host_terminal(args: list[str], keystrokes: bytes) -> tuple[int, str]:
    """Run ``ctfs`` on a host pseudo-terminal; type ``keystrokes`` at the first prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(CTFS), *args], stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    screen = b""
    typed = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: ctfs exited and closed the terminal
                break
            screen += chunk
            if not typed and b"# " in screen:
                os.write(master, keystrokes)
                typed = True
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), screen.decode(errors="replace")


def test_enter_from_a_terminal_gets_a_terminal_of_the_containers_own(running: Path) -> None:
    host_terminals = set(os.listdir("/dev/pts"))
    status, screen = _run_on_host_terminal(
        ["--mount", str(running.parent), "enter", running.name],
        b"tty; readlink /proc/$$/fd/0; exit 4\n",
    )
    assert status == 4
    # The container's devpts is a new instance: its first terminal is /dev/pts/0,
    # and the host's terminal never reaches the shell.
    assert "/dev/pts/0" in screen
    assert host_terminals  # the test itself ran on one
