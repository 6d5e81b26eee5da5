"""From settings to the kernel: which setting drives which knob, applied whole.

Every applier sets the kernel from a whole settings mapping, idempotently, so one
function serves a start, a change, an undo and the reconciliation after a crash.
``APPLIERS`` says which ctid.conf keys each one follows and whether it acts only
while the container runs.  The files layer never sees any of this.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ctfs.model.container import Container, hostname_in
from ctfs.policy import beancounters, etc_identity, netaddr
from ctfs.policy import quota as disk_quota
from ctfs.policy.scheduling import Scheduling

Settings = Mapping[str, str]


def scheduling(ct: Container, settings: Settings) -> None:
    """cpuunits, cpulimit, cpus and ioprio to the container's cgroups."""
    cgroups = ct.backends.cgroups
    wanted = Scheduling.from_settings(settings)
    cgroups.set_cpu_weight(ct.ctid, wanted.cpu_weight())
    cgroups.set_cpu_set(ct.ctid, wanted.cpu_set(ct.ctid, cgroups.available_cpus()))
    cgroups.set_cpu_cap(ct.ctid, wanted.cpu_cap())
    cgroups.set_io_weight(ct.ctid, wanted.io_weight())


def limits(ct: Container, settings: Settings) -> None:
    """Every kernel-enforced beancounter limit to the container's cgroups."""
    pairs = beancounters.limits_of(settings)
    ct.backends.cgroups.set_memory_limits(ct.ctid, beancounters.memory_limits(pairs))
    ct.backends.cgroups.set_task_limit(ct.ctid, beancounters.task_limit(pairs))


def disk_space(ct: Container, settings: Settings) -> None:
    """The hard diskspace limit to the private area (it holds whether it runs or not)."""
    ct.backends.quota.set_space_limit(ct.root, disk_quota.space_limit_bytes(settings))


def etc_files(ct: Container, settings: Settings) -> None:
    """/etc/hostname, hosts, machine-id (and resolv.conf, if name servers are set)."""
    storage = ct.backends.storage
    hostname = hostname_in(ct.ctid, settings)
    storage.update_etc_file(
        ct.root, "hostname", lambda old: etc_identity.render_hostname(old, hostname)
    )
    storage.update_etc_file(
        ct.root, "machine-id", lambda old: etc_identity.render_machine_id(old, uuid.uuid4().hex)
    )
    main = netaddr.main_address(netaddr.from_setting(settings.get("IP_ADDRESS", "")))
    storage.update_etc_file(ct.root, "hosts", lambda old: netaddr.render_hosts(old, hostname, main))
    servers = nameservers_in(settings)
    if servers is not None:
        storage.update_etc_file(
            ct.root, "resolv.conf", lambda old: netaddr.render_resolv_conf(old, servers)
        )


def hostname(ct: Container, settings: Settings) -> None:
    """The kernel's host name (while running) and /etc/hosts."""
    pid = ct.init_pid
    if pid is not None:
        ct.backends.processes.set_hostname(pid, hostname_in(ct.ctid, settings))
    etc_files(ct, settings)


def network(ct: Container, settings: Settings) -> None:
    """/etc files, and while running the routed network and source filter."""
    etc_files(ct, settings)
    pid = ct.init_pid
    if pid is not None:
        addresses = netaddr.from_setting(settings.get("IP_ADDRESS", ""))
        ct.backends.network.configure(ct.ctid, pid, addresses)
        ct.backends.firewall.allow(ct.ctid, addresses)


def nameservers_in(settings: Settings) -> list[str] | None:
    """The name servers ``settings`` give the container; None: leave resolv.conf be."""
    value = settings.get("NAMESERVER")
    if value is None:
        return None
    if value == netaddr.INHERIT:
        try:
            with open("/etc/resolv.conf", errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        return netaddr.nameservers_of_resolv_conf(text)
    return value.split()


@dataclass(frozen=True)
class Applier:
    keys: frozenset[str]
    apply: Callable[[Container, Settings], None]
    # False: only while the container runs (a start applies it anyway).
    always: bool


SCHEDULING_KEYS = frozenset({"CPUUNITS", "CPULIMIT", "CPUS", "IOPRIO"})
LIMIT_KEYS = frozenset(r.conf_key for r in beancounters.RESOURCES.values())

APPLIERS: tuple[Applier, ...] = (
    Applier(SCHEDULING_KEYS, scheduling, always=False),
    Applier(LIMIT_KEYS, limits, always=False),
    Applier(frozenset({disk_quota.SPACE.key}), disk_space, always=True),
    Applier(frozenset({"HOSTNAME"}), hostname, always=True),
    Applier(frozenset({"IP_ADDRESS"}), network, always=True),
    Applier(frozenset({"NAMESERVER"}), etc_files, always=True),
)


def cgroups(ct: Container, settings: Settings) -> None:
    """Every cgroup limit of ``settings``: before init joins them, and after a crash."""
    scheduling(ct, settings)
    limits(ct, settings)
