"""/ctfs/metrics: what monitoring agents read, and a real agent reading it."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ctfsd_harness import wait_for

NODE_EXPORTER = shutil.which("prometheus-node-exporter")


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_every_container_has_its_state(mount: Path, running: Path, container: Path) -> None:
    samples = _samples((mount / "metrics").read_text())
    assert samples[f'ctfs_container_state{{ctid="{running.name}",state="running"}}'] == 1


def test_a_running_container_has_cpu_memory_and_beancounters(mount: Path, running: Path) -> None:
    samples = _samples((mount / "metrics").read_text())
    ctid = running.name
    assert samples[f'ctfs_container_cpu_seconds_total{{ctid="{ctid}"}}'] > 0
    assert samples[f'ctfs_container_memory_bytes{{ctid="{ctid}"}}'] > 0
    assert samples[f'ctfs_beancounter_held{{ctid="{ctid}",resource="numproc"}}'] >= 2
    key = f'ctfs_beancounter_limit{{ctid="{ctid}",resource="numproc"}}'
    assert samples[key] == float(9223372036854775807)  # unlimited


def test_a_limit_shows_in_the_metrics(mount: Path, running: Path) -> None:
    (running / "limits").write_text("numproc 77\n")
    samples = _samples((mount / "metrics").read_text())
    assert samples[f'ctfs_beancounter_limit{{ctid="{running.name}",resource="numproc"}}'] == 77


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def node_exporter(mount: Path, tmp_path: Path) -> Iterator[str]:
    """Debian's node exporter on loopback, its textfile collector pointed at /ctfs/metrics."""
    assert NODE_EXPORTER is not None, "tools/setup installs prometheus-node-exporter"
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    (textfiles / "ctfs.prom").symlink_to(mount / "metrics")
    address = f"127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        [
            NODE_EXPORTER,
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfiles}",
            f"--web.listen-address={address}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{address}/metrics"
    try:

        def up() -> bool:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
                return True
            return False

        assert wait_for(up, timeout=10), "the node exporter did not come up"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_node_exporter_serves_the_metrics_unchanged(running: Path, node_exporter: str) -> None:
    with urllib.request.urlopen(node_exporter, timeout=10) as reply:
        served = _samples(reply.read().decode())
    assert served["node_textfile_scrape_error"] == 0
    assert served[f'ctfs_container_state{{ctid="{running.name}",state="running"}}'] == 1
    assert served[f'ctfs_beancounter_held{{ctid="{running.name}",resource="numproc"}}'] >= 2
