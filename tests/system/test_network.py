"""Container networking against the real kernel, inside the test's own namespaces.

A second ctfsd runs in the lab's "host" namespace (see ``network_lab``) with up0 as
its uplink, so forwarding, proxy ARP and the nft table never touch the machine's
own network.
"""

from __future__ import annotations

import errno
import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ctfsd_harness import Ctfsd, ctfs_exec, write_errno
from tests.network_lab import CLIENT_V4, HOST_V4, HOST_V6, Capture, Lab

_hosts = itertools.count(10)
_ctids = itertools.count(9101)


def _address() -> str:
    return f"198.19.0.{next(_hosts)}"


MakeCt = Callable[..., Path]


@pytest.fixture
def make_ct(net_ctfsd: Ctfsd) -> Iterator[MakeCt]:
    """Create containers in the lab's ctfsd; all are stopped and destroyed afterwards."""
    made: list[Path] = []

    def make(addresses: str = "", start: bool = True) -> Path:
        path = net_ctfsd.mount / str(next(_ctids))
        path.mkdir()
        made.append(path)
        if addresses:
            assert write_errno(path / "ip", addresses.encode()) == 0, _events(path)
        if start:
            assert write_errno(path / "state", b"running") == 0, _events(path)
        return path

    yield make
    for path in made:
        if write_errno(path / "state", b"stopped") not in (0, errno.ENOENT):
            net_ctfsd.kill_container(int(path.name))
        if path.exists():
            path.rmdir()


def _events(ct: Path) -> str:
    return (ct / "events").read_text()


def _init(ct: Path) -> int:
    return int((ct / "procs").read_text().split()[0])


def _ping(ct: Path, address: str, *options: str) -> bool:
    return ctfs_exec(ct, "ping", "-c", "1", "-W", "2", *options, address).returncode == 0


def _host_links(lab: Lab) -> str:
    return lab.in_host("ip", "-o", "link").stdout


# ------------------------------------------------------------------ the ip file


def test_ip_file_of_a_new_container_is_empty(make_ct: MakeCt) -> None:
    ct = make_ct(start=False)
    assert (ct / "ip").read_text() == ""


def test_address_set_while_stopped_is_saved_as_ip_address(
    make_ct: MakeCt, net_ctfsd: Ctfsd
) -> None:
    ct = make_ct(start=False)
    address = _address()
    assert write_errno(ct / "ip", f"{address}\n".encode()) == 0
    assert (ct / "ip").read_text() == f"{address}\n"
    conf = (net_ctfsd.state / ct.name / "ctid.conf").read_text()
    assert f'IP_ADDRESS="{address}"' in conf


def test_plus_adds_and_minus_removes_one_address(make_ct: MakeCt) -> None:
    ct = make_ct(start=False)
    first, second = _address(), _address()
    assert write_errno(ct / "ip", f"+{first}".encode()) == 0
    assert write_errno(ct / "ip", f"+{second}".encode()) == 0
    assert write_errno(ct / "ip", b"+2001:db8:19::77") == 0
    assert (ct / "ip").read_text().split() == [first, second, "2001:db8:19::77"]
    assert write_errno(ct / "ip", f"-{first}".encode()) == 0
    assert (ct / "ip").read_text().split() == [second, "2001:db8:19::77"]


def test_a_list_replaces_the_whole_set(make_ct: MakeCt) -> None:
    ct = make_ct(_address(), start=False)
    new = [_address(), _address()]
    assert write_errno(ct / "ip", " ".join(new).encode()) == 0
    assert (ct / "ip").read_text().split() == new
    assert write_errno(ct / "ip", b"\n") == 0
    assert (ct / "ip").read_text() == ""


@pytest.mark.parametrize(
    "value",
    [
        "198.19.0.300",
        "not-an-address",
        "198.19.0.0/24",
        "127.0.0.1",
        "224.0.0.1",
        "fe80::1",
        "0.0.0.0",
        "+",
        "+198.19.1.1 -198.19.1.2",
    ],
)
def test_bad_address_is_einval_and_changes_nothing(make_ct: MakeCt, value: str) -> None:
    address = _address()
    ct = make_ct(address, start=False)
    assert write_errno(ct / "ip", value.encode()) == errno.EINVAL
    assert (ct / "ip").read_text() == f"{address}\n"
    assert "ip: rejected" in _events(ct)


