"""What /ctfs/metrics says: every container's figures and ctfsd's own, for agents.

One pass: the beancounters of the running containers (the same reading as
/ctfs/beancounters, so maxheld and crossings stay one record), their CPU time and
memory from the cgroup figures that reading took, their eth0 traffic from the host
end of the veth.  Disk quota is left out: reading it costs a btrfs command per
container.
"""

from __future__ import annotations

import time

import trio

from ctfs.kernel.api import EVERYTHING, Traffic
from ctfs.model import resources
from ctfs.model.container import Container, State
from ctfs.policy.beancounters import RESOURCES, Counter
from ctfs.policy.metrics import COUNTER, GAUGE, Family, label, labels_of

STARTED = time.time()

_COLUMNS = Counter._fields  # held, maxheld, barrier, limit, failcnt


def _beancounter_families() -> list[Family]:
    families = [
        Family(f"ctfs_beancounter_{column}", GAUGE, f"user beancounter {column}")
        for column in _COLUMNS[:-1]
    ]
    # OpenVZ's failcnt only grows: a counter.
    failcnt = Family(
        "ctfs_beancounter_failcnt_total", COUNTER, "user beancounter failcnt (refusals)"
    )
    return [*families, failcnt]


# Every resource's label pair, formatted once: a thousand containers have 21,000
# (container, resource) label sets, each serving five families.
_RESOURCE = {name: label("resource", name) for name in RESOURCES}


async def families(containers: list[Container]) -> list[Family]:
    state = Family("ctfs_container_state", GAUGE, "1 for the state the container is in")
    cpu = Family("ctfs_container_cpu_seconds_total", COUNTER, "CPU time used since its start")
    memory = Family("ctfs_container_memory_bytes", GAUGE, "RAM in use (cgroup)")
    received = Family("ctfs_container_network_receive_bytes_total", COUNTER, "bytes in on eth0")
    sent = Family("ctfs_container_network_transmit_bytes_total", COUNTER, "bytes out on eth0")
    for ct in containers:
        state.add(1, ctid=str(ct.ctid), state=ct.state.value)
    running = [ct for ct in containers if ct.state is State.RUNNING]
    readings = await resources.read(running, EVERYTHING)

    def traffic_of_all() -> list[Traffic | None]:
        # Only a container with addresses has an eth0 (ctfs.model.network).
        return [ct.backends.network.traffic(ct.ctid) if ct.addresses else None for ct in running]

    tags: list[str] = []  # the labels of every (container, resource), in order
    counters: list[Counter] = []
    for ct, traffic in zip(running, await trio.to_thread.run_sync(traffic_of_all), strict=True):
        reading = readings.get(ct.ctid)
        if reading is None:
            continue
        ctid = str(ct.ctid)
        cpu.add(reading.kernel.cpu_ns / 1e9, ctid=ctid)
        memory.add(reading.kernel.ram, ctid=ctid)
        if traffic is not None:
            received.add(traffic.received, ctid=ctid)
            sent.add(traffic.sent, ctid=ctid)
        pair = label("ctid", ctid)
        tags.extend(labels_of(pair, _RESOURCE[name]) for name in reading.counters)
        counters.extend(reading.counters.values())
    ubc = _beancounter_families()
    for column, family in enumerate(ubc):
        family.labels = tags  # one list for the five: they are only rendered from here
        family.values = [counter[column] for counter in counters]
    daemon = [
        Family("ctfsd_containers", GAUGE, "containers ctfsd manages"),
        Family("ctfsd_running_containers", GAUGE, "containers running now"),
        Family("ctfsd_start_time_seconds", GAUGE, "when ctfsd started (Unix time)"),
    ]
    daemon[0].add(len(containers))
    daemon[1].add(len(running))
    daemon[2].add(round(STARTED, 3))
    return [state, cpu, memory, received, sent, *ubc, *daemon]
