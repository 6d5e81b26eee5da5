"""cpuunits, cpulimit, cpus and ioprio on real containers: applied, enforced, kept."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tests.cgroup_knobs import host_knobs
from tests.ctfsd_harness import UNIFIED, Ctfsd, ctfs_exec, write_errno

BUSY = "while :; do :; done"
KNOBS = host_knobs()


def _cpu_seconds(ctfsd: Ctfsd, ct: Path) -> float:
    return KNOBS.cpu_ns(ctfsd.cgroup_files(int(ct.name))) / 1e9


def _spin(ct: Path, loops: int = 1, cpu: int | None = None) -> None:
    """Leave ``loops`` busy shell loops running inside ``ct`` (ended when it stops)."""
    pin = f"taskset {1 << cpu:x} " if cpu is not None else ""
    # Detached from ctfs exec's output, which the test reads to its end.
    script = "; ".join([f'({pin}sh -c "{BUSY}" </dev/null >/dev/null 2>&1 &)'] * loops)
    assert ctfs_exec(ct, "sh", "-c", script).returncode == 0


def _usage_over(ctfsd: Ctfsd, cts: list[Path], seconds: float) -> list[float]:
    before = [_cpu_seconds(ctfsd, ct) for ct in cts]
    time.sleep(seconds)
    return [_cpu_seconds(ctfsd, ct) - b for ct, b in zip(cts, before, strict=True)]


@pytest.mark.parametrize(
    "name,default", [("cpuunits", "1000"), ("cpulimit", "0"), ("cpus", "0"), ("ioprio", "4")]
)
def test_defaults(container: Path, name: str, default: str) -> None:
    assert (container / name).read_text() == f"{default}\n"


def test_cpuunits_change_the_weight_of_a_running_container(ctfsd: Ctfsd, running: Path) -> None:
    (running / "cpuunits").write_text("3000\n")
    assert (running / "cpuunits").read_text() == "3000\n"
    # v1: cpu.shares = cpuunits x 262144/500000; v2: cpu.weight = cpuunits x 10000/500000.
    expected = 60 if UNIFIED else round(3000 * 262144 / 500000)
    assert KNOBS.weight(ctfsd.cgroup_files(int(running.name))) == expected


def test_ioprio_sets_the_bfq_weight(ctfsd: Ctfsd, running: Path) -> None:
    (running / "ioprio").write_text("7\n")
    assert KNOBS.io_weight(ctfsd.cgroup_files(int(running.name))) == 800


def test_settings_written_while_stopped_apply_at_start(ctfsd: Ctfsd, container: Path) -> None:
    (container / "cpulimit").write_text("40\n")
    assert write_errno(container / "state", b"running") == 0
    assert KNOBS.cap(ctfsd.cgroup_files(int(container.name))) == (40000, 100000)


def test_settings_survive_a_container_and_a_daemon_restart(ctfsd: Ctfsd, running: Path) -> None:
    (running / "cpuunits").write_text("2500\n")
    (running / "ioprio").write_text("2\n")
    write_errno(running / "state", b"stopped")
    ctfsd.terminate()
    ctfsd.start()
    write_errno(running / "state", b"running")
    assert (running / "cpuunits").read_text() == "2500\n"
    assert KNOBS.io_weight(ctfsd.cgroup_files(int(running.name))) == 300


@pytest.mark.parametrize(
    "name,value,code",
    [
        ("cpuunits", b"7", errno.ERANGE),
        ("cpuunits", b"500001", errno.ERANGE),
        ("cpuunits", b"lots", errno.EINVAL),
        ("cpulimit", b"-5", errno.EINVAL),
        ("cpulimit", str(100 * (os.cpu_count() or 1) + 1).encode(), errno.ERANGE),
        ("cpus", b"99", errno.ERANGE),
        ("ioprio", b"8", errno.ERANGE),
        ("ioprio", b"\n", errno.EINVAL),
    ],
)
def test_bad_values_are_refused_and_change_nothing(
    container: Path, name: str, value: bytes, code: int
) -> None:
    before = (container / name).read_text()
    assert write_errno(container / name, value) == code
    assert (container / name).read_text() == before
    assert f"{name}: rejected" in (container / "events").read_text().splitlines()[-1]


def test_cpuunits_1000_and_3000_share_one_cpu_about_1_to_3(
    ctfsd: Ctfsd, running: Path, mount: Path
) -> None:
    other = mount / str(int(running.name) + 200000)
    other.mkdir()
    try:
        (running / "cpuunits").write_text("1000\n")
        (other / "cpuunits").write_text("3000\n")
        write_errno(other / "state", b"running")
        _spin(running, cpu=0)
        _spin(other, cpu=0)
        light, heavy = _usage_over(ctfsd, [running, other], 3.0)
        assert heavy / light == pytest.approx(3.0, rel=0.15)
    finally:
        write_errno(other / "state", b"stopped")
        other.rmdir()


def test_cpulimit_25_holds_a_busy_container_near_a_quarter_cpu(ctfsd: Ctfsd, running: Path) -> None:
    (running / "cpulimit").write_text("25\n")
    _spin(running, loops=2)
    (used,) = _usage_over(ctfsd, [running], 3.0)
    assert used / 3.0 == pytest.approx(0.25, rel=0.1)


def test_cpus_1_keeps_a_two_thread_load_on_one_cpu(ctfsd: Ctfsd, running: Path) -> None:
    (running / "cpus").write_text("1\n")
    assert ctfs_exec(running, "nproc").stdout.strip() == "1"
    _spin(running, loops=2)
    (used,) = _usage_over(ctfsd, [running], 2.0)
    assert used / 2.0 <= 1.05
    allowed = {
        Path(f"/proc/{pid}/status").read_text().split("Cpus_allowed_list:")[1].split()[0]
        for pid in (running / "procs").read_text().split()
    }
    assert len(allowed) == 1 and "," not in allowed.pop()
