"""Checkpoint and restore with the real CRIU: echo frozen, the dump file, echo running."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.ctfsd_harness import CTFS, Ctfsd, ctfs_exec, wait_for, write_errno
from tests.network_lab import Lab

# The loop's shell notes its own PID (the redirection is opened by that shell).
COUNTER = (
    "read -r me rest < /proc/self/stat; echo $me > /tmp/loop.pid; "
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done"
)


def _in(ct: Path, script: str) -> str:
    done = ctfs_exec(ct, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _background(ct: Path, script: str) -> None:
    _in(ct, f"({script}) </dev/null >/dev/null 2>&1 &")


def _counter(ct: Path) -> int:
    return int(_in(ct, "cat /tmp/counter").strip() or 0)


def _long_lived(ct: Path) -> dict[str, str]:
    """PID inside -> command line, of init, syslogd and the counter loop's shell."""
    pids = ["1", *_in(ct, "pidof syslogd").split(), _in(ct, "cat /tmp/loop.pid").strip()]
    return {pid: _in(ct, f"tr '\\0' ' ' < /proc/{pid}/cmdline") for pid in pids}


def _state(ct: Path) -> str:
    return (ct / "state").read_text().strip()


def _freeze(ct: Path) -> None:
    assert write_errno(ct / "state", b"frozen") == 0, (ct / "events").read_text()
    assert _state(ct) == "frozen"


def _restore(ct: Path) -> None:
    assert write_errno(ct / "state", b"running") == 0, (ct / "events").read_text()
    assert _state(ct) == "running"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def counting(running: Path) -> Path:
    """A running container with a shell counter loop."""
    _background(running, COUNTER)
    assert wait_for(lambda: _counter(running) > 2, timeout=5)
    return running


# ---------------------------------------------------------------- freezing


def test_freeze_ends_the_processes_and_reads_frozen(counting: Path, ctfsd: Ctfsd) -> None:
    _freeze(counting)
    assert (counting / "procs").read_text() == ""
    assert ctfsd.container_pids(int(counting.name)) == []
    assert (counting / "dump").stat().st_size > 0
    assert "frozen: freeze" in (counting / "events").read_text()


def test_counter_loop_carries_on_after_restore(counting: Path) -> None:
    before = _counter(counting)
    _freeze(counting)
    time.sleep(0.5)
    _restore(counting)
    assert wait_for(lambda: _counter(counting) > before + 3, timeout=5)
    # It continued from where it was, not from a fresh start.
    assert _counter(counting) < before + 60


def test_restored_processes_keep_their_pids_inside(counting: Path) -> None:
    before = _long_lived(counting)
    _freeze(counting)
    _restore(counting)
    assert _long_lived(counting) == before


def test_unlinked_open_file_and_pipe_survive(running: Path) -> None:
    _in(running, "echo 'still here' > /tmp/doomed")
    _background(
        running,
        "exec 3</tmp/doomed; rm /tmp/doomed; read -r me rest < /proc/self/stat; "
        "echo $me > /tmp/holder.pid; exec sleep 1000",
    )
    _background(running, "while true; do echo tick; sleep 0.05; done | "
                         "while read -r line; do date +%s%N > /tmp/through-pipe; done")  # fmt: skip
    assert wait_for(lambda: _in(running, "cat /tmp/through-pipe 2>/dev/null || true") > "0")
    assert wait_for(lambda: _in(running, "cat /tmp/holder.pid 2>/dev/null || true") != "")
    sleeper = _in(running, "cat /tmp/holder.pid").strip()
    _freeze(running)
    _restore(running)
    assert _in(running, f"cat /proc/{sleeper}/fd/3") == "still here\n"
    assert "(deleted)" in _in(running, f"readlink /proc/{sleeper}/fd/3")
    first = _in(running, "cat /tmp/through-pipe")
    assert wait_for(lambda: _in(running, "cat /tmp/through-pipe") != first, timeout=5)


def test_dump_copied_out_and_back_in_restores(counting: Path, tmp_path: Path) -> None:
    _freeze(counting)
    saved = tmp_path / "dump"
    shutil.copyfile(counting / "dump", saved)
    assert saved.stat().st_size == (counting / "dump").stat().st_size
    assert write_errno(counting / "state", b"stopped") == 0
    assert (counting / "dump").stat().st_size == 0
    shutil.copyfile(saved, counting / "dump")
    assert _state(counting) == "frozen"
    _restore(counting)
    assert wait_for(lambda: _counter(counting) > 3, timeout=5)


