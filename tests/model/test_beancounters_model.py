"""Beancounters in the model: what a reading reads, and what the sampler watches."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ctfs.kernel.api import Counted
from ctfs.model import host as host_module
from ctfs.model import resources, state
from ctfs.model.container import Container
from ctfs.model.host import Host
from ctfs.policy.sizes import UNLIMITED
from tests.ctfsd_harness import UNIFIED, cgroup_of
from tests.model.conftest import Scenario

Run = Callable[[Scenario], None]
_ctids = itertools.count(351)


async def _running(host: Host) -> Container:
    ct = await host.create(str(next(_ctids)))
    await state.request(ct, "running")
    await _booted(ct)
    return ct


def _runs(ct: Container, name: str) -> bool:
    for pid in ct.backends.cgroups.pids(ct.ctid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                return True
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
    return False


@pytest.fixture
def quiet_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's own sampler stays asleep: the test samples by itself."""
    monkeypatch.setattr(host_module, "BEANCOUNTER_SAMPLE_S", 3600.0)


async def _running_with(host: Host, limits: dict[str, tuple[int, int]]) -> Container:
    """A container started with ``limits`` already set, so that nothing has read them."""
    ct = await host.create(str(next(_ctids)))
    await resources.set_limits(ct, limits)
    await state.request(ct, "running")
    await _booted(ct)
    return ct


async def _booted(ct: Container) -> None:
    """init runs once the start returns; syslogd comes a moment later (rcS, which
    starts it, may count as the second process meanwhile)."""
    with trio.fail_after(30):
        while not _runs(ct, "syslogd"):
            await trio.sleep(0.01)


@pytest.mark.usefixtures("quiet_sampler")
def test_a_sample_reads_only_what_has_a_bound_and_notes_its_crossing(run: Run) -> None:
    async def scenario(host: Host) -> None:
        unbounded = await _running(host)
        await resources.sample([unbounded], in_full=())
        assert unbounded.usage.maxheld == {}  # nothing bounded: nothing read
        ct = await _running_with(host, {"numfile": (2, 3)})  # init alone holds more
        assert ct.usage.maxheld == {}
        await resources.sample([ct], in_full=())
        assert ct.usage.maxheld["numfile"] > 3
        assert ct.usage.crossed == {"numfile": "limit"}
        assert "above its limit 3 (accounted only)" in ct.events.render()
        assert "numtcpsock" not in ct.usage.maxheld  # needs the namespace: not read
        await resources.sample([ct], in_full=[ct])
        assert "numtcpsock" in ct.usage.maxheld

    run(scenario)


@pytest.mark.usefixtures("quiet_sampler")
def test_a_limit_the_kernel_keeps_is_watched_only_below_a_barrier(run: Run) -> None:
    async def scenario(host: Host) -> None:
        kept = await _running_with(host, {"numproc": (100, 100), "physpages": (0, 2**20)})
        await resources.sample([kept], in_full=())
        assert kept.usage.maxheld == {}  # the kernel keeps both within their limits
        ct = await _running_with(host, {"numproc": (1, 100)})
        await resources.sample([ct], in_full=())
        assert ct.usage.crossed == {"numproc": "barrier"}

    run(scenario)


