"""What the peer link speaks (part of ``ctfs.kernel.api``, which re-exports them):
this host's key pair as files, and how a link fails.  No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    """This host's key pair for its peers (see ``ctfs.kernel.identity``)."""

    key: Path
    cert: Path
    fingerprint: str  # SHA-256 of the certificate's DER form, 64 lower-case hex digits


class PeerLinkError(Exception):
    """The other side is not who it must be, or broke the protocol."""
