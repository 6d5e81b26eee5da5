"""Stock Debian with systemd: boot, exec, stop, restart, checkpoint, PostgreSQL.

The templates come from ``tools/build-template`` (``tools/test`` builds them);
one ctfsd serves them, inside the lab's host network namespace so that a client
in the lab's client namespace reaches PostgreSQL over TCP through the uplink.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.ctfsd_harness import HIERARCHIES, Ctfsd, ctfs_exec, wait_for, write_errno
from tests.network_lab import Lab

PG_TEMPLATE = "debian-12-postgresql"
PG_LOG = "var/log/postgresql/postgresql-15-main.log"
# Addresses apart from test_network's (from .10) and test_checkpoint's (.250).
_addresses = (f"198.19.0.{n}" for n in itertools.count(200))
_ctids = itertools.count(8101)
# A systemd boot here takes 2-5 s; a loaded CI machine gets ten times that.
BOOT_S = 60.0


@pytest.fixture(scope="module")
def debian_ctfsd(lab: Lab) -> Iterator[Ctfsd]:
    # A clean systemd shutdown takes under a second here; 60 s is the default of
    # ctfsd, and a stop that needs SIGKILL is what these tests must notice.
    # Importing the two Debian templates (240 MB) takes seconds here and over a
    # minute in the emulated cgroup v2 guest.
    daemon = Ctfsd(
        stop_timeout=60, wrapper=lab.enter(lab.host), extra=("--uplink", "up0"), start_timeout=600
    )
    try:
        daemon.add_template(PG_TEMPLATE)
        daemon.add_template("debian-13")
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


def _sh(ct: Path, script: str) -> str:
    done = ctfs_exec(ct, "sh", "-c", script)
    assert done.returncode == 0, f"{script}: {done.stderr}{done.stdout}"
    return done.stdout


def _booted(ct: Path) -> str:
    """Wait for systemd to finish booting; what ``is-system-running`` says then.

    Until systemd listens on its private socket (a moment after init runs),
    systemctl cannot ask it: it says "offline", or nothing.
    """
    said = ""

    def settled() -> bool:
        nonlocal said
        done = ctfs_exec(ct, "timeout", "10", "systemctl", "is-system-running", "--wait")
        said = done.stdout.strip()
        return said not in ("", "offline", "initializing", "starting")

    wait_for(settled, timeout=BOOT_S, interval=0.2)
    return said


def _start(ct: Path) -> None:
    assert write_errno(ct / "state", b"running") == 0, (ct / "events").read_text()
    assert _booted(ct) == "running", _sh(ct, "systemctl --failed --no-pager || true")


def _make(daemon: Ctfsd, template: str, address: str | None = None) -> Path:
    ct = daemon.mount / str(next(_ctids))
    ct.mkdir()
    assert write_errno(ct / "template", template.encode()) == 0
    if address is not None:
        assert write_errno(ct / "ip", address.encode()) == 0
    return ct


def _destroy(daemon: Ctfsd, ct: Path) -> None:
    if write_errno(ct / "state", b"stopped") not in (0, 2):
        daemon.kill_container(int(ct.name))
    ct.rmdir()


@pytest.fixture
def debian(debian_ctfsd: Ctfsd) -> Iterator[Path]:
    """A booted Debian 12 container with PostgreSQL."""
    ct = _make(debian_ctfsd, PG_TEMPLATE)
    try:
        _start(ct)
        yield ct
    finally:
        _destroy(debian_ctfsd, ct)


def _postgres_pids(ct: Path) -> list[int]:
    """Host PIDs of the container's postgres processes."""
    found = []
    for pid in (ct / "procs").read_text().split():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres":
                found.append(int(pid))
        except FileNotFoundError:
            continue
    return found


def _stopped_cleanly(ct: Path) -> bool:
    return bool(re.search(r"stopped: \d+ ms after SIGRTMIN\+4$", (ct / "events").read_text()))


