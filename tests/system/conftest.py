"""System tier fixtures: one real ctfsd for the session, fresh containers per test."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ctfsd_harness import Ctfsd, started, wait_for, write_errno
from tests.network_lab import Lab

_ctids = itertools.count(101)


@pytest.fixture(scope="session")
def ctfsd() -> Iterator[Ctfsd]:
    daemon = Ctfsd()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The test's own host and client network namespaces (see tests.network_lab)."""
    made = Lab()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="session")
def net_ctfsd(lab: Lab) -> Iterator[Ctfsd]:
    """A second ctfsd, inside the lab's host namespace, with up0 as its uplink."""
    with started(Ctfsd(wrapper=lab.enter(lab.host), extra=("--uplink", "up0"))) as daemon:
        yield daemon


@pytest.fixture
def mount(ctfsd: Ctfsd) -> Path:
    if ctfsd.proc is None or ctfsd.proc.poll() is not None:
        ctfsd.start()  # an earlier test stopped it
    return ctfsd.mount


@pytest.fixture
def new_ctid() -> int:
    return next(_ctids)


@pytest.fixture
def container(ctfsd: Ctfsd, mount: Path, new_ctid: int) -> Iterator[Path]:
    """A freshly created, stopped container; stopped and destroyed afterwards."""
    path = mount / str(new_ctid)
    path.mkdir()
    try:
        yield path
    finally:
        if ctfsd.proc is None or ctfsd.proc.poll() is not None:
            ctfsd.start()
        if write_errno(path / "state", b"stopped") not in (0, 2):
            ctfsd.kill_container(new_ctid)
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()


@pytest.fixture
def stopped_neighbour(mount: Path, new_ctid: int) -> Iterator[Path]:
    """A second container, never started, named apart from the test's own."""
    path = mount / str(new_ctid + 5000)
    path.mkdir()
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()


def _booted(container: Path) -> bool:
    """The busybox template has finished booting: init and syslogd, nothing else."""
    pids = (container / "procs").read_text().split()
    if len(pids) != 2:
        return False
    try:
        return "syslogd" in Path(f"/proc/{pids[1]}/cmdline").read_text()
    except (FileNotFoundError, ProcessLookupError):  # a startup script's, ended meanwhile
        return False


@pytest.fixture
def running(container: Path) -> Path:
    """A running container whose startup scripts have finished."""
    assert write_errno(container / "state", b"running") == 0
    assert wait_for(lambda: _booted(container), timeout=10), "the container did not boot"
    return container


@pytest.fixture
def private(container: Path) -> Path:
    """A running container with a private id range (its root an unprivileged host user)."""
    assert write_errno(container / "idmap", b"private\n") == 0
    assert write_errno(container / "state", b"running") == 0
    assert wait_for(lambda: _booted(container), timeout=10), "the container did not boot"
    return container
