"""Attack: cgroup hierarchies mounted inside a container (attack 6 of the isolation issue).

The container's cgroup namespace is rooted at its own cgroup in every hierarchy,
name=systemd and the unified one included, so what it creates lands under its
own cgroup, never at the root of the host's.  Harmless where that fails: the
test removes the one directory it made, wherever it landed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ctfsd_harness import UNIFIED, Ctfsd, ctfs_exec, write_errno

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROBE_DIR = "ctfs-hostile-probe"
HIERARCHIES = {
    "systemd": "mount -t cgroup -o none,name=systemd cgroup /tmp/cg",
    "unified": "mount -t cgroup2 cgroup2 /tmp/cg",
}
# Where a process inside can move itself: a v1 controller's hierarchy, or cgroup2.
SUB_CGROUP_MOUNT = (
    "mount -t cgroup2 cgroup2 /tmp/cg" if UNIFIED else "mount -t cgroup -o pids cgroup /tmp/cg"
)


def _host_hierarchy(name: str) -> Path:
    """The host's mount of hierarchy ``name`` (cgroup2 is the root on a v2 host)."""
    return CGROUP_ROOT if UNIFIED and name == "unified" else CGROUP_ROOT / name


@pytest.fixture
def host_root_probe() -> Iterator[None]:
    yield
    for hierarchy in HIERARCHIES:
        with contextlib.suppress(FileNotFoundError, OSError):
            (_host_hierarchy(hierarchy) / PROBE_DIR).rmdir()


@pytest.mark.parametrize("hierarchy", sorted(HIERARCHIES))
def test_a_cgroup_made_inside_lands_under_the_containers_own(
    ctfsd: Ctfsd, running: Path, hierarchy: str, host_root_probe: None
) -> None:
    if not (_host_hierarchy(hierarchy) / "cgroup.procs").exists():
        pytest.skip(f"this host has no {hierarchy} hierarchy")
    script = f"mkdir -p /tmp/cg && {HIERARCHIES[hierarchy]} && mkdir /tmp/cg/{PROBE_DIR}"
    done = ctfs_exec(running, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    ctfs_exec(running, "umount", "/tmp/cg")
    assert not (_host_hierarchy(hierarchy) / PROBE_DIR).exists()
    assert (ctfsd.cgroup_dir(hierarchy, int(running.name)) / PROBE_DIR).is_dir()


def test_a_process_in_a_sub_cgroup_is_still_the_containers(ctfsd: Ctfsd, running: Path) -> None:
    script = (
        f"mkdir -p /tmp/cg && {SUB_CGROUP_MOUNT} && "
        f"mkdir /tmp/cg/{PROBE_DIR} && "
        f"(sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/cg/{PROBE_DIR}/cgroup.procs)"
    )
    done = ctfs_exec(running, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    ctid = int(running.name)
    sub = ctfsd.cgroup_dir("pids", ctid) / PROBE_DIR / "cgroup.procs"
    moved = sub.read_text().split()
    assert len(moved) == 1
    assert moved[0] in (running / "procs").read_text().split()
    # Stopping ends it too, and removes the cgroup it made.
    assert write_errno(running / "state", b"stopped") == 0
    assert not Path(f"/proc/{moved[0]}").exists()
    assert not ctfsd.cgroup_dir("pids", ctid).exists()


def test_a_new_cgroup_v1_hierarchy_cannot_be_made_inside(running: Path) -> None:
    # Only the initial cgroup namespace may create a hierarchy; a new one's root
    # would hold every process of the host.
    script = "mkdir -p /tmp/cg && mount -t cgroup -o none,name=ctfshostile cgroup /tmp/cg"
    done = ctfs_exec(running, "sh", "-c", script)
    if done.returncode == 0:  # harmless either way: no process is moved into it
        ctfs_exec(running, "umount", "/tmp/cg")
    assert done.returncode != 0


@pytest.mark.parametrize("name", ["cgroup.freeze", "cgroup.kill", "cgroup.max.descendants"])
def test_its_own_cgroup2_tree_does_not_give_its_root_the_hosts_files(
    ctfsd: Ctfsd, private: Path, name: str
) -> None:
    # /sys/fs/cgroup inside is its own cgroup: what the host set there stays the host's.
    done = ctfs_exec(private, "sh", "-c", f"echo 1 > /sys/fs/cgroup/{name}")
    assert done.returncode != 0
    assert "Permission denied" in done.stderr
    top = ctfsd.cgroup_dir("unified", int(private.name))
    assert (top / "cgroup.freeze").read_text().strip() == "0"
    assert (private / "state").read_text().strip() == "running"
