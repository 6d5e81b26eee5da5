"""The source-address filter: a container sends only from the addresses it was given.

One nftables table, ``inet ctfs``: a packet entering from a ``ctfs*`` veth passes
only if its (interface, source) pair is in the allowed set (IPv6 link-local
excepted, for neighbour discovery).  The table is written whole once per ctfsd;
after that only set elements change.

Invariant: ``allow`` and ``adopt`` converge the table to what they are given; they
run in worker threads, serialised by one lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from ctfs.kernel import nftables
from ctfs.kernel.api import IPAddress as Address
from ctfs.kernel.api import NetworkError
from ctfs.kernel.network import HOST_PREFIX, host_ifname

log = logging.getLogger(__name__)

TABLE = "ctfs"


def antispoof_ruleset(allowed: Mapping[int, Sequence[Address]]) -> str:
    """The nft script that replaces table ``inet ctfs`` with one allowing ``allowed``."""
    pairs = [(c, a) for c, addrs in sorted(allowed.items()) for a in addrs]
    v4: list[tuple[int, Address]] = [(c, a) for c, a in pairs if a.version == 4]
    v6: list[tuple[int, Address]] = [(c, a) for c, a in pairs if a.version == 6]

    def elements(pairs: list[tuple[int, Address]]) -> str:
        if not pairs:
            return ""
        listed = ", ".join(f'"{host_ifname(c)}" . {a}' for c, a in pairs)
        return f"elements = {{ {listed} }}"

    return f"""\
add table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
    set allowed4 {{ type ifname . ipv4_addr; {elements(v4)} }}
    set allowed6 {{ type ifname . ipv6_addr; {elements(v6)} }}
    chain antispoof {{
        type filter hook prerouting priority raw; policy accept;
        iifname != "{HOST_PREFIX}*" accept
        iifname . ip saddr @allowed4 accept
        ip6 saddr fe80::/10 accept
        iifname . ip6 saddr @allowed6 accept
        meta nfproto {{ ipv4, ipv6 }} counter drop
    }}
}}
"""


def element_changes(ctid: int, added: Sequence[Address], removed: Sequence[Address]) -> str:
    """The nft script that adds and removes ``ctid``'s entries in the allowed sets."""
    lines = []
    for verb, addresses in (("add", added), ("delete", removed)):
        for version in (4, 6):
            picked = [a for a in addresses if a.version == version]
            if picked:
                listed = ", ".join(f'"{host_ifname(ctid)}" . {a}' for a in picked)
                lines.append(f"{verb} element inet {TABLE} allowed{version} {{ {listed} }}")
    return "".join(f"{line}\n" for line in lines)


class SourceFilter:
    """The ``inet ctfs`` table; one per ctfsd."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._allowed: dict[int, tuple[Address, ...]] = {}
        # Whether table inet ctfs is known to be as antispoof_ruleset makes it.
        self._table_ready = False

    def adopt(self, allowed: Mapping[int, Sequence[Address]]) -> None:
        """Allow exactly ``allowed`` (containers found running at startup)."""
        wanted = {ctid: tuple(addrs) for ctid, addrs in allowed.items() if addrs}
        with self._lock:
            if wanted:
                self._write_table(wanted)

    def allow(self, ctid: int, addresses: Sequence[Address]) -> None:
        """Container ``ctid`` may send from exactly ``addresses`` (none: from nowhere)."""
        wanted = tuple(addresses)
        with self._lock:
            if not wanted and ctid not in self._allowed:
                return
            allowed = dict(self._allowed)
            if wanted:
                allowed[ctid] = wanted
            else:
                allowed.pop(ctid, None)
            if self._table_ready:
                # Element changes cost 0.2 ms; replacing the table waits for the kernel's
                # RCU grace periods (10-20 ms here), so that is done once per ctfsd.
                old = self._allowed.get(ctid, ())
                script = element_changes(
                    ctid, [a for a in wanted if a not in old], [a for a in old if a not in wanted]
                )
                if not script or nftables.load(script) is None:
                    self._allowed = allowed
                    return
                log.warning("the source filter was not as ctfsd left it; rewriting it whole")
            self._write_table(allowed)

    def _write_table(self, allowed: dict[int, tuple[Address, ...]]) -> None:
        error = nftables.load(antispoof_ruleset(allowed))
        if error is not None:
            self._table_ready = False
            raise NetworkError(f"nftables refused the source-address filter: {error}")
        self._table_ready = True
        self._allowed = allowed