def test_stopping_a_frozen_container_discards_its_dump(counting: Path, ctfsd: Ctfsd) -> None:
    _freeze(counting)
    assert write_errno(counting / "state", b"stopped") == 0
    assert _state(counting) == "stopped"
    assert not (ctfsd.state / counting.name / "dump").exists()


def test_frozen_container_survives_a_daemon_restart(counting: Path, ctfsd: Ctfsd) -> None:
    _freeze(counting)
    digest = _sha(ctfsd.state / counting.name / "dump")
    ctfsd.terminate()
    ctfsd.start()
    assert _state(counting) == "frozen"
    assert _sha(ctfsd.state / counting.name / "dump") == digest
    _restore(counting)
    assert wait_for(lambda: _counter(counting) > 3, timeout=5)


def test_frozen_container_cannot_be_removed(counting: Path, mount: Path) -> None:
    _freeze(counting)
    with pytest.raises(OSError) as caught:
        counting.rmdir()
    assert caught.value.errno == errno.EBUSY


def test_freezing_a_stopped_container_is_einval(container: Path) -> None:
    assert write_errno(container / "state", b"frozen") == errno.EINVAL
    assert _state(container) == "stopped"


def test_dump_cannot_be_written_while_running(running: Path) -> None:
    assert write_errno(running / "dump", b"x") == errno.EBUSY
    assert "dump: refused" in (running / "events").read_text()


def test_freeze_is_refused_while_an_exec_session_runs(running: Path) -> None:
    session = subprocess.Popen(
        [str(CTFS), "--mount", str(running.parent), "exec", running.name, "--", "sleep", "30"]
    )
    try:
        assert wait_for(lambda: "sleep" in _in(running, "ps"), timeout=5)
        assert write_errno(running / "state", b"frozen") == errno.EBUSY
        assert _state(running) == "running"
        assert "ctfs exec or enter is running" in (running / "events").read_text()
    finally:
        session.kill()
        session.wait()


# ----------------------------------------------------------- failure paths


def _criu_children(daemon: Ctfsd) -> list[psutil.Process]:
    assert daemon.proc is not None
    found = []
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        try:
            if Path(child.exe()).name == "criu":
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_killed_criu_leaves_the_container_running(counting: Path, ctfsd: Ctfsd) -> None:
    # Enough memory to make the dump last long enough to be interrupted.
    _in(counting, "dd if=/dev/zero of=/dev/shm/ballast bs=1M count=48 2>/dev/null")
    result: list[int] = []
    writer = threading.Thread(
        target=lambda: result.append(write_errno(counting / "state", b"frozen"))
    )
    writer.start()
    killed = False
    deadline = time.monotonic() + 10
    while writer.is_alive() and time.monotonic() < deadline and not killed:
        for criu in _criu_children(ctfsd):
            criu.kill()  # by PID, as found among ctfsd's children
            killed = True
        time.sleep(0.001)
    writer.join(timeout=60)
    assert killed, "CRIU was never seen running"
    assert result == [errno.EIO]
    assert _state(counting) == "running"
    before = _counter(counting)
    assert wait_for(lambda: _counter(counting) > before + 2, timeout=5)
    assert "checkpoint failed, the container runs on" in (counting / "events").read_text()
    assert not (ctfsd.state / counting.name / "dump").exists()


def test_unwritable_dump_file_brings_the_container_back(counting: Path, ctfsd: Ctfsd) -> None:
    # A directory where the dump file goes makes its final rename fail after CRIU
    # has already ended the processes: ctfs must restore them from CRIU's images.
    blocker = ctfsd.state / counting.name / "dump"
    blocker.mkdir()
    try:
        assert write_errno(counting / "state", b"frozen") == errno.EIO
        assert _state(counting) == "running"
        before = _counter(counting)
        assert wait_for(lambda: _counter(counting) > before + 2, timeout=5)
        assert "the container runs on" in (counting / "events").read_text()
    finally:
        blocker.rmdir()


