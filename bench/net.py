"""TCP throughput and round-trip time client -> container, next to a plain veth, in one run.

Two paths, measured alternately ``--rounds`` times (default 3) so that drift of
the machine hits both alike:

1. ctfs: a client network namespace -> veth uplink -> the "host" namespace where a
   private ctfsd runs (routing, proxy ARP, the nft source filter) -> the
   container's veth -> the container, which has address 198.19.0.10.  This is the
   path another machine's traffic takes to a container.
2. peer: two plain network namespaces joined by one veth (198.18.5.1 -> .2).

Throughput is one iperf3 TCP stream for ``--seconds`` (default 5); round-trip time
is a 1-byte TCP request/response (TCP_NODELAY) repeated ``--pings`` times (default
20000) by a small Python client against a Python echo server, the median per round
trip.  The servers run in the target's network namespace (nsenter --net: the
busybox template has no iperf3), which is exactly the path packets to the
container take.  iperf3 is installed with apt-get when missing (no service is left
enabled).  All addresses are in 198.18.0.0/15 inside namespaces made here; all of
them, the ctfsd and its container are removed at the end, also on failure.

Run it as root from the repository root::

    sudo .venv/bin/python -m bench.net [--rounds N] [--seconds S] [--pings N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.common import (
    BenchError,
    ensure_packages,
    must,
    print_log_tail,
    run,
    run_bench,
    safely,
    write_state,
)
from tests.ctfsd_harness import Ctfsd, write_errno
from tests.network_lab import Lab

CONTAINER_ADDRESS = "198.19.0.10"
PEER_A, PEER_B = "198.18.5.1", "198.18.5.2"
ECHO_PORT = 7007
IPERF_PORT = 5201

ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(64):
            conn.sendall(data)
        conn.close()
    """
)

ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(200):
        sock.sendall(b"x"); sock.recv(1)
    rtts = []
    for _ in range(int(sys.argv[3])):
        began = time.perf_counter()
        sock.sendall(b"x"); sock.recv(1)
        rtts.append(time.perf_counter() - began)
    rtts.sort()
    print(rtts[len(rtts) // 2])
    """
)


@dataclass
class PathResults:
    label: str
    gbits: list[float] = field(default_factory=list)
    rtt_us: list[float] = field(default_factory=list)


def _nsenter(netns_path: str) -> list[str]:
    return ["nsenter", f"--net={netns_path}"]


@contextlib.contextmanager
def servers(netns_path: str) -> Iterator[None]:
    """An iperf3 server and a TCP echo server in the namespace at ``netns_path``."""
    procs: list[subprocess.Popen[str]] = []
    try:
        iperf = subprocess.Popen(
            [*_nsenter(netns_path), "iperf3", "-s", "-p", str(IPERF_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(iperf)
        echo = subprocess.Popen(
            [*_nsenter(netns_path), sys.executable, "-c", ECHO_SERVER, str(ECHO_PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(echo)
        assert echo.stdout is not None
        if echo.stdout.readline().strip() != "ready":
            raise BenchError(f"the echo server in {netns_path} did not start")
        time.sleep(0.3)  # iperf3 prints nothing when it listens
        yield
    finally:
        for proc in procs:  # ended by PID, never by name
            proc.kill()
            proc.wait()


def measure(client_ns: str, address: str, seconds: float, pings: int, into: PathResults) -> None:
    done = run(
        [*_nsenter(client_ns), "iperf3", "-c", address, "-p", str(IPERF_PORT), "-t",
         str(seconds), "-J"],
        timeout=seconds + 60,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"iperf3 to {address} failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    bits = json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]
    into.gbits.append(bits / 1e9)
    echo = run(
        [*_nsenter(client_ns), sys.executable, "-c", ECHO_CLIENT, address, str(ECHO_PORT),
         str(pings)],
    )  # fmt: skip
    if echo.returncode != 0:
        raise BenchError(f"the echo client to {address} failed: {echo.stderr[-500:]}")
    into.rtt_us.append(float(echo.stdout) * 1e6)


@contextlib.contextmanager
def plain_veth_pair() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by one veth; yields their /run/netns paths."""
    names = [f"ctfs-bench-a-{os.getpid()}", f"ctfs-bench-b-{os.getpid()}"]
    made: list[str] = []
    try:
        for name in names:
            must(["ip", "netns", "add", name])
            made.append(name)
        must(["ip", "link", "add", "pa0", "netns", names[0], "type", "veth", "peer", "name",
              "pb0", "netns", names[1]])  # fmt: skip
        for name, dev, address in ((names[0], "pa0", PEER_A), (names[1], "pb0", PEER_B)):
            must(["ip", "-n", name, "link", "set", "lo", "up"])
            must(["ip", "-n", name, "link", "set", dev, "up"])
            must(["ip", "-n", name, "addr", "add", f"{address}/30", "dev", dev])
        yield f"/run/netns/{names[0]}", f"/run/netns/{names[1]}"
    finally:
        for name in reversed(made):
            safely(f"deleting netns {name}", lambda n=name: must(["ip", "netns", "del", n]))


def summary(results: PathResults) -> tuple[float, float]:
    return statistics.median(results.gbits), statistics.median(results.rtt_us)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pings", type=int, default=20000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise BenchError("run it as root (sudo .venv/bin/python -m bench.net)")
    ensure_packages(["iperf3"])

    ctfs = PathResults("ctfs: client -> uplink -> host -> container")
    peer = PathResults("plain veth between two namespaces")
    lab = Lab()
    daemon = Ctfsd(wrapper=lab.enter(lab.host), extra=("--uplink", "up0"))
    container = daemon.mount / "101"
    try:
        daemon.start()
        container.mkdir()
        if write_errno(container / "ip", CONTAINER_ADDRESS.encode()) != 0:
            raise BenchError(f"cannot give the container {CONTAINER_ADDRESS}")
        write_state(container, "running")
        init = int((container / "procs").read_text().split()[0])
        client_ns = f"/run/netns/{lab.client}"
        with (
            plain_veth_pair() as (peer_a, peer_b),
            servers(f"/proc/{init}/ns/net"),
            servers(peer_b),
        ):
            for _ in range(args.rounds):
                measure(peer_a, PEER_B, args.seconds, args.pings, peer)
                measure(client_ns, CONTAINER_ADDRESS, args.seconds, args.pings, ctfs)
    except BenchError:
        print_log_tail(daemon)
        raise
    finally:
        safely("stopping the container", lambda: write_errno(container / "state", b"stopped"))
        safely("removing the container", lambda: container.rmdir())
        safely("stopping ctfsd", daemon.cleanup)
        safely("removing the lab namespaces", lab.close)

    print(f"\nTCP client -> server, {args.rounds} rounds, alternating; medians")
    print(f"  {'path':<48} {'Gbit/s':>8} {'RTT µs':>8}")
    for results in (peer, ctfs):
        gbits, rtt = summary(results)
        print(f"  {results.label:<48} {gbits:>8.2f} {rtt:>8.1f}")
    (peer_gbits, peer_rtt), (ctfs_gbits, ctfs_rtt) = summary(peer), summary(ctfs)
    print(
        f"\n  ctfs costs {100 * (1 - ctfs_gbits / peer_gbits):+.1f} % throughput and "
        f"{100 * (ctfs_rtt / peer_rtt - 1):+.1f} % round-trip time against the plain veth"
    )
    print(f"  every round: peer {peer.gbits} Gbit/s, ctfs {ctfs.gbits} Gbit/s")
    return 0


if __name__ == "__main__":
    run_bench("bench.net", main)
