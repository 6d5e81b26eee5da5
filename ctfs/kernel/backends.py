"""The one place where the real kernel backends are built and handed to the model."""

from __future__ import annotations

from pathlib import Path

from ctfs.kernel.api import Backends, Cgroups
from ctfs.kernel.btrfs_stream import BtrfsAreaStreams
from ctfs.kernel.criu import Criu
from ctfs.kernel.launcher import Launcher
from ctfs.kernel.network import Network
from ctfs.kernel.peer_link import TlsPeerLinks
from ctfs.kernel.processes import HostProcesses
from ctfs.kernel.quota import BtrfsQuota
from ctfs.kernel.source_filter import SourceFilter
from ctfs.kernel.storage import BtrfsStorage
from ctfs.kernel.templates import TemplateStore


def real(state_dir: Path, cgroups: Cgroups, uplink: str, criu: Path | None) -> Backends:
    """Backends over this machine's kernel for a pool at ``state_dir``."""
    return Backends(
        cgroups=cgroups,
        storage=BtrfsStorage(state_dir),
        templates=TemplateStore(state_dir),
        quota=BtrfsQuota(state_dir),
        network=Network(uplink),
        firewall=SourceFilter(),
        processes=HostProcesses(),
        launcher=Launcher(),
        checkpointer=Criu(criu),
        peer_links=TlsPeerLinks(),
        area_streams=BtrfsAreaStreams(),
    )
