"""What ctfsd asks CRIU for, and how CRIU fails (part of ``ctfs.kernel.api``,
which re-exports them): frozen values and the ``Checkpointer`` Protocol, no
I/O.  The cgroup and network backends give their parts (``CriuCgroups``,
``Veth``); ``ctfs.kernel.criu`` turns them into command lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# (cgroup directory, controllers to enable for its children), parents first.
SubtreeControls = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class CriuCgroups:
    """How CRIU finds and re-creates the container's cgroups."""

    freeze_cgroup: str  # --freeze-cgroup
    yard: str  # --cgroup-yard
    roots: tuple[str, ...]  # --cgroup-root mappings into the container's own cgroups


@dataclass(frozen=True)
class Veth:
    """The container's eth0 and the name of its host end."""

    guest: str
    host: str


class CriuError(Exception):
    """CRIU failed; the text is the reason from its log, ``log`` the whole log (if any)."""

    def __init__(self, reason: str, log: Path | None = None) -> None:
        super().__init__(reason)
        self.log = log


@dataclass(frozen=True)
class CriuTls:
    """Mutual TLS for CRIU's page server: our key pair; the peer's certificate is
    the only one trusted (self-signed, so it is its own CA)."""

    cert: Path
    key: Path
    peer_cert: Path


@dataclass(frozen=True)
class LazyPages:
    """Post-copy: memory pages go after the freeze, from the source's page server
    at ``address``:``port``, as the restored processes touch them (and all of
    them in the background)."""

    address: str
    port: int
    tls: CriuTls | None


@dataclass(frozen=True)
class CriuDump:
    pid: int
    images: Path
    work: Path
    cgroups: CriuCgroups
    veth: Veth | None
    timeout: float
    # A container with a private id range: its /dev is left out of the images (CRIU
    # could not make its device nodes in a user namespace) and made anew at restore.
    id_base: int | None = None
    # Paths inside of the ctfs views bound into it: external mounts, not dumped.
    views: tuple[str, ...] = ()
    # Serve the memory pages instead of writing them (the dump ends once all went).
    lazy: LazyPages | None = None


@dataclass(frozen=True)
class CriuRestore:
    images: Path
    work: Path
    root: Path
    cgroups: CriuCgroups
    veth: Veth | None
    addresses: tuple[str, ...]  # given to the action script that readies the veth
    timeout: float
    same_cgroups: bool  # restored where it was dumped: no --cgroup-root mapping
    # Leave the restored tree stopped, so that ctfs can check it before it runs.
    leave_stopped: bool = True
    # A private id range: the root is shown idmapped, /dev is made anew (see CriuDump).
    id_base: int | None = None
    # ctfs makes the veth itself while CRIU restores (CRIU cannot, in a user namespace).
    make_veth: bool = False
    # (path inside, host path) of the ctfs views to bind in again (see CriuDump.views).
    views: tuple[tuple[str, str], ...] = ()
    # Enabled by the action script at setup-namespaces, once init left the top cgroup.
    subtree_controls: SubtreeControls = ()
    # Fetch the memory pages from a source's page server (see Checkpointer.await_pages).
    lazy: LazyPages | None = None


class Checkpointer(Protocol):
    version: str
    unavailable: str | None  # why checkpoints do not work here, or None
    binary: Path | None

    def probe(self) -> str | None: ...

    def dump(
        self,
        options: CriuDump,
        on_timeout: Callable[[], None],
        on_images: Callable[[], None] | None = None,
    ) -> None:
        """Dump; with ``options.lazy``, ``on_images`` is called once the images are
        written and the page server listens, and the call returns once every page
        was served (or ``stop_dump`` ended it)."""

    def lazy_bytes(self, images: Path) -> int:
        """Bytes of memory a lazy dump into ``images`` left for its page server."""

    def page_server_port(self, address: str) -> int:
        """A free port at ``address`` for a lazy dump's page server."""

    def stop_dump(self, images: Path) -> None:
        """End the dump into ``images`` under way (the container runs on as after
        a failed dump)."""

    def restore(self, options: CriuRestore, on_timeout: Callable[[], None]) -> int:
        """Restore detached; return the host PID of the restored init."""

    def await_pages(self, work: Path, timeout: float) -> None:
        """After a lazy restore with ``work``: wait until every page arrived.
        CriuError if the transfer failed: the restored processes cannot go on."""

    def remove_network_lock(self, pid: int) -> None: ...
