"""Start, stop, watch and adopt: a container's processes from the host's side.

Invariants:
- Everything a start makes (cgroups, network, init) is undone if the start fails.
- Once init is gone, nothing of the run stays: no process, cgroup, veth or filter
  entry (a frozen container keeps its proxies and filter entries; see checkpoint).
- ``watch`` runs in the daemon's nursery and never raises: one container's
  trouble must not take the whole mount down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

import trio

from ctfs.errors import kernel_failed, not_found
from ctfs.kernel.api import LaunchReply, LaunchRequest, NetworkError
from ctfs.model import apply, settings, views
from ctfs.model.container import Container, InitProcess, State, reap
from ctfs.policy import idmap
from ctfs.policy.security import DROPPED_CAPABILITIES
from ctfs.policy.signals import signal_name

log = logging.getLogger(__name__)

# After the halt signal, an init left alone for this long has nothing left to
# shut down gracefully (busybox init would only sleep out its console delays).
HALT_SETTLE_S = 0.2
# A start that has not reached the template's init by then is abandoned.
START_TIMEOUT_S = 60.0
POLL_S = 0.02
# How long the processes of a stopped container may take to leave its cgroups
# before they are killed again.
LEAVE_CGROUPS_S = 10.0

INIT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "TERM": "linux",
    "container": "ctfs",
    # systemd 254+ (PID 1 and sd-event programs) watch memory.pressure with a PSI
    # trigger, which CRIU does not restore: after a restore the file polls ready
    # for ever and systemd spins ("Looping too fast"), its jobs never run.  This
    # value turns the watch off (sd_event_add_memory_pressure(3)).
    "MEMORY_PRESSURE_WATCH": "/dev/null",
}


async def start(ct: Container) -> None:
    """Start a stopped container; returns once its init runs."""
    template = ct.backends.templates.get(ct.template_name)
    if template is None:
        raise not_found(f"template {ct.template_name!r} is not installed")
    began = time.monotonic()
    cgroups = ct.backends.cgroups
    try:
        await trio.to_thread.run_sync(apply.etc_files, ct, ct.settings)
    except OSError as exc:
        raise kernel_failed(f"cannot update the container's /etc: {exc}") from exc
    await prepare_cgroups(ct)
    if cgroups.pids(ct.ctid):
        raise kernel_failed("the container's cgroup still holds processes from an earlier run")
    request = LaunchRequest(
        root=str(ct.root),
        hostname=ct.hostname,
        init=[template.init],
        cgroup_join=cgroups.join_files(ct.ctid),
        cgroup_birth=cgroups.birth_cgroup(ct.ctid),
        drop_caps=sorted(DROPPED_CAPABILITIES.values()),
        env=dict(INIT_ENV),
        id_base=idmap.base_of(ct.settings),
        views=views.launch_views(ct),
    )
    addresses = ct.addresses

    async def network_up(pid: int) -> None:
        await trio.to_thread.run_sync(configure_network, ct, pid)

    reply = LaunchReply(error=f"init did not start within {START_TIMEOUT_S:g} s")
    with trio.move_on_after(START_TIMEOUT_S):
        try:
            # The network is up before the template's init runs its first script.
            reply = await ct.backends.launcher.launch(request, network_up if addresses else None)
        except NetworkError as exc:
            reply = LaunchReply(error=f"network: {exc}")
    if reply.pid is None:
        # Whatever the launcher got to run is in the cgroup: end it all.
        await trio.to_thread.run_sync(cgroups.kill_all, ct.ctid)
        if reply.orphan is not None:
            await reap(ct.backends.processes, reply.orphan)
        await clean_up_cgroups(ct)
        await remove_network(ct)
        raise kernel_failed(f"start failed: {reply.error or 'no reason given'}")
    ct.usage.reset()
    adopt(ct, reply.pid)
    if not ct.ever_started or views.UPTIME_KEY in ct.settings:
        # A fresh start: its uptime begins again (see ctfs.model.views).
        fresh = {k: v for k, v in ct.settings.items() if k != views.UPTIME_KEY}
        try:
            ct.save(fresh | {"STARTED_ONCE": "yes"})
        except OSError as exc:  # the start itself succeeded; say what was not saved
            ct.events.record(f"cannot save ctid.conf: {exc}", logging.ERROR)
    ms = (time.monotonic() - began) * 1000
    ct.events.record(f"started: init is PID {reply.pid} on the host ({ms:.0f} ms)")


async def prepare_cgroups(ct: Container) -> None:
    """Create the cgroups with every limit in place before init joins them."""

    def create() -> None:
        ct.backends.cgroups.create(ct.ctid)
        apply.cgroups(ct, ct.settings)
        base = idmap.base_of(ct.settings)
        if base is not None:
            ct.backends.cgroups.delegate(ct.ctid, base)

    try:
        await trio.to_thread.run_sync(create)
    except OSError as exc:
        await clean_up_cgroups(ct)
        raise kernel_failed(f"cannot set up cgroups: {exc}") from exc


def configure_network(ct: Container, pid: int) -> None:
    """The routed network of init ``pid`` and its place in the source filter."""
    addresses = ct.addresses
    ct.backends.network.configure(ct.ctid, pid, addresses)
    ct.backends.firewall.allow(ct.ctid, addresses)


def adopt(ct: Container, pid: int) -> None:
    """Watch ``pid`` as this container's init from now on."""
    init = InitProcess(pid, os.pidfd_open(pid))
    ct.init = init

    async def watching() -> None:
        await watch(ct, init)

    ct.ctx.start_soon(watching)


