"""A container's process that gets hold of the host's ctfs mount (a leaked
descriptor, a bind it should not have) still sees only its own directory: ctfs
places every caller by its pid namespace and cgroup, not by the path it took.

Played here by a process the test puts in the container's pid namespace and pids
cgroup while it keeps the host's mounts.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.ctfsd_harness import Ctfsd, write_errno


def _as_container(ctfsd: Ctfsd, container: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``container``'s pid namespace and pids cgroup, on the host's mounts."""
    init = (container / "procs").read_text().split()[0]
    cgroup = ctfsd.cgroup_dir("pids", int(container.name)) / "cgroup.procs"
    script = f'echo 0 > {cgroup} && exec "$@"'
    return subprocess.run(
        ["nsenter", "-t", init, "-p", "--", "sh", "-c", script, "sh", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _unplaced(container: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``container``'s pid namespace but in no container's cgroup."""
    init = (container / "procs").read_text().split()[0]
    return subprocess.run(
        ["nsenter", "-t", init, "-p", "--", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_it_reads_its_own_files(ctfsd: Ctfsd, private: Path) -> None:
    done = _as_container(ctfsd, private, "cat", str(private / "state"))
    assert done.stdout == "running\n", done.stderr


def test_another_containers_files_do_not_exist_for_it(
    ctfsd: Ctfsd, private: Path, stopped_neighbour: Path
) -> None:
    done = _as_container(ctfsd, private, "cat", str(stopped_neighbour / "state"))
    assert done.returncode != 0 and "No such file" in done.stderr


def test_the_hosts_files_do_not_exist_for_it(ctfsd: Ctfsd, private: Path) -> None:
    done = _as_container(ctfsd, private, "cat", str(private.parent / "beancounters"))
    assert done.returncode != 0 and "No such file" in done.stderr


def test_it_cannot_list_the_top(ctfsd: Ctfsd, private: Path) -> None:
    done = _as_container(ctfsd, private, "ls", str(private.parent))
    assert done.returncode != 0 and "Permission denied" in done.stderr


def test_it_cannot_create_a_container(ctfsd: Ctfsd, private: Path, new_ctid: int) -> None:
    target = private.parent / str(new_ctid + 6500)
    done = _as_container(ctfsd, private, "mkdir", str(target))
    assert done.returncode != 0
    assert not target.exists()


def test_its_writes_are_refused(ctfsd: Ctfsd, private: Path) -> None:
    done = _as_container(ctfsd, private, "sh", "-c", f"echo stopped > {private / 'state'}")
    assert done.returncode != 0 and "not permitted" in done.stderr
    assert (private / "state").read_text() == "running\n"


def test_a_caller_ctfs_cannot_place_gets_nothing(private: Path) -> None:
    done = _unplaced(private, "cat", str(private / "state"))
    assert done.returncode != 0 and "No such file" in done.stderr
    assert write_errno(private / "state", b"running") == 0  # the host still can
