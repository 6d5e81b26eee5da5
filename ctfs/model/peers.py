"""The peers this host trusts, and its own identity: ``/ctfs/peers``, ``/ctfs/identity``.

Invariants:
- ``STATE/peers`` is always a complete list (written whole under a temporary
  name and renamed); a refused write changes nothing.
- No peer has this host's own certificate or name.
- The identity's key pair is made at the first start and kept (``PeerLinks.identity``).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import trio

from ctfs.errors import invalid
from ctfs.kernel.api import PeerLinks
from ctfs.policy.peers import (
    DEFAULT_PORT,
    NAME_RE,
    Peer,
    PeerError,
    find_peer,
    parse_peers,
    render_peers,
)

log = logging.getLogger(__name__)

PEERS_FILE = "peers"


def route_source_address() -> str:
    """The address this host sends from on its default route (no packet is sent);
    127.0.0.1, logged, on a host without one: its peers cannot reach it until
    ``--peer-address`` says where, but its key pair and peers list work."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a route lookup only
            address: str = probe.getsockname()[0]
    except OSError as exc:
        log.warning(
            "peers: no default route (%s): this host's identity says 127.0.0.1; "
            "give --peer-address for its peers to reach it",
            exc,
        )
        return "127.0.0.1"
    return address


def default_name() -> str:
    """The host's name as a peer name: its first label, if it is a valid one."""
    name = socket.gethostname().split(".")[0]
    return name if NAME_RE.match(name) else "ctfs"


class PeerBook:
    """This host's identity line and its list of trusted peers."""

    def __init__(
        self, links: PeerLinks, state_dir: Path, name: str, address: str, port: int = DEFAULT_PORT
    ) -> None:
        self.links = links
        self.path = state_dir / PEERS_FILE
        self.me = links.identity(state_dir)
        self.own = Peer(name, address, port, self.me.fingerprint)
        self.peers: list[Peer] = []
        # Set, and replaced by a fresh one, whenever the list changes.
        self.changed = trio.Event()
        try:
            self.peers = parse_peers(self.path.read_text())
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError, PeerError) as exc:
            # Written only whole by ctfsd: a bad one was edited by hand.  Trust nobody.
            log.error("peers: %s is unusable, trusting no peer: %s", self.path, exc)

    def identity_text(self) -> str:
        return f"{self.own.line()}\n"

    def peers_text(self) -> str:
        return render_peers(self.peers)

    def find(self, name: str) -> Peer | None:
        return next((peer for peer in self.peers if peer.name == name), None)

    def resolve(self, word: str) -> Peer | None:
        """The peer a write to ``state`` names (see ``find_peer``)."""
        return find_peer(self.peers, word)

    async def replace(self, text: str) -> None:
        """Trust exactly the peers of ``text``, or raise EINVAL having changed nothing."""
        try:
            peers = parse_peers(text)
        except PeerError as exc:
            raise invalid(f"peers: {exc}") from None
        for peer in peers:
            if peer.fingerprint == self.own.fingerprint:
                raise invalid(f"peers: {peer.name} has this host's own certificate")
            if peer.name == self.own.name:
                raise invalid(f"peers: {peer.name} is this host's own name")
        await trio.to_thread.run_sync(self._save, render_peers(peers))
        before = {peer.name for peer in self.peers}
        self.peers = peers
        self.changed.set()
        self.changed = trio.Event()
        after = {peer.name for peer in peers}
        log.info(
            "peers: %d trusted (added %s; removed %s)",
            len(peers),
            ", ".join(sorted(after - before)) or "none",
            ", ".join(sorted(before - after)) or "none",
        )

    def _save(self, text: str) -> None:
        new = self.path.with_suffix(".new")
        with open(new, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        new.replace(self.path)
