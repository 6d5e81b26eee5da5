"""The hostile suite: a container's root attacking the host and its neighbours.

Every attack here is harmless even where the hole it probes is still open: it
writes back values that are already there, touches only what the test made, and
whatever it leaves is removed by the test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ctfsd_harness import Ctfsd

PROBE_SOURCE = Path(__file__).with_name("probe.c")


@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """probe.c built static, so it runs in any template."""
    out = tmp_path_factory.mktemp("probe") / "probe"
    built = subprocess.run(
        ["gcc", "-static", "-O1", "-o", str(out), str(PROBE_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture
def probe(ctfsd: Ctfsd, running: Path, probe_binary: Path) -> str:
    """The probe's path inside the running container."""
    target = ctfsd.state / running.name / "root" / "tmp" / "ctfs-probe"
    shutil.copy2(probe_binary, target)
    return "/tmp/ctfs-probe"
