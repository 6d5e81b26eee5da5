"""bench.migrate's network of its own, its echo client, and its raw side: a
container's process tree moved between two network namespaces by CRIU's own
commands, by hand.

The raw tree is a ctfs container whose ctfsd was SIGKILLed (``bench.criu_sides.RawPeer``
declares ctfs's views and the veth to criu as ctfs does).  One move, from "host"
``src`` to ``dst`` (two namespaces of the lab; the same root directory, the same
machine):

- stop-and-copy: ``criu dump`` (ctfs's options) into a directory on ``src``, a
  ``tar c | tar x`` of the images over a TCP connection from ``src`` to ``dst``
  (opened beforehand, as ctfs's peer link is), ``criu restore -d`` on ``dst`` into
  cgroups of its own (``--cgroup-root``);
- post-copy: ``criu dump --lazy-pages`` (its page server on ``src``'s address, TLS
  with the raw ctfsd's key pair, as ctfs), the images without memory copied the
  same way, ``criu lazy-pages --page-server`` on ``dst``, ``criu restore -d
  --lazy-pages``; the move ends when both CRIU daemons exited (every page there).

Then the client's /32 route to the container is pointed at ``dst`` (``ip route
replace``): the raw side's stand-in for ctfs's gratuitous ARP.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError, must, run
from bench.criu_sides import DUMP_OPTIONS, RESTORE_OPTIONS, RawPeer
from ctfs.kernel.cgroup_v1 import V1_CONTROLLERS
from ctfs.kernel.criu import DEFAULT_BINARY
from tests.ctfsd_harness import UNIFIED
from tests.network_lab import NETNS_DIR

CRIU_TIMEOUT_S = 300.0
ECHO_PORT = 7000
CLIENT_TIMEOUT_S = 120.0
CLIENT = textwrap.dedent(
    """
    import select, socket, sys, time
    # A numbered line to the echo server every 10 ms; each line on stdin is answered
    # with the longest time between two echoes since the one before (ms).
    deadline = time.monotonic() + 20
    while True:
        try:
            sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    sock.settimeout(float(sys.argv[3]))
    reader = sock.makefile("rb")
    print("connected", flush=True)
    sent, worst, last = 0, 0.0, time.monotonic()
    while True:
        sent += 1
        sock.sendall(b"%d\\n" % sent)
        if reader.readline() != b"%d\\n" % sent:
            print("no echo of line", sent, flush=True)
            sys.exit(1)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
        if select.select([sys.stdin], [], [], 0)[0]:
            if not sys.stdin.readline():
                break
            print("%.1f" % (worst * 1000), flush=True)
            worst = 0.0
        time.sleep(0.01)
    """
)
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class MoveLab:
    """Namespaces ``names`` with ``up0`` at PREFIX.1, .2, ... on one bridge (in a
    switch namespace); everything in namespaces made here, removed by ``close``."""

    def __init__(self, prefix: str, names: Sequence[str]) -> None:
        tag = os.getpid()
        self.switch = f"ctfs-mb-sw-{tag}"
        self.ns = {name: f"ctfs-mb-{name}-{tag}" for name in names}
        self.ip = {name: f"{prefix}.{n + 1}" for n, name in enumerate(names)}
        self.made: list[str] = []
        try:
            must(["ip", "netns", "add", self.switch])
            self.made.append(self.switch)
            must(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
            must(["ip", "-n", self.switch, "link", "set", "br0", "up"])
            for name, ns in self.ns.items():
                must(["ip", "netns", "add", ns])
                self.made.append(ns)
                must(["ip", "-n", self.switch, "link", "add", f"p-{name}", "type", "veth",
                      "peer", "name", "up0", "netns", ns])  # fmt: skip
                must(["ip", "-n", self.switch, "link", "set", f"p-{name}", "master", "br0", "up"])
                for argv in (["link", "set", "lo", "up"], ["link", "set", "up0", "up"],
                             ["addr", "add", f"{self.ip[name]}/24", "dev", "up0"]):  # fmt: skip
                    must(["ip", "-n", ns, *argv])
        except BaseException:
            self.close()
            raise

    def enter(self, name: str) -> tuple[str, ...]:
        return ("nsenter", f"--net={NETNS_DIR / self.ns[name]}")

    def close(self) -> None:
        for name in reversed(self.made):
            run(["ip", "netns", "del", name], timeout=30)
        self.made.clear()


class Client:
    """The echo client in the lab's client namespace, asked for its longest gap."""

    def __init__(self, lab: MoveLab, address: str) -> None:
        argv = [sys.executable, "-c", CLIENT, address, str(ECHO_PORT), str(CLIENT_TIMEOUT_S)]
        self.proc = subprocess.Popen([*lab.enter("client"), *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            if self.line(30) != "connected":
                raise BenchError(f"the client could not connect to {address}:{ECHO_PORT}")
        except BaseException:
            self.close()
            raise

    def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        text = self.proc.stdout.readline().strip() if ready else ""
        if not text:
            raise BenchError(f"the client said nothing within {timeout:g} s (or ended)")
        return text

    def gap(self) -> float:
        """The longest gap since the last call, in ms (once the exchange under way ended)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("gap\n")
        self.proc.stdin.flush()
        text = self.line(CLIENT_TIMEOUT_S + 10)
        try:
            return float(text)
        except ValueError:
            raise BenchError(f"the client: {text}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def socket_in(netns: str) -> socket.socket:
    """A TCP socket of network namespace ``netns``: a thread enters it to make one."""
    made: list[socket.socket | OSError] = []

    def make() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
            finally:
                os.close(fd)
            made.append(socket.socket())
        except OSError as exc:
            made.append(exc)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(made[0], OSError):
        raise BenchError(f"cannot make a socket in {netns}: {made[0]}")
    return made[0]


@dataclass
class RawHost:
    name: str  # in the lab
    cgroup: str  # the name of its cgroups under the raw ctfsd's cgroup parent


class RawMover:
    """Moves ``peer``'s tree between ``hosts`` (it is on the first), and the client's route."""

    def __init__(self, peer: RawPeer, lab: MoveLab, hosts: tuple[RawHost, RawHost],
                 address: str) -> None:  # fmt: skip
        self.peer, self.lab, self.hosts, self.address = peer, lab, hosts, address
        self.here = 0
        self.moves = 0
        self.phases = ""  # of the last move
        self.running: list[subprocess.Popen[bytes]] = []
        identity = peer.daemon.state / ".identity"
        self.tls = ["--tls", "--tls-cacert", str(identity / "cert.pem"), "--tls-cert",
                    str(identity / "cert.pem"), "--tls-key", str(identity / "key.pem"),
                    "--tls-no-cn-verify"]  # fmt: skip
        self.route(hosts[0])

    def route(self, host: RawHost) -> None:
        must(["ip", "-n", self.lab.ns["client"], "route", "replace", f"{self.address}/32",
              "via", self.lab.ip[host.name]])  # fmt: skip

    def cgroup(self, controller: str, host: RawHost) -> Path:
        return self.peer.daemon.cgroup_dir(controller).joinpath(host.cgroup)

    def thaw(self, host: RawHost) -> None:
        """A cgroup a lazy dump froze stays so: the restore there must not be frozen."""
        name, value = ("cgroup.freeze", "0") if UNIFIED else ("freezer.state", "THAWED")
        with contextlib.suppress(FileNotFoundError):
            (self.cgroup("freezer", host) / name).write_text(value)

    def start(self, host: RawHost, argv: list[str], status: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
        proc = subprocess.Popen(
            [*self.lab.enter(host.name), str(DEFAULT_BINARY), *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})}, pass_fds=(status,) if status is not None else (),
        )  # fmt: skip
        self.running.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        try:
            _, stderr = proc.communicate(timeout=CRIU_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchError(f"criu ({log.name}) took more than {CRIU_TIMEOUT_S:g} s") from None
        finally:
            self.running.remove(proc)
        if proc.returncode != 0:
            raise BenchError(f"criu exited with {proc.returncode}: {reason(log, stderr)}")

    def ready(self, status: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        """Wait for CRIU's NUL on --status-fd (its images written, its server up)."""
        try:
            readable, _, _ = select.select([status], [], [], 60)
            ok = bool(readable) and os.read(status, 1) == b"\0"
        finally:
            os.close(status)
        if not ok:
            proc.kill()
            with contextlib.suppress(BenchError):
                self.finish(proc, log)
            raise BenchError(f"criu did not get ready: {reason(log, b'')}")

    def background(self, host: RawHost, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        ours, theirs = os.pipe()
        try:
            proc = self.start(host, [*argv, "--status-fd", str(theirs)], theirs)
        except BaseException:
            os.close(ours)
            raise
        finally:
            os.close(theirs)
        self.ready(ours, proc, log)
        return proc

    @staticmethod
    def copy(images: Path, into: Path, link: tuple[socket.socket, socket.socket]) -> None:
        """``tar c | tar x`` over ``link`` (see ``connect``)."""
        sender, receiver = link
        for sock in link:
            sock.setblocking(True)
        procs = [subprocess.Popen(["tar", "x", "-C", str(into)], stdin=receiver.fileno(),
                                  stderr=subprocess.PIPE),
                 subprocess.Popen(["tar", "c", "-C", str(images), "."], stdout=sender.fileno(),
                                  stderr=subprocess.PIPE)]  # fmt: skip
        for sock in link:
            sock.close()
        for proc in procs:
            try:
                _, stderr = proc.communicate(timeout=CRIU_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for each in procs:
                    each.kill()
                raise BenchError("copying the images took too long") from None
            if proc.returncode != 0:
                raise BenchError(f"tar: {stderr.decode(errors='replace').strip()}")

    def connect(self, src: RawHost, dst: RawHost, port: int) -> tuple[socket.socket, socket.socket]:
        """A TCP connection from ``src`` to ``dst``: (its sending end, its receiving end)."""
        with socket_in(self.lab.ns[dst.name]) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.lab.ip[dst.name], port))
            listener.listen(1)
            listener.settimeout(10)
            sender = socket_in(self.lab.ns[src.name])
            sender.settimeout(10)
            sender.connect((self.lab.ip[dst.name], port))
            receiver, _ = listener.accept()
        return sender, receiver

    def move(self, lazy: bool) -> tuple[float, float]:
        """One move to the other host: (frozen, total) in ms."""
        src, dst = self.hosts[self.here], self.hosts[1 - self.here]
        self.moves += 1
        port = 27000 + self.moves % 2000
        out, there = self.peer.work / src.name, self.peer.work / dst.name
        for directory in (out / "images", there / "images"):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        self.thaw(dst)
        veth = ["--external", f"veth[eth0]:ctfs{self.peer.ctid}"]
        dump = ["dump", "-t", str(self.peer.pid), "-D", str(out / "images"), "--work-dir",
                str(out), "-o", "dump.log", "--freeze-cgroup", str(self.cgroup("freezer", src)),
                *DUMP_OPTIONS, *veth]  # fmt: skip
        for ext in self.peer.externals:
            dump += ["--external", f"mnt[{ext.point}]:{ext.key}"]
        restore = ["restore", "-d", "-D", str(there / "images"), "--work-dir", str(there),
                   "-o", "restore.log", "--pidfile", str(there / "init.pid"), "--root",
                   str(self.peer.daemon.state / str(self.peer.ctid) / "root"),
                   *RESTORE_OPTIONS, *veth, "--action-script",
                   str(self.peer.work / "action")]  # fmt: skip
        roots = [f"{c}:" for c in V1_CONTROLLERS] if not UNIFIED else [""]
        parent = self.peer.daemon.cgroup_parent
        for root in roots:
            restore += ["--cgroup-root", f"{root}/{parent}/{dst.cgroup}"]
        for ext in self.peer.externals:
            restore += ["--external", f"mnt[{ext.key}]:{ext.stand_in}"]
        server = ["--address", self.lab.ip[src.name], "--port", str(port), *self.tls]
        env = {"VETH": f"ctfs{self.peer.ctid}", "ADDRESSES": self.address}
        (there / "init.pid").unlink(missing_ok=True)
        link = self.connect(src, dst, port + 2000)
        try:
            began = time.perf_counter()
            if lazy:
                dumper = self.background(src, [*dump, "--lazy-pages", *server], out / "dump.log")
            else:
                self.finish(self.start(src, dump), out / "dump.log")
            dumped = time.perf_counter()
            self.copy(out / "images", there / "images", link)
            copied = time.perf_counter()
        finally:
            for sock in link:
                sock.close()
        if lazy:
            pager = ["lazy-pages", "--page-server", *server, "-D", str(there / "images"),
                     "--work-dir", str(there), "-o", "lazy-pages.log"]  # fmt: skip
            daemon = self.background(dst, pager, there / "lazy-pages.log")
            restore.append("--lazy-pages")
        self.finish(self.start(dst, restore, env=env), there / "restore.log")
        restored = time.perf_counter()
        self.route(dst)
        if lazy:
            self.finish(daemon, there / "lazy-pages.log")
            self.finish(dumper, out / "dump.log")
        done = time.perf_counter()
        size = sum(p.stat().st_size for p in (there / "images").iterdir())
        pages = f", then every page in {ms(done - restored)}" if lazy else ""
        self.phases = (
            f"dump {ms(dumped - began)}, {size >> 10} KiB of images copied in "
            f"{ms(copied - dumped)}, restore {ms(restored - copied)}{pages}"
        )
        self.peer.pid = int((there / "init.pid").read_text())
        self.here = 1 - self.here
        return (restored - began) * 1000, (done - began) * 1000

    def close(self) -> None:
        """End the CRIU runs still under way (by PID)."""
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        self.running.clear()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def reason(log: Path, stderr: bytes) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = stderr.decode(errors="replace").splitlines()
    return " | ".join([line for line in lines if "Error" in line][-4:] or lines[-3:])