def rediscover(ct: Container) -> None:
    """Find a container that kept running while ctfsd was away; the kernel to ctid.conf."""
    init = ct.backends.processes.find_init(ct.backends.cgroups.pids(ct.ctid))
    if init is None:
        return
    adopt(ct, init)
    log.info("CT %d: found running, init PID %d", ct.ctid, init)
    try:
        settings.reconcile(ct)
    except (OSError, ValueError) as exc:
        ct.events.record(f"cannot bring the kernel back to ctid.conf: {exc}", logging.ERROR)


async def watch(ct: Container, init: InitProcess) -> None:
    """Wait for init to exit; clean up if nobody asked for it."""
    await trio.lowlevel.wait_readable(init.pidfd)
    status = await reap(ct.backends.processes, init.pid)
    init.exited.set()
    if ct.changing_now:
        return  # a stop in progress does the cleaning up
    # Nobody asked for this: init halted, rebooted or crashed by itself.
    try:
        async with ct.changing(State.STOPPING, requested=False):
            await finish_stop(ct, init)
        ct.events.record(f"stopped: init exited by itself ({status})")
    except Exception as exc:
        log.exception("CT %d: cleaning up after init exited", ct.ctid)
        ct.events.record(f"init exited by itself ({status}); cleanup failed: {exc}", logging.ERROR)


async def stop(ct: Container) -> None:
    """Stop a running container: its halt signal, then SIGKILL after the timeout."""
    init = ct.init
    assert init is not None
    began = time.monotonic()
    template = ct.backends.templates.get(ct.template_name)
    halt = template.halt_signal if template else int(signal.SIGPWR)
    name = signal_name(halt)
    timeout = ct.ctx.stop_timeout
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(init.pidfd, halt)
    how = await _await_halt(ct, init, timeout)
    if how == "timeout":
        ct.events.record(
            f"stop: still running {timeout:g} s after {name}; killing",
            logging.WARNING,
        )
    if not init.exited.is_set():
        await trio.to_thread.run_sync(ct.backends.cgroups.kill_all, ct.ctid)
    await finish_stop(ct, init)
    ms = (time.monotonic() - began) * 1000
    word = "killed" if how == "timeout" else "stopped"
    ct.events.record(f"{word}: {ms:.0f} ms after {name}")


async def _await_halt(ct: Container, init: InitProcess, timeout: float) -> str:
    """Wait for a graceful halt: ``exited``, ``halted`` (init alone) or ``timeout``."""
    deadline = trio.current_time() + timeout
    alone_since: float | None = None
    while trio.current_time() < deadline:
        with trio.move_on_after(POLL_S):
            await init.exited.wait()
            return "exited"
        if ct.backends.cgroups.pids(ct.ctid) == [init.pid]:
            alone_since = alone_since or trio.current_time()
            if trio.current_time() - alone_since >= HALT_SETTLE_S:
                return "halted"
        else:
            alone_since = None
    return "timeout"


async def finish_stop(ct: Container, init: InitProcess, network: bool = True) -> None:
    """Once init is gone: wait out the rest, remove the cgroups, forget init.

    ``network``: also remove its network from the host (a frozen container keeps
    its proxies and source-filter entries; see ``ctfs.model.checkpoint``).
    """
    await init.exited.wait()
    try:
        await clean_up_cgroups(ct)
        if network:
            await remove_network(ct)
    finally:
        # Init is gone whatever happened to its cgroups: the state is stopped.
        os.close(init.pidfd)
        if ct.init is init:
            ct.init = None


async def clean_up_cgroups(ct: Container) -> None:
    cgroups = ct.backends.cgroups
    deadline = trio.current_time() + LEAVE_CGROUPS_S
    while cgroups.pids(ct.ctid):
        if trio.current_time() > deadline:
            await trio.to_thread.run_sync(cgroups.kill_all, ct.ctid)
            deadline = trio.current_time() + LEAVE_CGROUPS_S
        await trio.sleep(0.005)
    try:
        await trio.to_thread.run_sync(cgroups.remove, ct.ctid)
    except OSError as exc:
        ct.events.record(f"cannot remove cgroups: {exc}", logging.ERROR)


async def remove_network(ct: Container) -> None:
    def remove() -> None:
        ct.backends.network.remove(ct.ctid)
        ct.backends.firewall.allow(ct.ctid, ())

    try:
        await trio.to_thread.run_sync(remove)
    except OSError as exc:
        ct.events.record(f"cannot remove the network: {exc}", logging.ERROR)
