"""Live migration between two ctfsd, each in its own network namespace on one switch
(tests.migration_lab), with a client outside both."""

from __future__ import annotations

import contextlib
import errno
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ctfsd_harness import CTFS, Ctfsd, ctfs_exec, started, wait_for, write_errno
from tests.migration_lab import HOSTS, PREFIX, PREFIX6, MigrationLab
from tests.system.test_checkpoint import COUNTER, EXCHANGES_AFTER

PORT = 7385
CRIU = "/opt/ctfs/criu/sbin/criu"
ADDRESS = f"{PREFIX}.50"
SETTINGS = ("cpuunits", "hostname", "ip", "template")
# A shell holding 256 MiB of touched memory, reading all of it every 0.2 s.
HOG = (
    "x=$(head -c 268435456 /dev/zero | tr '\\0' a); "
    "while true; do echo ${#x} > /tmp/len; sleep 0.2; done"
)


def _limits(ct: Path) -> list[list[str]]:
    """Each beancounter's barrier:limit (not how this host's kernel enforces it)."""
    return [line.split()[:2] for line in (ct / "limits").read_text().splitlines()]


def _quota_limits(ct: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split()[::2]) for line in (ct / "quota").read_text().splitlines()]  # type: ignore[misc]


@pytest.fixture(scope="module")
def mlab() -> Iterator[MigrationLab]:
    made = MigrationLab()
    try:
        yield made
    finally:
        made.close()


def _daemon(mlab: MigrationLab, name: str) -> Ctfsd:
    extra = ("--uplink", "up0", "--peer-name", name, "--peer-address", f"{HOSTS[name]}:{PORT}")
    return Ctfsd(wrapper=mlab.enter(name), extra=extra)


@pytest.fixture(scope="module")
def hosts(mlab: MigrationLab) -> Iterator[tuple[Ctfsd, Ctfsd]]:
    """hosta and hostb, each trusting the other."""
    with started(_daemon(mlab, "hosta")) as a, started(_daemon(mlab, "hostb")) as b:
        for here, there in ((a, b), (b, a)):
            line = (there.mount / "identity").read_text()
            assert write_errno(here.mount / "peers", line.encode()) == 0
        for daemon in (a, b):
            assert wait_for(lambda d=daemon: "peers: listening on" in d.log_text())
        yield a, b


