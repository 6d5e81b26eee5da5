"""What /ctfs/metrics says: every container's figures and ctfsd's own, for agents.

One pass: the beancounters of the running containers (the same measurement as
/ctfs/beancounters, so maxheld and crossings stay one record), their CPU time and
memory from the cgroups, their eth0 traffic from the host end of the veth.  Disk
quota is left out: reading it costs a btrfs command per container.
"""

from __future__ import annotations

import time

import trio

from ctfs.model import resources
from ctfs.model.container import Container, State
from ctfs.policy.metrics import COUNTER, GAUGE, Family

STARTED = time.time()


async def families(containers: list[Container]) -> list[Family]:
    state = Family("ctfs_container_state", GAUGE, "1 for the state the container is in")
    cpu = Family("ctfs_container_cpu_seconds_total", COUNTER, "CPU time used since its start")
    memory = Family("ctfs_container_memory_bytes", GAUGE, "RAM in use (cgroup)")
    received = Family("ctfs_container_network_receive_bytes_total", COUNTER, "bytes in on eth0")
    sent = Family("ctfs_container_network_transmit_bytes_total", COUNTER, "bytes out on eth0")
    ubc = {
        column: Family(f"ctfs_beancounter_{column}", GAUGE, f"user beancounter {column}")
        for column in ("held", "maxheld", "barrier", "limit")
    }
    # OpenVZ's failcnt only grows: a counter.
    ubc["failcnt"] = Family(
        "ctfs_beancounter_failcnt_total", COUNTER, "user beancounter failcnt (refusals)"
    )
    for ct in containers:
        state.add(1, ctid=str(ct.ctid), state=ct.state.value)
    running = [ct for ct in containers if ct.state is State.RUNNING]
    counters = await resources.counters(running)

    def kernel_figures() -> list[tuple[Container, int, int, tuple[int, int] | None]]:
        rows = []
        for ct in running:
            figures = ct.backends.cgroups.counters(ct.ctid)
            traffic = ct.backends.network.traffic(ct.ctid)
            both = (traffic.received, traffic.sent) if traffic is not None else None
            rows.append((ct, figures.cpu_ns, figures.ram, both))
        return rows

    for ct, cpu_ns, ram, traffic in await trio.to_thread.run_sync(kernel_figures):
        label = str(ct.ctid)
        cpu.add(cpu_ns / 1e9, ctid=label)
        memory.add(ram, ctid=label)
        if traffic is not None:
            received.add(traffic[0], ctid=label)
            sent.add(traffic[1], ctid=label)
        for resource, counter in counters.get(ct.ctid, {}).items():
            for column, family in ubc.items():
                family.add(getattr(counter, column), ctid=label, resource=resource)
    daemon = [
        Family("ctfsd_containers", GAUGE, "containers ctfsd manages"),
        Family("ctfsd_running_containers", GAUGE, "containers running now"),
        Family("ctfsd_start_time_seconds", GAUGE, "when ctfsd started (Unix time)"),
    ]
    daemon[0].add(len(containers))
    daemon[1].add(len(running))
    daemon[2].add(round(STARTED, 3))
    return [state, cpu, memory, received, sent, *ubc.values(), *daemon]
