"""Two hosts and a client on one switch, all in namespaces the test made.

    hosta netns   up0 198.18.77.1/24, 2001:db8:77::1/64   (a ctfsd, its uplink)
    hostb netns   up0 198.18.77.2/24, 2001:db8:77::2/64   (another ctfsd, its uplink)
    client netns  up0 198.18.77.3/24, 2001:db8:77::3/64
          \\         |         /
    switch netns  br0 (a bridge; p-hosta, p-hostb, p-client)

Containers get addresses in 198.18.77.0/24 and 2001:db8:77::/64 too: whichever
host runs one answers ARP and NDP for it (proxy entries on its uplink), as on a
real LAN.  Nothing leaves the
machine; ``close`` deletes the four namespaces and everything in them.
"""

from __future__ import annotations

import os

from tests.network_lab import NETNS_DIR, run

PREFIX = "198.18.77"
PREFIX6 = "2001:db8:77::"
HOSTS = {"hosta": f"{PREFIX}.1", "hostb": f"{PREFIX}.2", "client": f"{PREFIX}.3"}


class MigrationLab:
    def __init__(self) -> None:
        tag = os.getpid()
        self.switch = f"ctfs-mig-switch-{tag}"
        self.ns = {name: f"ctfs-mig-{name}-{tag}" for name in HOSTS}
        self.made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        run("ip", "netns", "add", self.switch)
        self.made.append(self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for name, address in HOSTS.items():
            ns = self.ns[name]
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            port = f"p-{name}"
            run("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name",
                "up0", "netns", ns)  # fmt: skip
            run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "set", "up0", "up")
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "up0")
            v6 = PREFIX6 + address.rsplit(".", 1)[1]
            run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", "up0", "nodad")

    def enter(self, name: str) -> tuple[str, ...]:
        """A command prefix that runs in ``name``'s network namespace."""
        return ("nsenter", f"--net={NETNS_DIR / self.ns[name]}")

    def close(self) -> None:
        for name in reversed(self.made):
            run("ip", "netns", "del", name, check=False)
        self.made.clear()