@pytest.mark.usefixtures("quiet_sampler")
def test_a_limit_set_under_what_is_held_is_noticed_at_once(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running(host)
        await resources.set_limits(ct, {"numproc": (1, 1)})  # init and syslogd run
        assert ct.usage.crossed == {"numproc": "limit"}
        assert "above its limit 1 (enforced by the kernel)" in ct.events.render()

    run(scenario)


@pytest.mark.usefixtures("quiet_sampler")
def test_a_bound_lifted_while_above_it_is_seen_back_within(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running_with(host, {"numfile": (2, 3)})
        await resources.sample([ct], in_full=())
        assert ct.usage.crossed == {"numfile": "limit"}
        await resources.set_limits(ct, {"numfile": (UNLIMITED, UNLIMITED)})
        assert ct.usage.crossed == {}
        assert "back within" in ct.events.render().splitlines()[-1]

    run(scenario)


def test_the_hosts_sampler_notices_a_crossing_nobody_reads(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host_module, "BEANCOUNTER_SAMPLE_S", 0.05)

    async def scenario(host: Host) -> None:
        ct = await _running_with(host, {"numfile": (2, 3)})
        with trio.fail_after(10):
            while "numfile" not in ct.usage.crossed:
                await trio.sleep(0.05)
        assert "above its limit 3 (accounted only)" in ct.events.render()

    run(scenario)


def test_a_reading_of_some_groups_leaves_the_others_at_zero(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running(host)
        cgroups = host.backends.cgroups
        tasks = cgroups.counters(ct.ctid, frozenset({Counted.TASKS}))
        assert tasks.tasks >= 1 and tasks.tasks_peak >= tasks.tasks
        assert tasks.ram == 0 and tasks.cpu_ns == 0
        everything = cgroups.counters(ct.ctid)
        assert everything.ram > 0 and everything.kmem > 0 and everything.cpu_ns > 0
        processes = host.backends.processes
        pids = cgroups.pids(ct.ctid)
        wanted = frozenset({Counted.PROCESSES, Counted.OPEN_FILES})
        files = processes.count(pids, ct.init_pid, {}, wanted)
        assert files.files > 0 and files.private_pages > 0 and files.ptys == 0

    run(scenario)


def test_the_processes_in_cgroups_below_are_the_containers_too(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running(host)
        top = cgroup_of(host.backends.cgroups.parent, "pids", ct.ctid)
        below = top / "below" / "deeper"
        below.mkdir(parents=True)
        try:
            (below / "cgroup.procs").write_text(str(ct.init_pid))
            assert ct.init_pid in host.backends.cgroups.pids(ct.ctid)
            assert len(host.backends.cgroups.pids(ct.ctid)) == len(ct.pids())
        finally:
            (top / "cgroup.procs").write_text(str(ct.init_pid))
            below.rmdir()
            below.parent.rmdir()
        assert ct.init_pid in host.backends.cgroups.pids(ct.ctid)

    run(scenario)


def _numfile(ct: Container) -> Callable[[], Awaitable[int]]:
    async def read() -> int:
        return (await resources.counters([ct]))[ct.ctid]["numfile"].held

    return read


@pytest.mark.usefixtures("quiet_sampler")
def test_descriptors_are_counted_again_once_a_process_ran(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running(host)
        opener = subprocess.Popen(
            [sys.executable, "-c", _OPENER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert opener.stdin is not None and opener.stdout is not None
        try:
            # Moved in once it waits: Python starting up would count as having run.
            assert opener.stdout.readline() == "ready\n"
            await _booted(ct)
            parent = host.backends.cgroups.parent
            for hierarchy in ("pids", "cpuacct") if not UNIFIED else ("pids",):
                procs = cgroup_of(parent, hierarchy, ct.ctid) / "cgroup.procs"
                procs.write_text(str(opener.pid))
            counted: list[frozenset[Counted]] = []
            count = host.backends.processes.count

            def spy(*args: Any) -> Any:
                counted.append(args[3])
                return count(*args)

            host.backends.processes.count = spy  # type: ignore[method-assign,assignment]
            numfile = _numfile(ct)
            before = await numfile()
            await trio.sleep(0.05)
            assert await numfile() == before  # nothing ran: not scanned again
            assert Counted.OPEN_FILES not in counted[-1]
            opener.stdin.write("open\n")
            opener.stdin.flush()
            assert opener.stdout.readline() == "opened\n"
            assert await numfile() == before + 5
        finally:
            opener.kill()
            opener.wait()

    run(scenario)


# Waits for a line, opens five files, says so, and waits again.
_OPENER = """
import os, sys
print("ready", flush=True)
sys.stdin.readline()
files = [os.open("/etc/hostname", os.O_RDONLY) for _ in range(5)]
print("opened", flush=True)
sys.stdin.readline()
"""