# ------------------------------------------------------------------ booting


def test_debian_boots_to_running_with_no_failed_unit(debian: Path) -> None:
    assert _sh(debian, "systemctl --failed --plain --no-legend") == ""


@pytest.mark.emulation_heavy
def test_procs_and_exec_see_the_processes_systemd_moved_into_its_units(debian: Path) -> None:
    # PostgreSQL runs in system.slice/system-postgresql.slice/..., not where init is.
    assert _postgres_pids(debian)
    inside = _sh(debian, "ps -e -o comm=").split()
    assert "postgres" in inside and "systemd-journal" in inside


@pytest.mark.emulation_heavy
def test_systemd_takes_the_containers_hostname(debian_ctfsd: Ctfsd) -> None:
    ct = _make(debian_ctfsd, PG_TEMPLATE)
    try:
        assert write_errno(ct / "hostname", b"db1.example") == 0
        _start(ct)
        assert _sh(ct, "hostname").strip() == "db1.example"
        assert _sh(ct, "hostnamectl hostname 2>/dev/null || hostname").strip() == "db1.example"
    finally:
        _destroy(debian_ctfsd, ct)


@pytest.mark.emulation_heavy
def test_systemd_knows_it_runs_in_a_container(debian: Path) -> None:
    assert _sh(debian, "systemd-detect-virt --container").strip() == "container-other"
    assert _sh(debian, "cat /run/systemd/container").strip() == "ctfs"


# ------------------------------------------------------------------ stopping


def test_stop_is_a_clean_systemd_shutdown(debian_ctfsd: Ctfsd) -> None:
    ct = _make(debian_ctfsd, PG_TEMPLATE)
    try:
        _start(ct)
        assert write_errno(ct / "state", b"stopped") == 0
        assert _stopped_cleanly(ct), (ct / "events").read_text()
        log = (debian_ctfsd.state / ct.name / "root" / PG_LOG).read_text()
        assert log.rstrip().endswith("database system is shut down"), log[-2000:]
        _start(ct)
        again = (debian_ctfsd.state / ct.name / "root" / PG_LOG).read_text()[len(log) :]
        assert "not properly shut down" not in again and "automatic recovery" not in again
    finally:
        _destroy(debian_ctfsd, ct)


@pytest.mark.emulation_heavy
def test_ten_starts_and_stops_then_rmdir_leave_no_cgroup(debian_ctfsd: Ctfsd) -> None:
    ct = _make(debian_ctfsd, PG_TEMPLATE)
    ctid = int(ct.name)
    try:
        for _ in range(10):
            _start(ct)
            assert write_errno(ct / "state", b"stopped") == 0
            assert _stopped_cleanly(ct), (ct / "events").read_text()[-2000:]
    finally:
        _destroy(debian_ctfsd, ct)
    left = [h for h in HIERARCHIES if debian_ctfsd.cgroup_dir(h, ctid).exists()]
    assert left == []


@pytest.mark.emulation_heavy
def test_stop_leaves_no_zombie_in_ctfsd(debian_ctfsd: Ctfsd) -> None:
    ct = _make(debian_ctfsd, PG_TEMPLATE)
    try:
        _start(ct)
        assert write_errno(ct / "state", b"stopped") == 0
    finally:
        _destroy(debian_ctfsd, ct)
    assert debian_ctfsd.proc is not None
    assert wait_for(lambda: _zombies_of(debian_ctfsd.proc.pid) == [], timeout=5)


# --------------------------------------------------------------- PostgreSQL

