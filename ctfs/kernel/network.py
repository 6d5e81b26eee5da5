"""Routed container networking, in the spirit of OpenVZ's venet, through pyroute2.

Each container with addresses gets a veth pair: ``eth0`` inside, ``ctfs<CTID>`` on
the host.  Inside, eth0 carries exactly the container's addresses (/32, /128) and a
default route through the host.  On the host, a route per container address points
at its veth, the veth answers ARP for everything (proxy_arp: the container's next
hop is always the host) and a proxy ARP/NDP entry per address on the uplink lets
other machines on the uplink's network reach the container.  Traffic between two
containers therefore always passes the host's routing; no container ever shares a
link with another, so it cannot capture another's packets.

Source addresses are checked by ``ctfs.kernel.source_filter``, a backend of its own.

Invariants: ``configure`` and ``remove`` are idempotent and converge the kernel to
what they are given; all of them run in worker threads, serialised by one lock.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ctfs.kernel import announce as announcing
from ctfs.kernel import netns, tcp_replay
from ctfs.kernel.api import IPAddress as Address
from ctfs.kernel.api import NetworkError, Traffic, Veth

log = logging.getLogger(__name__)

HOST_PREFIX = "ctfs"
GUEST_IFNAME = "eth0"
# The container's IPv6 next hop: the host end's own link-local address.
HOST_LINK_LOCAL6 = "fe80::1"
UPLINK_AUTO = "auto"
UPLINK_NONE = "none"

_NTF_PROXY = 0x08
_IFA_F_NODAD = 0x02
_RT_SCOPE_LINK = 253
# The main routing table (RT_TABLE_MAIN in <linux/rtnetlink.h>).
_MAIN_TABLE = 254


def host_ifname(ctid: int) -> str:
    """The host end of a container's veth (at most 14 characters: IFNAMSIZ is 16)."""
    return f"{HOST_PREFIX}{ctid}"


def prepare_host_end(ipr: IPRoute, index: int, name: str) -> None:
    """The host end answers ARP for everything (the container's next hop is the host)
    and has fe80::1, the container's IPv6 next hop; no DAD on a two-ended link.

    It answers at once: Linux delays proxy ARP replies by a random time of up to
    ``proxy_delay`` (0.8 s by default), and a container's first packets after a
    start or a restore wait for that answer (measured after a migration: 340 ms
    between the container's ARP request and the reply, its restored connections
    stalled meanwhile).
    """
    _write_sysctl(f"ipv4/conf/{name}/proxy_arp", "1")
    _write_sysctl(f"ipv4/neigh/{name}/proxy_delay", "0")
    _write_sysctl(f"ipv6/conf/{name}/accept_ra", "0")
    _write_sysctl(f"ipv6/conf/{name}/accept_dad", "0")
    ipr.link("set", index=index, state="up")
    with _ignoring(errno.EEXIST):
        ipr.addr("add", index=index, address=HOST_LINK_LOCAL6, prefixlen=64, flags=_IFA_F_NODAD)


def make_restored_veth(name: str, pid: int, addresses: Iterable[Address]) -> None:
    """The veth of a container being restored in a user namespace, made and configured.

    CRIU cannot make it there; the restored sockets need their addresses at once.
    Proxies and the source filter stayed in place while it was frozen.
    """
    wanted = tuple(addresses)
    network = Network(UPLINK_NONE)
    with _netlink(f"make {name}") as ipr:
        index = network.make_veth(ipr, name, pid)
        Network.configure_guest(pid, wanted)
        Network.route_to(ipr, index, wanted)


def ready_restored_host_end(name: str, addresses: Iterable[Address]) -> None:
    """The host end of a veth CRIU has just recreated: configured and routed.

    Runs from CRIU's action script, before the restored container runs, so its
    connections find their way at once (proxies and the source filter stayed in
    place while it was frozen).
    """
    with _netlink(f"ready {name}") as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NetworkError(f"{name} does not exist")
        index = int(found[0])
        prepare_host_end(ipr, index, name)
        Network.route_to(ipr, index, tuple(addresses))


@contextlib.contextmanager
def _netlink(what: str) -> Iterator[IPRoute]:
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise NetworkError(f"{what}: {os.strerror(exc.code)}") from exc


def _ignoring(*codes: int) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except NetlinkError as exc:
            if exc.code not in codes:
                raise

    return guard()


def _write_sysctl(path: str, value: str) -> bool:
    """Set a /proc/sys value of this thread's network namespace; True if it changed."""
    file = Path("/proc/sys/net") / path
    if file.read_text().strip() == value:
        return False
    file.write_text(value)
    return True


