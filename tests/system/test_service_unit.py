"""contrib/systemd/ctfsd.service: a unit systemd accepts, which never ends containers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "ctfsd.service"


def _settings() -> dict[str, str]:
    found = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def test_systemd_verifies_the_unit() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze comes with systemd"
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(UNIT)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_stopping_the_unit_signals_only_ctfsd() -> None:
    settings = _settings()
    assert settings["KillMode"] == "process"
    assert settings["Restart"] == "on-failure"
    assert settings["ExecStart"].split()[0] == "/usr/local/bin/ctfsd"


def test_reloading_the_unit_upgrades_ctfsd_in_place() -> None:
    assert _settings()["ExecReload"] == "/bin/kill -HUP $MAINPID"