def test_adding_an_address_twice_is_einval(make_ct: MakeCt) -> None:
    address = _address()
    ct = make_ct(address, start=False)
    assert write_errno(ct / "ip", f"+{address}".encode()) == errno.EINVAL
    assert write_errno(ct / "ip", f"{address} {address}".encode()) == errno.EINVAL
    assert "already has" in _events(ct)


def test_removing_an_address_it_lacks_is_einval(make_ct: MakeCt) -> None:
    ct = make_ct(start=False)
    assert write_errno(ct / "ip", b"-198.19.9.9") == errno.EINVAL
    assert "does not have 198.19.9.9" in _events(ct)


def test_another_containers_address_is_eaddrinuse(make_ct: MakeCt) -> None:
    address = _address()
    owner = make_ct(address, start=False)
    ct = make_ct(start=False)
    assert write_errno(ct / "ip", f"+{address}".encode()) == errno.EADDRINUSE
    assert f"{address} is already used by container {owner.name}" in _events(ct)
    assert (ct / "ip").read_text() == ""


def test_the_hosts_own_address_is_eaddrinuse(make_ct: MakeCt) -> None:
    ct = make_ct(start=False)
    assert write_errno(ct / "ip", HOST_V4.encode()) == errno.EADDRINUSE
    assert "already used by the host itself" in _events(ct)


# ------------------------------------------------------------- reachability


def test_client_reaches_container_through_the_uplink(make_ct: MakeCt, lab: Lab) -> None:
    address = _address()
    make_ct(address)
    assert lab.ping_from_client(address)


def test_container_reaches_the_host_and_the_client(make_ct: MakeCt) -> None:
    ct = make_ct(_address())
    assert _ping(ct, HOST_V4)
    assert _ping(ct, CLIENT_V4)


def test_ipv6_address_is_reachable_both_ways(make_ct: MakeCt, lab: Lab) -> None:
    ct = make_ct("2001:db8:19::a1")
    assert lab.ping_from_client("2001:db8:19::a1")
    assert _ping(ct, HOST_V6)


def test_address_added_while_running_answers_at_once(make_ct: MakeCt, lab: Lab) -> None:
    ct = make_ct(_address())
    extra = _address()
    assert write_errno(ct / "ip", f"+{extra}".encode()) == 0
    assert lab.ping_from_client(extra)


def test_address_removed_while_running_stops_answering(make_ct: MakeCt, lab: Lab) -> None:
    keep, drop = _address(), _address()
    ct = make_ct(f"{keep} {drop}")
    assert lab.ping_from_client(drop)
    assert write_errno(ct / "ip", f"-{drop}".encode()) == 0
    assert not lab.ping_from_client(drop)
    assert lab.ping_from_client(keep)
    assert drop not in lab.in_host("ip", "neigh", "show", "proxy").stdout


def test_first_address_of_a_running_container_creates_its_veth(make_ct: MakeCt, lab: Lab) -> None:
    ct = make_ct()
    assert f"ctfs{ct.name}" not in _host_links(lab)
    address = _address()
    assert write_errno(ct / "ip", address.encode()) == 0
    assert f"ctfs{ct.name}@" in _host_links(lab)
    assert lab.ping_from_client(address)


def test_two_containers_talk_only_through_the_hosts_routing(make_ct: MakeCt, lab: Lab) -> None:
    a, b = _address(), _address()
    ct_a = make_ct(a)
    ct_b = make_ct(b)
    reply = ctfs_exec(ct_a, "ping", "-c", "1", "-W", "2", b)
    assert reply.returncode == 0
    # The host forwarded it: one hop, so the reply's TTL is one less than 64.
    assert "ttl=63" in reply.stdout
    # And without the host forwarding for b's link, a cannot reach b at all.
    sysctl = f"net.ipv4.conf.ctfs{ct_b.name}.forwarding"
    assert lab.in_host("sysctl", "-qw", f"{sysctl}=0").returncode == 0
    try:
        assert not _ping(ct_a, b)
    finally:
        lab.in_host("sysctl", "-qw", f"{sysctl}=1")