def _sh(ct: Path, script: str) -> str:
    done = ctfs_exec(ct, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _counter(ct: Path) -> int:
    return int(_sh(ct, "cat /tmp/counter").strip() or 0)


def _move(ct: Path, to: str) -> int:
    return write_errno(ct / "state", to.encode())


@pytest.fixture
def moving(hosts: tuple[Ctfsd, Ctfsd]) -> Iterator[int]:
    """CT 4101 on hosta, running, with an address and a counter; removed from
    whichever host has it afterwards."""
    a, _ = hosts
    ctid = 4101
    ct = a.mount / str(ctid)
    ct.mkdir()
    try:
        assert write_errno(ct / "ip", ADDRESS.encode()) == 0
        assert write_errno(ct / "cpuunits", b"2500") == 0
        assert write_errno(ct / "quota", b"diskspace 1G:1.1G") == 0
        assert write_errno(ct / "state", b"running") == 0
        _sh(ct, f"({COUNTER}) </dev/null >/dev/null 2>&1 &")
        assert wait_for(lambda: _counter(ct) > 2, timeout=5)
        yield ctid
    finally:
        for daemon in hosts:
            path = daemon.mount / str(ctid)
            if path.exists():
                if write_errno(path / "state", b"stopped") != 0:
                    daemon.kill_container(ctid)
                with contextlib.suppress(OSError):
                    path.rmdir()


def test_a_running_container_moves_there_and_its_counter_goes_on(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    source, target = a.mount / str(moving), b.mount / str(moving)
    before = _counter(source)
    settings = [(source / name).read_text() for name in SETTINGS]
    bounds = _limits(source)
    limits = _quota_limits(source)
    idmap = (source / "idmap").read_text()
    assert _move(source, "hostb") == 0, (source / "events").read_text()
    assert not source.exists()
    assert (target / "state").read_text() == "running\n"
    assert [(target / name).read_text() for name in SETTINGS] == settings
    assert _limits(target) == bounds
    assert _quota_limits(target) == limits
    assert (target / "idmap").read_text() == idmap
    assert (target / "ip").read_text().split() == [ADDRESS]
    assert wait_for(lambda: _counter(target) > before + 3, timeout=5)
    events = (target / "events").read_text()
    assert "migration: to hostb" in events  # the history came along
    assert "migration: arrived from hosta, running" in events
    assert re.search(r"migration: now on hostb, total \d+ ms, frozen \d+ ms", events)
    assert "migration: now on hostb" in a.log_text()


GAP_CLIENT = textwrap.dedent(
    """
    import select, socket, sys, time
    # Exchanges numbered messages every 10 ms over one connection until told on
    # stdin that the moves are over, then AFTER more; prints how many, and the
    # longest time between two echoes in ms.
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
    sock.settimeout(60)
    print("connected", flush=True)
    reader = sock.makefile("rb")
    sent, done_at, after, gap = 0, None, int(sys.argv[3]), 0.0
    last = time.monotonic()
    while done_at is None or sent - done_at < after:
        sent += 1
        sock.sendall(b"message %d\\n" % sent)
        echoed = reader.readline()
        now = time.monotonic()
        gap, last = max(gap, now - last), now
        if echoed != b"message %d\\n" % sent:
            print("mismatch", sent, echoed, flush=True)
            sys.exit(1)
        if done_at is None and select.select([sys.stdin], [], [], 0)[0]:
            sys.stdin.readline()
            done_at = sent
        time.sleep(0.01)
    print("ok", done_at, sent - done_at, round(gap * 1000), flush=True)
    """
)


def _frozen_ms(daemon: Ctfsd) -> list[int]:
    """The frozen times of the moves away from ``daemon``, from its log."""
    found = re.findall(r"migration: now on \S+, total \d+ ms, frozen (\d+) ms", daemon.log_text())
    return [int(ms) for ms in found]


def test_a_client_connection_survives_the_move_there_and_back(
    hosts: tuple[Ctfsd, Ctfsd], moving: int, mlab: MigrationLab
) -> None:
    a, b = hosts
    _sh(a.mount / str(moving), "(nc -l -p 7000 -e cat) </dev/null >/dev/null 2>&1 &")
    time.sleep(0.3)
    argv = [sys.executable, "-c", GAP_CLIENT, ADDRESS, "7000", str(EXCHANGES_AFTER)]
    client = subprocess.Popen(
        [*mlab.enter("client"), *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    frozen_before = _frozen_ms(a) + _frozen_ms(b)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "connected"
        time.sleep(0.5)
        assert _move(a.mount / str(moving), "hostb") == 0
        time.sleep(0.5)
        there = b.mount / str(moving)
        assert _move(there, "hosta") == 0, (there / "events").read_text()
        out, _ = client.communicate("moved\n", timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, out
    word, before, after, gap = out.split()
    assert (word, after) == ("ok", str(EXCHANGES_AFTER))
    assert int(before) > 10
    frozen = [ms for ms in _frozen_ms(a) + _frozen_ms(b) if ms not in frozen_before]
    # Its segments sent meanwhile were delivered again: no retransmission back-off.
    assert int(gap) <= max(frozen) + 100, (gap, frozen)


def test_a_ctid_taken_there_is_refused_before_anything_moves(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    taken = b.mount / str(moving)
    taken.mkdir()
    try:
        source = a.mount / str(moving)
        assert _move(source, "hostb") == errno.EEXIST
        assert (source / "state").read_text() == "running\n"
        assert f"container {moving} exists here" in (source / "events").read_text()
        assert (taken / "state").read_text() == "stopped\n"
    finally:
        taken.rmdir()


def test_a_name_that_is_no_peer_is_einval(hosts: tuple[Ctfsd, Ctfsd], moving: int) -> None:
    a, _ = hosts
    source = a.mount / str(moving)
    assert _move(source, "hostc") == errno.EINVAL
    assert (source / "state").read_text() == "running\n"


def _move_in_background(ct: Path, to: str) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    mover = threading.Thread(target=lambda: result.append(_move(ct, to)))
    mover.start()
    return mover, result


def _leftovers(daemon: Ctfsd, ctid: int) -> list[str]:
    return sorted(p.name for p in daemon.state.iterdir() if p.name == str(ctid))


def test_a_target_killed_during_the_transfer_leaves_it_running_here_and_nothing_there(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    source = a.mount / str(moving)
    _sh(source, "dd if=/dev/zero of=/ballast bs=1M count=400 2>/dev/null")
    mover, result = _move_in_background(source, "hostb")
    try:
        assert wait_for(lambda: (b.state / str(moving) / ".arriving").exists(), timeout=20)
        assert (source / "state").read_text() == "migrating\n"
        b.kill()
    finally:
        mover.join(timeout=120)
        if b.proc is None:
            b.start()
    assert result and result[0] in (errno.EHOSTUNREACH, errno.EIO), result
    assert (source / "state").read_text() == "running\n"
    before = _counter(source)
    assert wait_for(lambda: _counter(source) > before, timeout=5)
    assert not (b.mount / str(moving)).exists()
    assert _leftovers(b, moving) == []
    assert 'state: rejected "hostb": the link to hostb broke' in (source / "events").read_text()


def test_a_full_disk_there_leaves_it_running_here(hosts: tuple[Ctfsd, Ctfsd], moving: int) -> None:
    a, b = hosts
    source = a.mount / str(moving)
    _sh(source, "dd if=/dev/zero of=/ballast bs=1M count=64 2>/dev/null")
    filler = b.state / "filler"
    free = shutil.disk_usage(b.state).free
    subprocess.run(["fallocate", "-l", str(free - (16 << 20)), str(filler)], check=True)
    try:
        assert _move(source, "hostb") == errno.EIO
    finally:
        filler.unlink()
    assert (source / "state").read_text() == "running\n"
    assert "hostb refused: btrfs receive: writing to ballast failed: No space left on device" in (
        (source / "events").read_text()
    )
    assert _leftovers(b, moving) == []


def test_ctfs_migrate_shows_each_stage_and_a_summary(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    done = subprocess.run(
        [str(CTFS), "--mount", str(a.mount), "migrate", str(moving), "hostb"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "migration: private area sent while it runs" in done.stdout
    assert f"CT {moving} now runs on hostb:" in done.stdout.splitlines()[-1]
    assert (b.mount / str(moving) / "state").read_text() == "running\n"


def test_ctfs_migrate_to_a_host_that_does_not_trust_this_one_fails_and_says_why(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    trusted = (b.mount / "peers").read_text()
    listening = b.log_text().count("peers: listening on")
    # hostb listens, for another peer only.
    other = f"hostc {PREFIX}.9:{PORT} sha256:{'ab' * 32}\n"
    assert write_errno(b.mount / "peers", other.encode()) == 0
    try:
        assert wait_for(lambda: b.log_text().count("peers: listening on") > listening)
        done = subprocess.run(
            [str(CTFS), "--mount", str(a.mount), "migrate", str(moving), "hostb"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        assert write_errno(b.mount / "peers", trusted.encode()) == 0
        assert wait_for(lambda: b.log_text().count("peers: listening on") > listening + 1)
    assert done.returncode == 1
    assert f"CT {moving} did not move to hostb: Permission denied" in done.stderr
    assert "hostb refused this host" in (a.mount / str(moving) / "events").read_text()
    assert (a.mount / str(moving) / "state").read_text() == "running\n"
    assert not (b.state / str(moving)).exists()


def _length(ct: Path) -> str:
    return _sh(ct, "cat /tmp/len 2>/dev/null || true").strip()


def _report(daemon: Ctfsd, ct: Path) -> str:
    return f"{(ct / 'events').read_text()}\n{daemon.log_text()[-3000:]}"


@pytest.mark.emulation_heavy  # filling 256 MiB in a busybox shell takes minutes under TCG
def test_256_mib_of_memory_moves_there_and_back_intact(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    source = a.mount / str(moving)
    _sh(source, f"({HOG}) </dev/null >/dev/null 2>&1 &")
    assert wait_for(lambda: _length(source) == "268435456", 30)
    for here, there, name in ((a, b, "hostb"), (b, a, "hosta")):
        ct = here.mount / str(moving)
        before = _counter(ct)
        assert _move(ct, name) == 0, (ct / "events").read_text()
        moved = there.mount / str(moving)
        _sh(moved, "rm -f /tmp/len")
        assert wait_for(lambda m=moved: _length(m) == "268435456", 120), _report(here, moved)
        assert wait_for(lambda m=moved, n=before: _counter(m) > n + 3, timeout=5)
        served = re.findall(r"memory served after the restore: (\d+) bytes", here.log_text())
        assert served and int(served[-1]) >= 256 << 20  # it came after the restore


def test_a_stopped_container_moves_with_its_private_area(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    source = a.mount / str(moving)
    assert write_errno(source / "state", b"stopped") == 0
    counted = (a.state / str(moving) / "root" / "tmp" / "counter").read_text()
    assert _move(source, "hostb") == 0, (source / "events").read_text()
    target = b.mount / str(moving)
    assert (target / "state").read_text() == "stopped\n"
    assert write_errno(target / "state", b"running") == 0
    assert _sh(target, "cat /tmp/counter") == counted  # the private area came whole


def test_a_frozen_container_moves_frozen_and_runs_there(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    source = a.mount / str(moving)
    before = _counter(source)
    assert write_errno(source / "state", b"frozen") == 0
    assert _move(source, "hostb") == 0, (source / "events").read_text()
    target = b.mount / str(moving)
    assert (target / "state").read_text() == "frozen\n"
    assert write_errno(target / "state", b"running") == 0, (target / "events").read_text()
    assert wait_for(lambda: _counter(target) > before, timeout=5)


def test_stop_and_copy_moves_it_too(hosts: tuple[Ctfsd, Ctfsd], moving: int) -> None:
    a, b = hosts
    source = a.mount / str(moving)
    before = _counter(source)
    a.terminate()
    a.extra = (*a.extra, "--migrate-memory", "stop-and-copy")
    try:
        a.start()
        assert _move(source, "hostb") == 0, (source / "events").read_text()
    finally:
        a.terminate()
        a.extra = a.extra[:-2]
        a.start()
    target = b.mount / str(moving)
    assert wait_for(lambda: _counter(target) > before + 3, timeout=5)
    # The memory went with the dump file, which ctfs wrote as for a checkpoint.
    assert "written and synced" in (target / "events").read_text().rsplit("migration: to", 1)[1]


def _restarted_with(daemon: Ctfsd, *extra: str) -> contextlib.AbstractContextManager[None]:
    """``daemon`` restarted with ``extra`` options for the block, then as it was."""

    @contextlib.contextmanager
    def restarted() -> Iterator[None]:
        daemon.terminate()
        before = daemon.extra
        daemon.extra = (*before, *extra)
        listening = daemon.log_text().count("peers: listening on")
        try:
            daemon.start()
            assert wait_for(lambda: daemon.log_text().count("peers: listening on") > listening)
            yield
        finally:
            daemon.terminate()
            daemon.extra = before
            daemon.start()

    return restarted()


def test_a_failed_restore_there_brings_it_back_here(
    hosts: tuple[Ctfsd, Ctfsd], moving: int, tmp_path: Path
) -> None:
    a, b = hosts
    failing = tmp_path / "criu"
    failing.write_text(
        "#!/bin/sh\n"
        'for word in "$@"; do [ "$word" = restore ] && { echo injected >&2; exit 1; }; done\n'
        f'exec {CRIU} "$@"\n'
    )
    failing.chmod(0o755)
    source = a.mount / str(moving)
    with _restarted_with(b, "--criu", str(failing)):
        assert _move(source, "hostb") == errno.EIO
        assert _leftovers(b, moving) == []
    assert (source / "state").read_text() == "running\n"
    before = _counter(source)
    assert wait_for(lambda: _counter(source) > before, timeout=5)
    events = (source / "events").read_text()
    assert "hostb refused: restore failed" in events, events
    assert "it runs here again" in events


def test_a_source_killed_during_the_transfer_finds_it_running_and_nothing_is_left_there(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    source = a.mount / str(moving)
    _sh(source, "dd if=/dev/zero of=/ballast bs=1M count=400 2>/dev/null")
    mover, _ = _move_in_background(source, "hostb")
    try:
        assert wait_for(lambda: (b.state / str(moving) / ".arriving").exists(), timeout=20)
        a.kill()
    finally:
        if a.proc is None:
            a.start()
        mover.join(timeout=60)
    assert (source / "state").read_text() == "running\n"
    before = _counter(source)
    assert wait_for(lambda: _counter(source) > before, timeout=5)
    assert wait_for(lambda: _leftovers(b, moving) == [], timeout=30)
    assert not [p.name for p in (a.state / str(moving)).iterdir() if "migration" in p.name]


def _handed_to_hostb(daemon: Ctfsd, ctid: int) -> None:
    """Make a frozen container look handed to hostb without confirmation, as a
    source ctfsd killed after the hand-over leaves it (ctid.conf while stopped)."""
    daemon.terminate()
    conf = daemon.state / str(ctid) / "ctid.conf"
    conf.write_text(conf.read_text() + 'HANDED_TO="hostb"\n')
    daemon.start()


def test_a_container_handed_over_unconfirmed_is_restored_only_once_the_peer_has_none(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    source = a.mount / str(moving)
    assert write_errno(source / "state", b"frozen") == 0
    _handed_to_hostb(a, moving)
    taken = b.mount / str(moving)
    taken.mkdir()  # hostb has a container of that CTID: it took it over
    try:
        assert write_errno(source / "state", b"running") == errno.EEXIST
        assert (source / "state").read_text() == "frozen\n"
        assert "it is stopped on hostb, which took it over" in (source / "events").read_text()
    finally:
        taken.rmdir()
    assert write_errno(source / "state", b"running") == 0, (source / "events").read_text()
    assert "hostb does not have it" in (source / "events").read_text()
    assert "HANDED_TO" not in (a.state / str(moving) / "ctid.conf").read_text()


def test_an_id_range_taken_there_is_refused_before_anything_moves(
    hosts: tuple[Ctfsd, Ctfsd], moving: int
) -> None:
    a, b = hosts
    source = a.mount / str(moving)
    # The CTID one slot count further names the same range: hostb gives it away.
    rival = b.mount / str(moving + 16384)
    rival.mkdir()
    try:
        assert (rival / "idmap").read_text() == (source / "idmap").read_text()
        assert _move(source, "hostb") == errno.EBUSY
        assert "is taken here" in (source / "events").read_text()
        assert (source / "state").read_text() == "running\n"
        assert _leftovers(b, moving) == []
    finally:
        rival.rmdir()


def _neighbour(mlab: MigrationLab, address: str) -> str:
    """The link-layer address the client has for ``address`` (empty: none)."""
    argv = [*mlab.enter("client"), "ip", "neigh", "show", address]
    words = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.split()
    return words[words.index("lladdr") + 1] if "lladdr" in words else ""


def _uplink_mac(mlab: MigrationLab, host: str) -> str:
    argv = [*mlab.enter(host), "ip", "-o", "link", "show", "up0"]
    words = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.split()
    return words[words.index("link/ether") + 1]


@pytest.mark.parametrize("address", [ADDRESS, f"{PREFIX6}50"])
def test_the_client_learns_at_once_that_its_address_is_on_the_new_host(
    hosts: tuple[Ctfsd, Ctfsd], moving: int, mlab: MigrationLab, address: str
) -> None:
    a, _ = hosts
    source = a.mount / str(moving)
    if ":" in address:
        assert write_errno(source / "ip", f"+{address}".encode()) == 0
    # An entry left by an earlier test's move may name hostb: the client asks again.
    subprocess.run([*mlab.enter("client"), "ip", "neigh", "flush", "to", address], timeout=30)
    ping = ["busybox", "ping", "-c", "1", "-W", "1", address]
    assert wait_for(lambda: subprocess.run([*mlab.enter("client"), *ping]).returncode == 0, 10)
    assert _neighbour(mlab, address) == _uplink_mac(mlab, "hosta")
    assert _move(source, "hostb") == 0, (source / "events").read_text()
    # Reachable for 30 s more by its entry, hosta's: only the gratuitous ARP or the
    # unsolicited neighbour advertisement of hostb changes it now.
    assert wait_for(lambda: _neighbour(mlab, address) == _uplink_mac(mlab, "hostb"), 2)
