"""The test tiers, by folder:

- ``tests/pure``: parsers, renderers and the OpenVZ rules; no root, no kernel
  state, seconds.  ``pytest -m pure`` (or ``pytest tests/pure``) runs them alone.
- ``tests/model``: the container model driven against the real kernel (cgroups,
  btrfs, namespaces, CRIU), without a FUSE mount.  Root.
- ``tests/system``: everything through a real ctfsd and its mount.  Root.
"""

from __future__ import annotations

import os

import pytest

TIERS = ("pure", "model", "system")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(config.rootpath).parts
        tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_collection_finish(session: pytest.Session) -> None:
    needs_root = [i for i in session.items if not i.get_closest_marker("pure")]
    if needs_root and os.geteuid() != 0:
        raise pytest.UsageError(
            f"{len(needs_root)} of the selected tests (the model and system tiers) need root: "
            "run tools/test as root, or only the pure tier with: pytest -m pure"
        )