# --------------------------------------------------------------- isolation


def test_capture_in_one_container_sees_nothing_of_anothers_traffic(make_ct: MakeCt) -> None:
    a, b = _address(), _address()
    ct_a = make_ct(a)
    ct_b = make_ct(b)
    with Capture(f"/proc/{_init(ct_b)}/ns/net", a) as capture:
        assert ctfs_exec(ct_a, "ping", "-c", "5", "-i", "0.2", HOST_V4).returncode == 0
        assert _ping(ct_b, HOST_V4)  # the capture does see b's own traffic
        frames, with_a = capture.result()
    assert frames >= 2
    assert with_a == 0


def test_spoofed_source_address_is_dropped_by_the_host(make_ct: MakeCt, lab: Lab) -> None:
    ct = make_ct(_address())
    spoofed = _address()
    added = ctfs_exec(ct, "/usr/sbin/ip", "addr", "add", f"{spoofed}/32", "dev", "eth0")
    assert added.returncode == 0, added.stderr
    with Capture(f"/run/netns/{lab.client}", spoofed) as capture:
        assert _ping(ct, CLIENT_V4)  # its own address works, and the capture sees it
        assert not _ping(ct, CLIENT_V4, "-I", spoofed)
        frames, spoofed_frames = capture.result()
    assert frames >= 2
    assert spoofed_frames == 0


def test_source_filter_is_rebuilt_when_its_table_was_removed(make_ct: MakeCt, lab: Lab) -> None:
    ct = make_ct(_address())
    assert lab.in_host("nft", "delete", "table", "inet", "ctfs").returncode == 0
    extra = _address()
    assert write_errno(ct / "ip", f"+{extra}".encode()) == 0
    table = lab.in_host("nft", "list", "table", "inet", "ctfs").stdout
    assert extra in table and "drop" in table
    assert _ping(ct, CLIENT_V4, "-I", extra)


def test_iptables_rule_in_one_container_does_not_affect_another(make_ct: MakeCt) -> None:
    ct_a = make_ct(_address())
    ct_b = make_ct(_address())
    rule = ctfs_exec(ct_a, "iptables", "-A", "OUTPUT", "-d", HOST_V4, "-j", "DROP")
    assert rule.returncode == 0, rule.stderr
    assert not _ping(ct_a, HOST_V4)
    assert _ping(ct_b, HOST_V4)
    assert "198.19.0.1" not in ctfs_exec(ct_b, "iptables", "-S").stdout


def test_route_with_mtu_and_src_works_inside(make_ct: MakeCt) -> None:
    first, second = _address(), _address()
    ct = make_ct(f"{first} {second}")
    added = ctfs_exec(
        ct, "/usr/sbin/ip", "route", "add", CLIENT_V4, "dev", "eth0", "mtu", "1280", "src", second
    )
    assert added.returncode == 0, added.stderr
    route = ctfs_exec(ct, "/usr/sbin/ip", "route", "get", CLIENT_V4).stdout
    assert f"src {second}" in route
    assert "mtu 1280" in route
    assert _ping(ct, CLIENT_V4)


# ------------------------------------------------------- /etc and name servers


def test_hosts_file_follows_hostname_and_address(make_ct: MakeCt) -> None:
    address = _address()
    ct = make_ct(address)
    assert write_errno(ct / "hostname", b"web1.example.com") == 0
    hosts = ctfs_exec(ct, "cat", "/etc/hosts").stdout
    assert re.search(rf"^{re.escape(address)}\s+web1\.example\.com web1\s", hosts, re.M)
    assert "localhost" in hosts
    assert ctfs_exec(ct, "hostname").stdout.strip() == "web1.example.com"


def test_hosts_file_keeps_lines_people_wrote(make_ct: MakeCt) -> None:
    ct = make_ct(_address())
    ctfs_exec(ct, "sh", "-c", "echo '198.19.7.7 db' >> /etc/hosts")
    assert write_errno(ct / "hostname", b"renamed") == 0
    hosts = ctfs_exec(ct, "cat", "/etc/hosts").stdout
    assert "198.19.7.7 db" in hosts
    assert hosts.count("# ctfs") == 1


