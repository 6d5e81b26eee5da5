"""A crash, kill or upgrade of ctfsd is a pause for the readers, never an error.

The keeper holds the mount while ctfsds come and go (see ctfsd(8)); these tests
read through it from other processes while ctfsd is killed, restarted and
re-executed, and count every error those readers get.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctfs.keeper import paths_for
from tests.ctfsd_harness import CTFS, Ctfsd, ctfs_exec, process_gone, wait_for, write_errno

# Reads until the stop file appears; prints its count of reads, then one line per error.
READER = r"""
import os, sys
stop, *paths = sys.argv[1:]
reads, errors = 0, []
while not os.path.exists(stop):
    for path in paths:
        try:
            if path.endswith("/"):
                os.listdir(path)
            else:
                with open(path, "rb") as f:
                    f.read()
            reads += 1
        except OSError as exc:
            errors.append(f"{path}: {exc}")
print(reads)
print("\n".join(errors[:20]))
"""


class Readers:
    """Reader processes looping over ``paths`` until ``finish``; ended by PID."""

    def __init__(self, stop_file: Path, paths: list[str], count: int) -> None:
        self.stop_file = stop_file
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", READER, str(stop_file), *paths],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(count)
        ]

    def finish(self, timeout: float = 30) -> tuple[int, list[str]]:
        """Stop the loops; the total of reads and every error.  A hung reader fails."""
        self.stop_file.touch()
        reads, errors = 0, []
        for proc in self.procs:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"reader PID {proc.pid} hung")
            first, _, rest = out.partition("\n")
            reads += int(first)
            errors += [line for line in rest.splitlines() if line]
        return reads, errors

    def end(self) -> None:
        for proc in self.procs:
            _end(proc)


def _end(proc: subprocess.Popen[Any]) -> None:
    """End a process this test started, by its PID, if it still runs."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture
def readers(tmp_path: Path) -> Iterator[list[Readers]]:
    made: list[Readers] = []
    try:
        yield made
    finally:
        for group in made:
            group.end()


@pytest.fixture
def restored(ctfsd: Ctfsd) -> Iterator[Ctfsd]:
    """The session's ctfsd, serving again after the test whatever it did."""
    try:
        yield ctfsd
    finally:
        if ctfsd.proc is None or ctfsd.proc.poll() is not None:
            ctfsd.start()


def _paths(mount: Path, container: Path) -> list[str]:
    return [
        str(mount / "version"),
        f"{mount}/",
        str(container / "state"),
        str(container / "procs"),
        str(container / "limits"),
    ]


def _mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


