"""What the Debian parts of bench.start_stop and bench.checkpoint share.

systemd's state and boot timestamps asked from inside a container, the Debian
templates (built by ``tools/build-template``), a network of the bench's own
(``NetLab``) and PostgreSQL served to a client in it, and the client that inserts
a row every 100 ms.
"""

from __future__ import annotations

import itertools
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError, run
from tests.ctfsd_harness import SYSTEM_TEMPLATE_CACHE, Ctfsd, ctfs_exec

DEBIAN = "debian-12"
POSTGRES = "debian-12-postgresql"
# What is-system-running says while systemd cannot be asked yet, or still boots.
NOT_SETTLED = ("", "offline", "initializing", "starting")
BOOT_TIMEOUT_S = 120.0

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def template_tarball(name: str) -> Path:
    tarball = SYSTEM_TEMPLATE_CACHE / f"{name}.tar.gz"
    if not tarball.exists():
        raise BenchError(f"template {name} is not built: run sudo tools/build-template {name}")
    return tarball


def offer_templates(daemon: Ctfsd, *names: str) -> None:
    """Make the built templates ``names`` known to ``daemon`` (before it starts)."""
    for name in names:
        template_tarball(name)
        daemon.add_template(name)


def in_ctfs(ct: Path) -> Runner:
    return lambda argv: ctfs_exec(ct, *argv)


def in_lxc(name: str) -> Runner:
    return lambda argv: run(["lxc-attach", "-n", name, "--", *argv], timeout=60)


def wait_until_settled(inside: Runner) -> str:
    """Poll ``systemctl is-system-running --wait`` until it says more than "not yet".

    Until systemd listens on its private socket (a moment after it starts),
    systemctl cannot ask it and says "offline" or nothing; after that ``--wait``
    blocks until the boot is over.  Returns what it said last.
    """
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    said = ""
    while time.monotonic() < deadline:
        done = inside(["timeout", "20", "systemctl", "is-system-running", "--wait"])
        said = done.stdout.strip()
        if said not in NOT_SETTLED:
            return said
        time.sleep(0.02)
    raise BenchError(f"systemd did not finish booting in {BOOT_TIMEOUT_S:.0f} s ({said!r})")


@dataclass
class BootClock:
    """systemd's own timestamps of its boot (realtime, seconds since the epoch)."""

    userspace: float  # PID 1 began
    finish: float  # boot finished: what systemd-analyze calls "Startup finished"