def test_etc_files_are_never_written_through_a_container_symlink(
    make_ct: MakeCt, tmp_path: Path
) -> None:
    target = tmp_path / "host-file"
    target.write_text("host secret\n")
    ct = make_ct(_address())
    linked = ctfs_exec(ct, "sh", "-c", f"ln -sf {target} /etc/hosts")
    assert linked.returncode == 0
    assert write_errno(ct / "hostname", b"escaped") == 0
    assert target.read_text() == "host secret\n"
    assert "escaped" in ctfs_exec(ct, "cat", "/etc/hosts").stdout


def test_nameserver_list_goes_to_resolv_conf(make_ct: MakeCt) -> None:
    ct = make_ct(_address())
    assert write_errno(ct / "nameserver", b"198.19.0.53 2001:db8:19::53") == 0
    assert (ct / "nameserver").read_text() == "198.19.0.53\n2001:db8:19::53\n"
    resolv = ctfs_exec(ct, "cat", "/etc/resolv.conf").stdout
    servers = [line for line in resolv.splitlines() if line.startswith("nameserver")]
    assert servers == ["nameserver 198.19.0.53", "nameserver 2001:db8:19::53"]


def test_nameserver_inherit_copies_the_hosts(make_ct: MakeCt) -> None:
    ct = make_ct(start=False)
    host_servers = [
        line.split()[1]
        for line in Path("/etc/resolv.conf").read_text().splitlines()
        if line.startswith("nameserver ")
    ][:3]
    assert write_errno(ct / "nameserver", b"inherit") == 0
    assert (ct / "nameserver").read_text().split() == host_servers


def test_bad_nameserver_is_einval(make_ct: MakeCt) -> None:
    ct = make_ct(start=False)
    assert write_errno(ct / "nameserver", b"dns.example.com") == errno.EINVAL
    assert write_errno(ct / "nameserver", b"198.19.0.1 198.19.0.2 198.19.0.3 198.19.0.4") == (
        errno.EINVAL
    )
    assert (ct / "nameserver").read_text() == ""
    assert "nameserver: rejected" in _events(ct)


# ------------------------------------------------------------ nothing left


def test_stop_removes_veth_routes_and_proxies(make_ct: MakeCt, lab: Lab) -> None:
    address = _address()
    ct = make_ct(f"{address} 2001:db8:19::b7")
    assert f"ctfs{ct.name}@" in _host_links(lab)
    assert write_errno(ct / "state", b"stopped") == 0
    assert f"ctfs{ct.name}" not in _host_links(lab)
    routes = lab.in_host("ip", "route").stdout + lab.in_host("ip", "-6", "route").stdout
    assert address not in routes and "2001:db8:19::b7" not in routes
    proxies = lab.in_host("ip", "neigh", "show", "proxy").stdout
    assert proxies.strip() == "" or address not in proxies
    assert address not in lab.in_host("nft", "list", "table", "inet", "ctfs").stdout


def test_network_is_kept_across_a_daemon_crash_and_cleaned_after(
    make_ct: MakeCt, lab: Lab, net_ctfsd: Ctfsd
) -> None:
    address = _address()
    ct = make_ct(address)
    net_ctfsd.kill()
    assert lab.ping_from_client(address)
    net_ctfsd.start()
    assert (ct / "state").read_text() == "running\n"
    assert write_errno(ct / "state", b"stopped") == 0
    assert address not in lab.in_host("ip", "neigh", "show", "proxy").stdout
    assert f"ctfs{ct.name}" not in _host_links(lab)


# --------------------------------------------------------------- accounting


def _held(ct: Path, resource: str) -> int:
    for line in (ct / "beancounters").read_text().splitlines():
        words = line.split()
        if resource in words:
            return int(words[words.index(resource) + 1])
    raise AssertionError(f"{resource} not in beancounters")


def test_numiptent_counts_the_containers_own_rules(make_ct: MakeCt) -> None:
    ct = make_ct(_address())
    other = make_ct(_address())
    assert _held(ct, "numiptent") == 0
    for port in ("81", "82", "83"):
        rule = ctfs_exec(ct, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", port, "-j", "DROP")
        assert rule.returncode == 0, rule.stderr
    assert _held(ct, "numiptent") == 3
    assert _held(other, "numiptent") == 0