def test_a_reader_waiting_while_no_ctfsd_runs_gets_its_answer(restored: Ctfsd, mount: Path) -> None:
    restored.kill()
    reader = subprocess.Popen(["cat", str(mount / "version")], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        assert reader.poll() is None, "the reader must wait for a ctfsd, not fail"
        restored.start()
        out, _ = reader.communicate(timeout=10)
    finally:
        _end(reader)
    assert reader.returncode == 0
    assert out.startswith("ctfs ")


def test_a_request_under_way_when_ctfsd_is_killed_is_answered_by_the_next(
    restored: Ctfsd, running: Path
) -> None:
    # A stopped init cannot act on its halt signal: the stop waits out the stop
    # timeout (3 s in the harness), so the write is still under way at the kill.
    init = int((running / "procs").read_text().split()[0])
    os.kill(init, signal.SIGSTOP)
    writer = subprocess.Popen(["sh", "-c", f"echo stopped > {running}/state"])
    try:
        time.sleep(1)
        assert writer.poll() is None, "the stop must still be under way"
        restored.kill()
        restored.start()
        assert writer.wait(timeout=30) == 0
    finally:
        _end(writer)
    assert (running / "state").read_text() == "stopped\n"


def test_twenty_kills_at_random_moments_cost_the_readers_nothing(
    restored: Ctfsd, running: Path, readers: list[Readers], tmp_path: Path
) -> None:
    group = Readers(tmp_path / "stop", _paths(restored.mount, running), count=4)
    readers.append(group)
    chance = random.Random(os.getpid())
    for kill in range(20):
        time.sleep(chance.uniform(0.0, 0.6))
        restored.kill()
        if kill % 2:
            restored.launch()  # to be killed wherever its start has got, takeover included
        else:
            restored.start()  # to be killed while serving
    restored.kill()
    restored.start()
    reads, errors = group.finish()
    assert errors == []
    assert reads > 0
    assert (running / "state").read_text() == "running\n"


@pytest.fixture
def running_neighbour(restored: Ctfsd, mount: Path, new_ctid: int) -> Iterator[Path]:
    """A second running container; stopped and destroyed afterwards."""
    path = mount / str(new_ctid + 5000)
    path.mkdir()
    try:
        assert write_errno(path / "state", b"running") == 0
        yield path
    finally:
        if restored.proc is None or restored.proc.poll() is not None:
            restored.start()
        write_errno(path / "state", b"stopped")
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()


def _reader_inside(container: Path) -> subprocess.Popen[str]:
    """Loops inside ``container`` over its own files and its views until
    /tmp/stop-readers appears there; prints its reads and failures."""
    files = f"/ctfs/{container.name}/state /ctfs/{container.name}/limits /proc/meminfo /proc/uptime"
    loop = (
        "r=0; f=0; while [ ! -e /tmp/stop-readers ]; do "
        f"for p in {files}; do "
        "if cat $p >/dev/null; then r=$((r+1)); else f=$((f+1)); fi; done; done; "
        "echo reads=$r fails=$f"
    )
    command = [str(CTFS), "--mount", str(container.parent), "exec", container.name, "--"]
    return subprocess.Popen(
        [*command, "sh", "-c", loop], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_twenty_kills_and_an_upgrade_cost_readers_inside_and_outside_nothing(
    restored: Ctfsd,
    running: Path,
    running_neighbour: Path,
    readers: list[Readers],
    tmp_path: Path,
) -> None:
    group = Readers(tmp_path / "stop", _paths(restored.mount, running), count=2)
    readers.append(group)
    containers = (running, running_neighbour)
    inside = [_reader_inside(container) for container in containers]
    outcomes = []
    try:
        chance = random.Random(os.getpid())
        for kill in range(20):
            time.sleep(chance.uniform(0.0, 0.6))
            if kill == 11:
                restored.upgrade()  # once, in place, while they all read
            restored.kill()
            if kill % 2:
                restored.launch()  # to be killed wherever its start has got
            else:
                restored.start()
        restored.kill()
        restored.start()
        for container, proc in zip(containers, inside, strict=True):
            assert ctfs_exec(container, "touch", "/tmp/stop-readers").returncode == 0
            outcomes.append((container.name, *proc.communicate(timeout=60)))
    finally:
        for proc in inside:
            _end(proc)
    reads, errors = group.finish()
    assert errors == []
    assert reads > 0
    for name, out, err in outcomes:
        counts = dict(word.split("=") for word in out.split())
        assert counts["fails"] == "0", f"CT {name}: {err}"
        assert int(counts["reads"]) > 0


def test_a_reader_inside_a_container_sees_kills_as_pauses(restored: Ctfsd, running: Path) -> None:
    # /ctfs inside is a bind of the same mount: the same connection, the same keeper.
    loop = (
        "fails=0; i=0; while [ $i -lt 80 ]; do "
        f"cat /ctfs/{running.name}/state >/dev/null || fails=$((fails+1)); "
        "i=$((i+1)); sleep 0.05; done; echo fails=$fails"
    )
    command = [str(CTFS), "--mount", str(running.parent), "exec", running.name, "--"]
    inside = subprocess.Popen([*command, "sh", "-c", loop], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            time.sleep(0.5)
            restored.kill()
            time.sleep(0.2)
            restored.start()
        out, _ = inside.communicate(timeout=60)
    finally:
        _end(inside)
    assert inside.returncode == 0
    assert out.strip() == "fails=0"


def test_sighup_upgrades_in_place_without_a_reader_noticing(
    restored: Ctfsd, running: Path, readers: list[Readers], tmp_path: Path
) -> None:
    assert restored.proc is not None
    pid = restored.proc.pid
    procs = (running / "procs").read_text()
    group = Readers(tmp_path / "stop", _paths(restored.mount, running), count=3)
    readers.append(group)
    for _ in range(3):
        restored.upgrade()
        time.sleep(0.3)
    reads, errors = group.finish()
    assert errors == []
    assert reads > 0
    assert restored.proc.pid == pid and restored.proc.poll() is None
    assert (running / "procs").read_text() == procs
    # The re-executed ctfsd still collects its containers: a stop is a clean stop.
    assert write_errno(running / "state", b"stopped") == 0


def test_sighup_lets_a_request_under_way_finish_first(restored: Ctfsd, running: Path) -> None:
    init = int((running / "procs").read_text().split()[0])
    os.kill(init, signal.SIGSTOP)  # the stop takes the whole stop timeout (3 s)
    writer = subprocess.Popen(["sh", "-c", f"echo stopped > {running}/state"])
    try:
        time.sleep(1)
        assert writer.poll() is None, "the stop must still be under way"
        restored.upgrade()
        assert writer.wait(timeout=30) == 0
    finally:
        _end(writer)
    log = restored.log_text()
    # Answered by the ctfsd that took it, before it re-executed: not done twice.
    assert log.index(f"CT {running.name}: killed") < log.rindex("re-executing")
    assert log.count(f"CT {running.name}: killed") == 1
    assert (running / "state").read_text() == "stopped\n"


def test_sigterm_unmounts_and_ends_the_keeper(restored: Ctfsd, mount: Path) -> None:
    keeper = restored.keeper_pid()
    assert keeper is not None
    assert restored.terminate() == 0
    assert not _mounted(mount)
    assert wait_for(lambda: process_gone(keeper), timeout=10)
    paths = paths_for(mount)
    assert not paths.socket.exists() and not paths.pidfile.exists()


def test_sigterm_leaves_the_mount_to_the_keeper_while_containers_run(
    restored: Ctfsd, running: Path
) -> None:
    # Their views inside are binds of the mount: unmounting would break them for good.
    keeper = restored.keeper_pid()
    assert restored.terminate() == 0
    assert _mounted(running.parent)
    assert keeper is not None and not process_gone(keeper)
    restored.start()
    command = [str(CTFS), "--mount", str(running.parent), "exec", running.name, "--"]
    inside = subprocess.run(
        [*command, "cat", "/proc/uptime", f"/ctfs/{running.name}/state"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.endswith("running\n")


def test_ending_the_keeper_while_no_ctfsd_runs_releases_the_readers(
    restored: Ctfsd, mount: Path
) -> None:
    # The escape hatch when no ctfsd will come back: readers get ENOTCONN, not a hang.
    restored.kill()
    reader = subprocess.Popen(["cat", str(mount / "version")], stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        assert reader.poll() is None
        restored.end_keeper()
        assert reader.wait(timeout=10) != 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            reader.kill()
        reader.wait()
    assert not _mounted(mount)