def boot_clock(inside: Runner) -> BootClock:
    values = []
    for prop in ("UserspaceTimestamp", "FinishTimestamp"):
        done = inside(["busctl", "get-property", "org.freedesktop.systemd1",
                       "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                       prop])  # fmt: skip
        kind, _, value = done.stdout.strip().partition(" ")
        if done.returncode != 0 or kind != "t" or not value.isdigit() or value == "0":
            raise BenchError(f"busctl get-property {prop}: {done.stdout}{done.stderr}".strip())
        values.append(int(value) / 1e6)
    return BootClock(*values)


def failed_units(inside: Runner) -> str:
    """The failed units, each with the last lines its journal has for this boot."""
    done = inside(["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"])
    found = []
    for unit in (line.split()[0] for line in done.stdout.splitlines() if line.strip()):
        journal = inside(["journalctl", "-b", "-u", unit, "-n", "3", "-o", "cat", "--no-pager"])
        found.append(f"{unit} ({' / '.join(journal.stdout.strip().splitlines())})")
    return "; ".join(found)


# ------------------------------------------------------------------- network


class NetLab:
    """A host namespace (where a ctfsd runs, uplink ``up0``) and a client namespace.

        client netns  cl0 198.18.N.2/24
            |  veth
        host netns    up0 198.18.N.1/24   (ctfsd's uplink)
            |  ctfs<CTID> veths, made by ctfsd
        containers    198.18.N.10 and up

    Everything in namespaces made here, in 198.18.0.0/15: nothing leaves the
    machine.  ``close`` deletes both namespaces with all that is in them.
    """

    def __init__(self, n: int) -> None:
        tag = f"ctfs-bench-{n}-{os.getpid()}"
        self.host, self.client = f"{tag}-h", f"{tag}-c"
        self.subnet = f"198.18.{n}"
        self.made: list[str] = []
        try:
            for name in (self.host, self.client):
                self._ip("netns", "add", name)
                self.made.append(name)
            self._ip("link", "add", "up0", "netns", self.host, "type", "veth", "peer", "name",
                     "cl0", "netns", self.client)  # fmt: skip
            for ns, dev, last in ((self.host, "up0", 1), (self.client, "cl0", 2)):
                self._ip("-n", ns, "link", "set", "lo", "up")
                self._ip("-n", ns, "link", "set", dev, "up")
                self._ip("-n", ns, "addr", "add", f"{self.subnet}.{last}/24", "dev", dev)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _ip(*argv: str) -> None:
        done = run(["ip", *argv], timeout=30)
        if done.returncode != 0:
            raise BenchError(f"ip {' '.join(argv)}: {done.stderr.strip()}")

    def address(self, n: int) -> str:
        return f"{self.subnet}.{n}"

    def enter(self, ns: str) -> tuple[str, ...]:
        return ("nsenter", f"--net=/run/netns/{ns}")

    def close(self) -> None:
        for name in reversed(self.made):
            run(["ip", "netns", "del", name], timeout=30)
        self.made.clear()


# ---------------------------------------------------------------- PostgreSQL


def serve_postgres(inside: Runner, subnet: str) -> None:
    """PostgreSQL listening on the container's address, trusting the lab's client."""
    script = (
        "echo \"listen_addresses = '*'\" >> /etc/postgresql/15/main/postgresql.conf && "
        f"echo 'host all all {subnet}.0/24 trust' >> /etc/postgresql/15/main/pg_hba.conf && "
        "systemctl restart postgresql@15-main"
    )
    done = inside(["sh", "-c", script])
    if done.returncode != 0:
        raise BenchError(f"opening PostgreSQL to the client: {done.stderr}{done.stdout}")


# One psql session: a row every 100 ms, each acknowledged, until a line on stdin;
# then the table's count, distinct count and maximum, and the backend's PID.
INSERTER = """
import select, subprocess, sys, time
psql = subprocess.Popen(
    ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", sys.argv[1],
     "-U", "postgres", "-d", "postgres"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
)
def ask(sql):
    psql.stdin.write(sql + "\\n")
    psql.stdin.flush()
    line = psql.stdout.readline()
    if not line:
        sys.exit(f"session lost after {n} rows")
    return line.strip()
n = 0
ask("DROP TABLE IF EXISTS rows; CREATE TABLE rows (n int); SELECT 'ready';")
while not select.select([sys.stdin], [], [], 0.1)[0]:
    n += 1
    said = ask(f"INSERT INTO rows VALUES ({n}); SELECT 'ack', {n}, pg_backend_pid();")
    print(f"{time.monotonic():.6f}|{said}", flush=True)
print("end|" + ask("SELECT count(*), count(DISTINCT n), max(n), pg_backend_pid() FROM rows;"))
psql.stdin.close()
sys.exit(psql.wait())
"""


class Inserter:
    """The inserting client, in the lab's client namespace; ``finish`` checks the rows."""

    def __init__(self, lab: NetLab, address: str) -> None:
        self.acks: list[tuple[float, int, str]] = []  # (client's clock, n, backend)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [*lab.enter(lab.client), sys.executable, "-c", INSERTER, address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def _next(self, deadline: float) -> str:
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            self.kill()
            raise BenchError(f"the client stopped after {len(self.acks)} rows: {self.stderr()}")
        return line

    def wait_for_rows(self, more: int, timeout: float = 60.0) -> None:
        """Wait until ``more`` further rows are acknowledged."""
        deadline = time.monotonic() + timeout
        wanted = len(self.acks) + more
        while len(self.acks) < wanted:
            at, _, n, backend = self._next(deadline).split("|")
            self.acks.append((float(at), int(n), backend))

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read().strip()[-500:] or f"exit status {self.proc.returncode}"

    def finish(self) -> float:
        """Stop it; check every row is there once, in one session; the longest gap (s)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not (line := self._next(deadline)).startswith("end|"):
            at, _, n, backend = line.split("|")
            self.acks.append((float(at), int(n), backend))
        if self.proc.wait(timeout=60) != 0:
            raise BenchError(f"the client failed: {self.stderr()}")
        count, distinct, top, backend = line.split("|")[1:]
        acked = len(self.acks)
        backends = {b for _, _, b in self.acks} | {backend}
        if (int(count), int(distinct), int(top)) != (acked, acked, acked) or len(backends) > 1:
            raise BenchError(f"rows lost or doubled: {acked} acknowledged, table has {count} "
                             f"({distinct} distinct, max {top}), sessions {backends}")  # fmt: skip
        times = [at for at, _, _ in self.acks]
        return max(b - a for a, b in itertools.pairwise(times))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