def test_damaged_dump_is_refused_and_stays_frozen(counting: Path, ctfsd: Ctfsd) -> None:
    _freeze(counting)
    dump = ctfsd.state / counting.name / "dump"
    with tarfile.open(dump) as archive:
        # Inside an image (the padding between members is not the container's).
        largest = max(archive.getmembers(), key=lambda m: m.size)
    data = bytearray(dump.read_bytes())
    data[largest.offset_data + largest.size // 2] ^= 0xFF  # as a bad disk would leave
    dump.write_bytes(bytes(data))
    digest = _sha(dump)
    assert write_errno(counting / "state", b"running") == errno.EIO
    assert _state(counting) == "frozen"
    assert _sha(dump) == digest
    assert ctfsd.container_pids(int(counting.name)) == []
    assert "the dump file is refused" in (counting / "events").read_text()


def test_truncated_dump_written_in_is_einval(counting: Path, tmp_path: Path) -> None:
    _freeze(counting)
    whole = (counting / "dump").read_bytes()
    assert write_errno(counting / "state", b"stopped") == 0
    fd = os.open(counting / "dump", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, whole[: len(whole) // 2])
    with pytest.raises(OSError) as caught:
        os.close(fd)
    assert caught.value.errno == errno.EINVAL
    assert _state(counting) == "stopped"
    assert "dump: rejected: not an intact ctfs dump" in (counting / "events").read_text()


def test_failed_restore_keeps_it_frozen_and_the_dump_untouched(
    counting: Path, ctfsd: Ctfsd
) -> None:
    _freeze(counting)
    dump = ctfsd.state / counting.name / "dump"
    digest = _sha(dump)
    # The restored processes run /bin/busybox: without it the restore must fail.
    busybox = ctfsd.state / counting.name / "root" / "bin" / "busybox"
    busybox.rename(busybox.with_name("busybox.away"))
    try:
        assert write_errno(counting / "state", b"running") == errno.EIO
        assert _state(counting) == "frozen"
        assert _sha(dump) == digest
        assert ctfsd.container_pids(int(counting.name)) == []
        assert "restore failed, the container stays frozen" in (counting / "events").read_text()
    finally:
        busybox.with_name("busybox.away").rename(busybox)
    _restore(counting)
    assert wait_for(lambda: _counter(counting) > 3, timeout=5)


# ---------------------------------------------------------------- network

ECHO_CLIENT = textwrap.dedent(
    """
    import select, socket, sys, time
    # Exchanges numbered messages every 10 ms over one connection until told on
    # stdin that the container was restored, then AFTER more, and prints how many.
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
    sock.settimeout(30)
    print("connected", flush=True)
    reader = sock.makefile("rb")
    sent, restored_at, after = 0, None, int(sys.argv[3])
    while restored_at is None or sent - restored_at < after:
        sent += 1
        sock.sendall(b"message %d\\n" % sent)
        echoed = reader.readline()
        if echoed != b"message %d\\n" % sent:
            print("mismatch", sent, echoed, flush=True)
            sys.exit(1)
        if restored_at is None and select.select([sys.stdin], [], [], 0)[0]:
            sys.stdin.readline()
            restored_at = sent
        time.sleep(0.01)
    print("ok", restored_at, sent - restored_at, flush=True)
    """
)
EXCHANGES_AFTER = 50


@pytest.fixture(params=["host", "private"])
def net_container(net_ctfsd: Ctfsd, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A running container with an address, with the host's ids or a private range."""
    ct = net_ctfsd.mount / "9901"
    ct.mkdir()
    try:
        assert write_errno(ct / "idmap", f"{request.param}\n".encode()) == 0
        assert write_errno(ct / "ip", b"198.19.0.250") == 0
        assert write_errno(ct / "state", b"running") == 0
        yield ct
    finally:
        if write_errno(ct / "state", b"stopped") != 0:
            net_ctfsd.kill_container(9901)
        ct.rmdir()


def test_tcp_connection_from_a_client_survives_freeze_and_restore(
    net_container: Path, lab: Lab
) -> None:
    _background(net_container, "nc -l -p 7000 -e cat")
    time.sleep(0.3)
    client = subprocess.Popen(
        [
            *lab.enter(lab.client),
            *(sys.executable, "-c", ECHO_CLIENT, "198.19.0.250", "7000", str(EXCHANGES_AFTER)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "connected"
        time.sleep(1)
        _freeze(net_container)
        time.sleep(1)
        _restore(net_container)
        out, _ = client.communicate("restored\n", timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, out
    word, before, after = out.split()
    # One connection: exchanges went on before the freeze and after the restore.
    assert (word, after) == ("ok", str(EXCHANGES_AFTER))
    assert int(before) > 10
