"""Container addresses and name servers as people write them: pure parsing and rendering.

A container address is one host address (IPv4 or IPv6) that can be routed to the
container: not a network, not loopback, multicast, link-local or unspecified.
Addresses are kept in the order they were given, without duplicates; the first
IPv4 one (else the first one) is the container's main address, the one its host
name resolves to in /etc/hosts.
"""

from __future__ import annotations

import errno
import ipaddress

from ctfs.errors import CtfsError, invalid

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The resolver reads no more than this many name servers (glibc's MAXNS).
MAX_NAMESERVERS = 3
INHERIT = "inherit"


def parse_address(word: str) -> Address:
    """One container address; ``ADDR/32`` and ``ADDR/128`` are accepted as the address."""
    text = word
    if "/" in word:
        text, _, prefix = word.partition("/")
        full = "128" if ":" in text else "32"
        if prefix != full:
            raise invalid(f"{word!r} is a network; give single addresses (or /{full})")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise invalid(f"{word!r} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise invalid(f"{word!r} is an IPv4-mapped IPv6 address; give the IPv4 address")
    for bad, what in (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "a loopback address"),
        (address.is_multicast, "a multicast address"),
        (address.is_link_local, "link-local (it cannot be routed to a container)"),
        (address == ipaddress.IPv4Address("255.255.255.255"), "the broadcast address"),
    ):
        if bad:
            raise invalid(f"{word!r} is {what}")
    return address


def parse_address_list(text: str) -> list[Address]:
    """A whitespace-separated list of distinct addresses (empty: none)."""
    addresses: list[Address] = []
    for word in text.split():
        address = parse_address(word)
        if address in addresses:
            raise invalid(f"{word!r} is listed twice")
        addresses.append(address)
    return addresses


def apply_ip_command(text: str, current: list[Address]) -> list[Address]:
    """The address set a write to ``ip`` asks for, given the ``current`` one.

    ``+ADDR`` adds one, ``-ADDR`` removes one, anything else is the whole new set.
    """
    words = text.split()
    if len(words) == 1 and words[0][:1] in "+-" and len(words[0]) > 1:
        sign, word = words[0][0], words[0][1:]
        address = parse_address(word)
        if sign == "+":
            if address in current:
                raise invalid(f"the container already has {address}")
            return [*current, address]
        if address not in current:
            raise invalid(f"the container does not have {address}")
        return [a for a in current if a != address]
    if any(w[:1] in "+-" for w in words):
        raise invalid("write one +ADDR or -ADDR at a time, or the whole list of addresses")
    return parse_address_list(text)


def address_in_use(address: Address, owner: str) -> CtfsError:
    return CtfsError(errno.EADDRINUSE, f"{address} is already used by {owner}")


def from_setting(value: str) -> list[Address]:
    """The addresses saved in ctid.conf (IP_ADDRESS); unreadable words are skipped."""
    addresses: list[Address] = []
    for word in value.split():
        try:
            addresses.append(ipaddress.ip_address(word.partition("/")[0]))
        except ValueError:
            continue
    return addresses


def to_setting(addresses: list[Address]) -> str:
    return " ".join(str(a) for a in addresses)


def render_lines(items: list[Address] | list[str]) -> str:
    return "".join(f"{item}\n" for item in items)


def main_address(addresses: list[Address]) -> Address | None:
    for address in addresses:
        if address.version == 4:
            return address
    return addresses[0] if addresses else None


def parse_nameservers(text: str) -> str:
    """What a write to ``nameserver`` asks for: ``inherit`` or a list (maybe empty)."""
    words = text.split()
    if words == [INHERIT]:
        return INHERIT
    servers: list[str] = []
    for word in words:
        try:
            server = ipaddress.ip_address(word)
        except ValueError:
            raise invalid(f"{word!r} is not an IP address (write addresses or inherit)") from None
        if server.is_unspecified or server.is_multicast:
            raise invalid(f"{word!r} cannot be a name server")
        if str(server) in servers:
            raise invalid(f"{word!r} is listed twice")
        servers.append(str(server))
    if len(servers) > MAX_NAMESERVERS:
        raise invalid(
            f"{len(servers)} name servers given; the resolver uses at most {MAX_NAMESERVERS}"
        )
    return " ".join(servers)


def nameservers_of_resolv_conf(text: str) -> list[str]:
    """The name servers a resolv.conf lists, in order, valid addresses only."""
    servers: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                servers.append(str(ipaddress.ip_address(words[1].partition("%")[0])))
            except ValueError:
                continue
    return servers[:MAX_NAMESERVERS]


def render_resolv_conf(old: str, servers: list[str]) -> str:
    """``old`` with its nameserver lines replaced by ``servers``; other lines kept."""
    kept = [line for line in old.splitlines() if line.split()[:1] != ["nameserver"]]
    return "".join(f"{line}\n" for line in kept) + "".join(
        f"nameserver {server}\n" for server in servers
    )


HOSTS_MARK = "# ctfs"


def render_hosts(old: str, hostname: str, address: Address | None) -> str:
    """``old`` /etc/hosts with the container's own line brought up to date.

    The line ctfs writes ends in ``# ctfs`` and is replaced each time; lines people
    wrote are kept.  A container without addresses resolves its name to 127.0.1.1,
    as Debian does.  localhost lines are added if missing.
    """
    lines = [line for line in old.splitlines() if not line.rstrip().endswith(HOSTS_MARK)]
    names = [line.split("#")[0].split()[1:] for line in lines]
    if not any("localhost" in n for n in names):
        lines.insert(0, "127.0.0.1\tlocalhost")
        lines.insert(1, "::1\tlocalhost ip6-localhost ip6-loopback")
    short = hostname.split(".")[0]
    aliases = hostname if short == hostname else f"{hostname} {short}"
    target = str(address) if address is not None else "127.0.1.1"
    lines.append(f"{target}\t{aliases}\t{HOSTS_MARK}")
    return "".join(f"{line}\n" for line in lines)
