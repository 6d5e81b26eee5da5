"""The container model without a mount: states, settings, the kernel, the caller."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from ctfs.errors import CtfsError
from ctfs.model import caller, resources, settings, state
from ctfs.model.container import Container, State
from ctfs.model.host import Host
from ctfs.policy import idmap
from tests.ctfsd_harness import cgroup_of
from tests.model.conftest import Scenario

Run = Callable[[Scenario], None]
_ctids = itertools.count(301)


def _pids_max(host: Host, ct: Container) -> str:
    parent = host.backends.cgroups.parent
    return (cgroup_of(parent, "pids", ct.ctid) / "pids.max").read_text().strip()


async def _running(host: Host) -> Container:
    ct = await host.create(str(next(_ctids)))
    await state.request(ct, "running")
    return ct


def test_a_start_runs_init_in_the_containers_cgroups(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running(host)
        assert ct.state is State.RUNNING
        assert ct.init_pid in host.backends.cgroups.pids(ct.ctid)
        await state.request(ct, "stopped")
        assert ct.state is State.STOPPED
        assert host.backends.cgroups.pids(ct.ctid) == []

    run(scenario)


def test_a_second_state_change_meanwhile_is_ebusy(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await host.create(str(next(_ctids)))
        refused: list[int] = []

        async def second() -> None:
            await trio.sleep(0)  # the first has begun
            try:
                await state.request(ct, "stopped")
            except CtfsError as exc:
                refused.append(exc.errno_value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.request, ct, "running")
            nursery.start_soon(second)
        assert refused == [errno.EBUSY]
        assert ct.state is State.RUNNING

    run(scenario)


def test_a_limit_reaches_the_kernel_before_ctid_conf(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running(host)
        await resources.set_limits(ct, {"numproc": (64, 64)})
        assert _pids_max(host, ct) == "64"
        assert 'NUMPROC="64:64"' in (ct.dir / "ctid.conf").read_text()

    run(scenario)


def test_a_setting_the_kernel_refuses_is_undone_and_not_saved(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running(host)
        before = dict(ct.settings)
        with pytest.raises(CtfsError) as caught:
            # Far below what the container uses: the kernel cannot reclaim that much.
            await resources.set_limits(ct, {"physpages": (0, 25)})
        assert caught.value.errno_value == errno.EIO
        assert ct.settings == before
        assert "PHYSPAGES" not in (ct.dir / "ctid.conf").read_text()

    run(scenario)


def test_reconcile_brings_the_kernel_back_to_ctid_conf(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running(host)
        await resources.set_limits(ct, {"numproc": (77, 77)})
        parent = host.backends.cgroups.parent
        (cgroup_of(parent, "pids", ct.ctid) / "pids.max").write_text("78")
        await trio.to_thread.run_sync(settings.reconcile, ct)
        assert _pids_max(host, ct) == "77"

    run(scenario)


def test_a_host_process_is_the_host_caller(run: Run) -> None:
    async def scenario(host: Host) -> None:
        found = caller.identify(host.backends, os.getpid())
        assert found.is_host

    run(scenario)


def test_a_process_inside_is_placed_in_its_container(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running(host)
        assert ct.init_pid is not None
        found = caller.identify(host.backends, ct.init_pid)
        assert (found.is_host, found.ctid) == (False, ct.ctid)

    run(scenario)


def test_a_process_that_is_gone_cannot_be_placed(run: Run) -> None:
    async def scenario(host: Host) -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        found = caller.identify(host.backends, pid)
        assert not found.placed and not found.is_host

    run(scenario)


def test_a_new_container_gets_a_private_range_and_runs_in_it(run: Run) -> None:
    async def scenario(host: Host) -> None:
        ct = await _running(host)
        base = idmap.base_of(ct.settings)
        assert base is not None
        assert ct.init_pid is not None
        uid_map = Path(f"/proc/{ct.init_pid}/uid_map").read_text().split()
        assert uid_map == ["0", str(base), "65536"]
        assert os.stat(f"/proc/{ct.init_pid}").st_uid == base

    run(scenario)


def test_two_containers_of_one_host_get_two_ranges(run: Run) -> None:
    async def scenario(host: Host) -> None:
        first = await host.create(str(next(_ctids)))
        second = await host.create(str(next(_ctids)))
        assert idmap.base_of(first.settings) != idmap.base_of(second.settings)

    run(scenario)