class Network:
    """The host side of every container's network; one per ctfsd."""

    def __init__(self, uplink: str = UPLINK_AUTO) -> None:
        self.uplink = uplink
        self._lock = threading.Lock()
        self._proxied: dict[int, tuple[Address, ...]] = {}

    def veth(self, ctid: int) -> Veth:
        return Veth(GUEST_IFNAME, host_ifname(ctid))

    def traffic(self, ctid: int) -> Traffic | None:
        # The host end counts the other way round: what it sends, eth0 received.
        statistics = Path("/sys/class/net") / host_ifname(ctid) / "statistics"
        try:
            sent_here = int((statistics / "tx_bytes").read_text())
            received_here = int((statistics / "rx_bytes").read_text())
        except (OSError, ValueError):
            return None
        return Traffic(received=sent_here, sent=received_here)

    # ----------------------------------------------------------- queries

    def host_addresses(self) -> set[Address]:
        """The addresses the host itself (ctfsd's network namespace) has."""
        with _netlink("list the host's addresses") as ipr:
            found = set()
            for msg in ipr.get_addr():
                value = msg.get_attr("IFA_ADDRESS")
                if value:
                    found.add(ipaddress.ip_address(value.partition("%")[0]))
            return found

    def uplinks(self, ipr: IPRoute) -> list[int]:
        """Interface indexes that get proxy ARP/NDP entries for container addresses."""
        if self.uplink == UPLINK_NONE:
            return []
        if self.uplink != UPLINK_AUTO:
            return list(ipr.link_lookup(ifname=self.uplink))
        found: list[int] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=_MAIN_TABLE):
                oif = route.get_attr("RTA_OIF")
                if route["dst_len"] == 0 and oif and oif not in found:
                    found.append(oif)
        return found

    def announce(self, addresses: Sequence[Address]) -> None:
        """Tell every uplink's neighbours that ``addresses`` are reached here now."""
        if not addresses:
            return
        with _netlink("list the uplinks") as ipr:
            links = [ipr.get_links(index)[0] for index in self.uplinks(ipr)]
        for link in links:
            mac = bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))
            announcing.announce(link.get_attr("IFLA_IFNAME"), mac, addresses)

    def capture_segments(self, addresses: Sequence[Address]) -> tcp_replay.SegmentCapture:
        with _netlink("list the uplinks") as ipr:
            names = [ipr.get_links(index)[0].get_attr("IFLA_IFNAME") for index in self.uplinks(ipr)]
        return tcp_replay.SegmentCapture(names, addresses)

    def destination_of(self, packet: bytes) -> Address | None:
        found = tcp_replay.tcp_segment(packet)
        return None if found is None else found[1]

    def replay_segments(self, packets: Sequence[bytes]) -> int:
        return tcp_replay.replay(packets)

    # ----------------------------------------------------------- changes

    def configure(self, ctid: int, pid: int, addresses: Sequence[Address]) -> None:
        """Make container ``ctid`` (init ``pid``) reachable at exactly ``addresses``."""
        wanted = tuple(addresses)
        with self._lock:
            if not wanted:
                self._remove_locked(ctid)
                return
            self._enable_forwarding(wanted)
            with _netlink(f"set up {host_ifname(ctid)}") as ipr:
                index = self._ensure_veth(ipr, ctid, pid)
                self.configure_guest(pid, wanted)
                self.route_to(ipr, index, wanted)
                self._proxy(ipr, ctid, wanted)

    def adopt(self, running: Mapping[int, Sequence[Address]]) -> None:
        """Take over the networks of containers that ran on while ctfsd was away.

        Their veths, routes and proxies are still in the kernel; ctfs only has to
        know them again.
        """
        with self._lock:
            self._proxied = {ctid: tuple(addrs) for ctid, addrs in running.items() if addrs}

    def remove(self, ctid: int) -> None:
        """Remove everything ``configure`` made for ``ctid``; nothing left on the host."""
        with self._lock:
            self._remove_locked(ctid)

    def remove_link(self, ctid: int) -> None:
        """Remove only the veth (and with it the host routes) of ``ctid``.

        A frozen container keeps its proxy entries and its place in the source
        filter, so that its restored connections work from the first packet.
        """
        with self._lock, _netlink(f"remove {host_ifname(ctid)}") as ipr:
            self._delete_link(ipr, ctid)

    def forget(self, ctid: int, addresses: Sequence[Address]) -> None:
        """Proxy entries an earlier ctfsd may have left for ``addresses`` go too."""
        with self._lock:
            self._proxied[ctid] = tuple({*self._proxied.get(ctid, ()), *addresses})
            self._remove_locked(ctid)

    def _remove_locked(self, ctid: int) -> None:
        with _netlink(f"remove {host_ifname(ctid)}") as ipr:
            self._delete_link(ipr, ctid)
            self._proxy(ipr, ctid, ())

    # ------------------------------------------------------------- steps

    @staticmethod
    def _delete_link(ipr: IPRoute, ctid: int) -> None:
        for index in ipr.link_lookup(ifname=host_ifname(ctid)):
            # The peer inside goes with it, and so do the routes through it.
            with _ignoring(errno.ENOENT, errno.ENODEV):  # gone meanwhile
                ipr.link("del", index=index)

    def _enable_forwarding(self, addresses: tuple[Address, ...]) -> None:
        if any(a.version == 4 for a in addresses) and _write_sysctl("ipv4/ip_forward", "1"):
            log.warning("enabled IPv4 forwarding: containers are routed through this host")
        if any(a.version == 6 for a in addresses) and _write_sysctl(
            "ipv6/conf/all/forwarding", "1"
        ):
            log.warning("enabled IPv6 forwarding: containers are routed through this host")

    def _ensure_veth(self, ipr: IPRoute, ctid: int, pid: int) -> int:
        """The host end's index; the pair is made (eth0 in the container) if missing."""
        name = host_ifname(ctid)
        existing = ipr.link_lookup(ifname=name)
        if existing and self._guest_has_eth0(pid):
            return int(existing[0])
        for index in existing:  # left from an earlier run: its peer is elsewhere
            ipr.link("del", index=index)
        return self.make_veth(ipr, name, pid)

    @staticmethod
    def make_veth(ipr: IPRoute, name: str, pid: int) -> int:
        """A new pair: ``name`` on the host, eth0 in the network namespace of ``pid``."""
        fd = os.open(netns.path(pid), os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link(
                "add", ifname=name, kind="veth", peer={"ifname": GUEST_IFNAME, "net_ns_fd": fd}
            )
        finally:
            os.close(fd)
        index = int(ipr.link_lookup(ifname=name)[0])
        prepare_host_end(ipr, index, name)
        return index

    @staticmethod
    def _guest_has_eth0(pid: int) -> bool:
        with netns.entered(pid), IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=GUEST_IFNAME))

    @staticmethod
    def configure_guest(pid: int, wanted: tuple[Address, ...]) -> None:
        with netns.entered(pid), _netlink("configure eth0 in the container") as ipr:
            index = ipr.link_lookup(ifname=GUEST_IFNAME)[0]
            # No duplicate address detection: the link has exactly two ends, both ours,
            # and an address waiting out DAD would not work for the first second.
            _write_sysctl(f"ipv6/conf/{GUEST_IFNAME}/accept_dad", "0")
            ipr.link("set", index=index, state="up")
            present = {
                ipaddress.ip_address(m.get_attr("IFA_ADDRESS"))
                for m in ipr.get_addr(index=index)
                if m["scope"] == 0  # global: link-local ones are the kernel's
            }
            for address in present - set(wanted):
                with _ignoring(errno.EADDRNOTAVAIL):
                    ipr.addr(
                        "del", index=index, address=str(address), prefixlen=address.max_prefixlen
                    )
            for address in wanted:
                if address not in present:
                    ipr.addr(
                        "add",
                        index=index,
                        address=str(address),
                        prefixlen=address.max_prefixlen,
                        flags=_IFA_F_NODAD,
                    )
            has4 = any(a.version == 4 for a in wanted)
            has6 = any(a.version == 6 for a in wanted)
            if has4:
                ipr.route("replace", dst="0.0.0.0/0", oif=index, scope=_RT_SCOPE_LINK)
            else:
                with _ignoring(errno.ESRCH, errno.ENOENT):
                    ipr.route("del", dst="0.0.0.0/0", oif=index)
            if has6:
                ipr.route("replace", dst="::/0", gateway=HOST_LINK_LOCAL6, oif=index)
            else:
                with _ignoring(errno.ESRCH, errno.ENOENT):
                    ipr.route("del", dst="::/0", oif=index)

    @staticmethod
    def route_to(ipr: IPRoute, index: int, wanted: tuple[Address, ...]) -> None:
        """Host routes through the veth: exactly one per container address."""
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, oif=index, table=_MAIN_TABLE):
                dst = route.get_attr("RTA_DST")
                if dst is None or route["dst_len"] not in (32, 128):
                    continue
                if ipaddress.ip_address(dst) not in wanted:
                    with _ignoring(errno.ESRCH, errno.ENOENT):
                        ipr.route("del", dst=f"{dst}/{route['dst_len']}", oif=index)
        for address in wanted:
            scope = _RT_SCOPE_LINK if address.version == 4 else 0
            ipr.route("replace", dst=f"{address}/{address.max_prefixlen}", oif=index, scope=scope)

    def _proxy(self, ipr: IPRoute, ctid: int, wanted: tuple[Address, ...]) -> None:
        """Proxy ARP/NDP entries on the uplinks for exactly ``wanted``."""
        uplinks = self.uplinks(ipr)
        stale = [a for a in self._proxied.get(ctid, ()) if a not in wanted]
        for index in uplinks:
            for address in stale:
                with _ignoring(errno.ENOENT, errno.ESRCH):
                    ipr.neigh("del", dst=str(address), ifindex=index, flags=_NTF_PROXY)
            if any(a.version == 6 for a in wanted):
                name = ipr.get_links(index)[0].get_attr("IFLA_IFNAME")
                _write_sysctl(f"ipv6/conf/{name}/proxy_ndp", "1")
            for address in wanted:
                ipr.neigh("replace", dst=str(address), ifindex=index, flags=_NTF_PROXY)
        if wanted:
            self._proxied[ctid] = wanted
        else:
            self._proxied.pop(ctid, None)
