"""A network of the test's own: a "host" namespace where a ctfsd runs, and a client.

    client netns  cl0 198.19.0.2/24, 2001:db8:19::2/64
        |  veth
    host netns    up0 198.19.0.1/24, 2001:db8:19::1/64   (ctfsd's uplink)
        |  ctfs<CTID> veths, made by ctfsd
    containers    198.19.0.10 and up, 2001:db8:19::10 and up

Everything is inside namespaces the test made and in 198.18.0.0/15 (plus the IPv6
documentation prefix): nothing can leave the machine.  ``close`` deletes both
namespaces, which takes their interfaces, routes and nft tables with them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

HOST_V4, CLIENT_V4 = "198.19.0.1", "198.19.0.2"
HOST_V6, CLIENT_V6 = "2001:db8:19::1", "2001:db8:19::2"
NETNS_DIR = Path("/run/netns")


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


class Lab:
    def __init__(self) -> None:
        tag = os.getpid()
        self.host = f"ctfs-lab-host-{tag}"
        self.client = f"ctfs-lab-client-{tag}"
        self.made: list[str] = []
        try:
            for name in (self.host, self.client):
                run("ip", "netns", "add", name)
                self.made.append(name)
            run(
                "ip",
                "link",
                "add",
                "up0",
                "netns",
                self.host,
                "type",
                "veth",
                "peer",
                "name",
                "cl0",
                "netns",
                self.client,
            )
            for ns, dev, v4, v6 in (
                (self.host, "up0", HOST_V4, HOST_V6),
                (self.client, "cl0", CLIENT_V4, CLIENT_V6),
            ):
                run("ip", "-n", ns, "link", "set", "lo", "up")
                run("ip", "-n", ns, "link", "set", dev, "up")
                run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
                run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        except BaseException:
            self.close()
            raise

    def enter(self, ns: str) -> tuple[str, ...]:
        """A command prefix that runs in namespace ``ns`` (network only, no new mounts)."""
        return ("nsenter", f"--net={NETNS_DIR / ns}")

    def in_host(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return run(*self.enter(self.host), *argv, check=check)

    def in_client(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return run(*self.enter(self.client), *argv, check=check)

    def ping_from_client(self, address: str, count: int = 1) -> bool:
        return (
            self.in_client("busybox", "ping", "-c", str(count), "-W", "2", address).returncode == 0
        )

    def close(self) -> None:
        for name in reversed(self.made):
            run("ip", "netns", "del", name, check=False)
        self.made.clear()


CAPTURE = textwrap.dedent(
    """
    import select, socket, sys, time
    needle = socket.inet_pton(socket.AF_INET, sys.argv[1])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    print("ready", flush=True)
    seen = frames = 0
    # Until told to stop on stdin (then 0.3 s more for frames in flight), or 120 s.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = select.select([sock, sys.stdin], [], [], 0.1)[0]
        if sys.stdin in ready:
            sys.stdin.readline()
            deadline = min(deadline, time.monotonic() + 0.3)
        if sock in ready:
            frame = sock.recv(65536)
            frames += 1
            seen += needle in frame
    print(frames, seen)
    """
)


class Capture:
    """Every frame a network namespace sees until ``result()``, like tcpdump -i any.

    ``result()`` is (frames seen, frames carrying ``address``).
    """

    def __init__(self, netns_path: str, address: str) -> None:
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns_path}", sys.executable, "-c", CAPTURE, address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def result(self) -> tuple[int, int]:
        out, _ = self.proc.communicate("stop\n", timeout=30)
        frames, seen = out.split()
        return int(frames), int(seen)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