ROWS_AFTER = 10
INSERTER = """
import select, subprocess, sys, time
psql = subprocess.Popen(
    ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", sys.argv[1],
     "-U", "postgres", "-d", "postgres"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
)
psql.stdin.write("CREATE TABLE rows (n int);\\n")
# Inserts a row every 100 ms until told on stdin that the container was restored,
# then AFTER more.
n, restored_at, after = 0, None, int(sys.argv[2])
while restored_at is None or n - restored_at < after:
    if restored_at is None and select.select([sys.stdin], [], [], 0)[0]:
        sys.stdin.readline()
        restored_at = n
        print("restored", flush=True)
        continue
    n += 1
    psql.stdin.write(f"INSERT INTO rows VALUES ({n}); SELECT 'ack', {n}, pg_backend_pid();\\n")
    psql.stdin.flush()
    line = psql.stdout.readline()
    if not line:
        sys.exit(f"session lost after {n - 1} rows")
    print(line.strip(), flush=True)
    time.sleep(0.1)
psql.stdin.close()
sys.exit(psql.wait())
"""


def insert_across(
    client: Sequence[str], address: str, interruption: Callable[[], None], ready_s: float,
    done_s: float,
) -> list[str]:  # fmt: skip
    """INSERTER's acknowledgements from the client namespace entered by ``client``,
    with ``interruption`` (a checkpoint, a move) once it has five, and "restored"
    where it was over."""
    inserter = subprocess.Popen(
        [*client, "python3", "-c", INSERTER, address, str(ROWS_AFTER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acks: list[str] = []
    reader = threading.Thread(target=lambda: acks.extend(inserter.stdout or []))
    reader.start()
    try:
        assert wait_for(lambda: len(acks) >= 5, timeout=ready_s), inserter.stderr
        interruption()
        assert inserter.stdin is not None
        inserter.stdin.write("restored\n")
        inserter.stdin.close()
        assert inserter.wait(timeout=done_s) == 0, inserter.stderr and inserter.stderr.read()
    finally:
        if inserter.poll() is None:
            inserter.kill()
            inserter.wait()
        reader.join(timeout=10)
    return acks


def assert_every_row_once(ct: Path, acks: list[str]) -> None:
    """It carried on after the interruption, in one session, every row exactly once."""
    mark = acks.index("restored\n")
    assert mark >= 5 and len(acks) - mark - 1 == ROWS_AFTER  # it carried on after
    acks.remove("restored\n")
    backends = {line.split("|")[2] for line in acks}
    assert len(backends) == 1  # one session: no reconnection
    query = "SELECT count(*), count(DISTINCT n), max(n) FROM rows"
    count = _sh(ct, f"su postgres -c \"psql -XAtc '{query}'\"")
    assert count.strip() == f"{len(acks)}|{len(acks)}|{len(acks)}"


def _serve_postgres_to_the_lab(ct: Path) -> None:
    """Listen on the container's address and trust the lab's client (test only)."""
    _sh(
        ct,
        "echo \"listen_addresses = '*'\" >> /etc/postgresql/15/main/postgresql.conf && "
        "echo 'host all all 198.19.0.0/24 trust' >> /etc/postgresql/15/main/pg_hba.conf && "
        "systemctl restart postgresql@15-main",
    )


@pytest.mark.emulation_heavy
def test_pgbench_over_tcp_from_a_client(debian_ctfsd: Ctfsd, lab: Lab) -> None:
    address = next(_addresses)
    ct = _make(debian_ctfsd, PG_TEMPLATE, address)
    try:
        _start(ct)
        _serve_postgres_to_the_lab(ct)
        client = [*lab.enter(lab.client), "pgbench", "-h", address, "-U", "postgres"]
        subprocess.run([*client, "-i", "-s", "1", "postgres"], check=True, capture_output=True)
        done = subprocess.run(
            [*client, "-c", "4", "-j", "2", "-T", "5", "postgres"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        tps = re.search(r"tps = ([0-9.]+)", done.stdout)
        assert tps and float(tps.group(1)) > 10, done.stdout
    finally:
        _destroy(debian_ctfsd, ct)


def test_checkpoint_keeps_an_inserting_session_and_every_row_once(
    debian_ctfsd: Ctfsd, lab: Lab
) -> None:
    address = next(_addresses)
    ct = _make(debian_ctfsd, PG_TEMPLATE, address)
    try:
        _start(ct)
        _serve_postgres_to_the_lab(ct)

        def checkpoint() -> None:
            assert write_errno(ct / "state", b"frozen") == 0, (ct / "events").read_text()
            time.sleep(1)
            assert write_errno(ct / "state", b"running") == 0, (ct / "events").read_text()

        acks = insert_across(lab.enter(lab.client), address, checkpoint, 20, 60)
        assert_every_row_once(ct, acks)
    finally:
        _destroy(debian_ctfsd, ct)


@pytest.mark.emulation_heavy
def test_processes_of_a_non_root_user_survive_a_checkpoint(debian: Path) -> None:
    def postgres_owners() -> dict[str, str]:
        lines = _sh(debian, "ps -u postgres -o pid=,user=").split("\n")
        return dict(line.split() for line in lines if line.strip())

    before = postgres_owners()
    assert before and set(before.values()) == {"postgres"}
    assert write_errno(debian / "state", b"frozen") == 0, (debian / "events").read_text()
    assert write_errno(debian / "state", b"running") == 0, (debian / "events").read_text()
    assert postgres_owners() == before
    assert _sh(debian, "su postgres -c \"psql -XAtc 'SELECT 1'\"").strip() == "1"


@pytest.mark.emulation_heavy
def test_a_debian_container_with_the_hosts_ids_is_checkpointed(debian_ctfsd: Ctfsd) -> None:
    # Its root may mount hugetlbfs, fusectl and the kernel's debug filesystems, which
    # CRIU cannot dump: the templates mask the units that would.
    ct = _make(debian_ctfsd, PG_TEMPLATE)
    try:
        assert write_errno(ct / "idmap", b"host") == 0
        _start(ct)
        mounts = _sh(ct, "cat /proc/self/mounts")
        assert "hugetlbfs" not in mounts and "fusectl" not in mounts
        assert write_errno(ct / "state", b"frozen") == 0, (ct / "events").read_text()
        assert write_errno(ct / "state", b"running") == 0, (ct / "events").read_text()
        assert _booted(ct) == "running"
    finally:
        _destroy(debian_ctfsd, ct)


# ------------------------------------------------------------------ Debian 13


def test_debian_13_boots_to_running_and_stops_cleanly(debian_ctfsd: Ctfsd) -> None:
    ct = _make(debian_ctfsd, "debian-13")
    try:
        _start(ct)
        assert _sh(ct, "systemctl --failed --plain --no-legend") == ""
        assert write_errno(ct / "state", b"stopped") == 0
        assert _stopped_cleanly(ct), (ct / "events").read_text()
    finally:
        _destroy(debian_ctfsd, ct)


def test_debian_13_is_checkpointed_and_restored_with_systemd_running(debian_ctfsd: Ctfsd) -> None:
    ct = _make(debian_ctfsd, "debian-13")
    try:
        _start(ct)
        before = _sh(ct, "ps -e -o pid=,comm=")
        assert write_errno(ct / "state", b"frozen") == 0, (ct / "events").read_text()
        assert write_errno(ct / "state", b"running") == 0, (ct / "events").read_text()
        assert _sh(ct, "ps -e -o pid=,comm=").count("\n") >= before.count("\n")
        assert _booted(ct) == "running"
        # systemd's event loop runs as before: jobs are carried out, and it does
        # not spin on a pressure watch CRIU could not restore.
        assert _sh(ct, "systemctl restart systemd-logind && systemctl is-active systemd-logind")
        assert "Looping too fast" not in _sh(ct, "journalctl -b -o cat --no-pager")
    finally:
        _destroy(debian_ctfsd, ct)


def _zombies_of(pid: int) -> list[int]:
    found = []
    for tid in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (tid / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            try:
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                continue
            if state == "Z":
                found.append(int(child))
    return found
