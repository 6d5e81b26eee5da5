"""Which cgroup layout the host has, and the backend that drives it.

- ``unified``: only cgroup2, at /sys/fs/cgroup (every current distribution);
- ``hybrid``: the v1 controllers, plus a cgroup2 hierarchy at /sys/fs/cgroup/unified
  (systemd's hybrid mode: Debian 10, and these machines);
- ``legacy``: the v1 controllers only.

Nothing above the kernel backends branches on this: the model, the files and
CRIU's handling see the ``Cgroups`` Protocol only.
"""

from __future__ import annotations

from pathlib import Path

from ctfs import kernel
from ctfs.kernel.api import Cgroups
from ctfs.kernel.cgroup_v1 import CgroupsV1
from ctfs.kernel.cgroup_v2 import CgroupsV2


def detect(root: Path = Path(kernel.CGROUP_ROOT)) -> str:
    """``unified``, ``hybrid`` or ``legacy`` (see the module's docstring)."""
    if (root / "cgroup.controllers").exists():
        return "unified"
    if (root / "unified" / "cgroup.controllers").exists():
        return "hybrid"
    return "legacy"


def backend(parent: str, root: Path = Path(kernel.CGROUP_ROOT)) -> tuple[str, Cgroups]:
    """The host's layout and the backend for it; RuntimeError if it cannot serve."""
    mode = detect(root)
    if mode == "unified":
        return mode, CgroupsV2(parent, root)
    return mode, CgroupsV1(parent, root)
