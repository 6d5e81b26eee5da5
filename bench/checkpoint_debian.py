"""bench.checkpoint's Debian workload: Debian 12 with PostgreSQL 15 and a client.

Three containers of the debian-12-postgresql template, each booted to
``running``, PostgreSQL listening on its address:

- ctfs with a private id range (the default) and ctfs with the host's ids, in one
  ctfsd inside a network of the bench's own (``bench.debian.NetLab``);
- the raw peer, with the host's ids, in a second ctfsd and a second network,
  SIGKILLed once the container runs (see ``bench.criu_sides.RawPeer``).

Every measured cycle has a client of its own in the lab's client namespace,
inserting a row every 100 ms over TCP in one psql session: ten rows, the freeze,
the restore at once, ten rows more.  The client's longest gap is the longest time
between two acknowledged inserts; it includes TCP's retransmission back-off
(the client's packets meet a dumped container and are sent again later, 0.2 s,
then 0.4, 0.8, ... after).  Every run checks that each acknowledged row is in
the table once and the session never changed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BenchError, print_log_tail, safely, write_state
from bench.criu_sides import RawPeer, Side, ctfs_cycle
from bench.debian import (
    POSTGRES,
    Inserter,
    NetLab,
    failed_units,
    in_ctfs,
    offer_templates,
    serve_postgres,
    wait_until_settled,
)
from tests.ctfsd_harness import Ctfsd

# Rows before the freeze and after the restore.
ROWS = 10
CTFS_IDS = ("private", "host")
RAW_LABEL = "raw criu dump / criu restore -d"


@dataclass
class DebianResult:
    sides: dict[str, Side] = field(default_factory=dict)  # label -> figures
    notes: list[str] = field(default_factory=list)


def boot_postgres(
    daemon: Ctfsd, lab: NetLab, ctid: int, ids: str, address: str, notes: list[str]
) -> Path:
    """A booted container with PostgreSQL open to the lab's client.  A boot that
    ends "degraded" is noted with its failed units (the benchmark goes on)."""
    ct = daemon.mount / str(ctid)
    ct.mkdir()
    for name, value in (("template", POSTGRES), ("idmap", ids), ("ip", address)):
        (ct / name).write_text(f"{value}\n")
    write_state(ct, "running")
    said = wait_until_settled(in_ctfs(ct))
    if said != "running":
        notes.append(f"CT {ctid} booted {said!r}: failed units: {failed_units(in_ctfs(ct))}")
    serve_postgres(in_ctfs(ct), lab.subnet)
    return ct


def with_client(lab: NetLab, address: str, checkpoint: Callable[[], None], into: Side) -> None:
    """One measured cycle: ``checkpoint`` between two stretches of inserts."""
    client = Inserter(lab, address)
    try:
        client.wait_for_rows(ROWS)
        os.sync()  # each side starts with nothing of the other's left to write back
        checkpoint()
        client.wait_for_rows(ROWS)
        into.gap_ms.append(client.finish() * 1000)
    finally:
        client.kill()


def last_cycle(ct: Path) -> str:
    """ctfs's own breakdown of its last freeze and restore, from events."""
    lines = [
        line.split("Z ", 1)[1]
        for line in (ct / "events").read_text().splitlines()
        if " frozen: " in line or " restored: " in line
    ]
    return "; ".join(lines[-2:])


@dataclass
class Ours:
    """One of ctfs's containers: where it is, its address, its figures."""

    ct: Path
    address: str
    side: Side


def bench_debian(runs: int) -> DebianResult:
    result = DebianResult()
    labs: list[NetLab] = []
    daemons: list[Ctfsd] = []
    peer: RawPeer | None = None
    try:
        for n in (1, 2):
            labs.append(NetLab(n))
            daemons.append(Ctfsd(stop_timeout=60, wrapper=labs[-1].enter(labs[-1].host),
                                 extra=("--uplink", "up0")))  # fmt: skip
            offer_templates(daemons[-1], POSTGRES)
            daemons[-1].start()
        ours = start_ctfs_side(daemons[0], labs[0], result)
        raw_address = labs[1].address(10)
        boot_postgres(daemons[1], labs[1], 302, "host", raw_address, result.notes)
        peer = RawPeer(daemons[1], 302, daemons[1].state / "raw-criu", labs[1].host,
                       (raw_address,))  # fmt: skip
        peer.take_over()  # from here on nothing but criu touches the peer's tree
        peer.cycle(Side())  # warm-up
        raw = result.sides.setdefault(RAW_LABEL, Side())
        for _ in range(runs):
            for one in ours:
                freeze = functools.partial(ctfs_cycle, one.ct, daemons[0].state, one.side)
                with_client(labs[0], one.address, freeze, one.side)
            with_client(labs[1], raw_address, functools.partial(peer.cycle, raw), raw)
        result.notes += [f"ctfs's last cycle, CT {one.ct.name}: {last_cycle(one.ct)}"
                         for one in ours]  # fmt: skip
        result.notes += [f"raw criu: {note}" for note in peer.notes]
    except BenchError:
        if daemons:
            print_log_tail(daemons[0])
        raise
    finally:
        if peer is not None:
            safely("unmounting the raw peer's stand-ins", peer.close)
        for daemon in daemons:
            safely("cleaning up a ctfsd", daemon.cleanup)
        for lab in labs:
            safely("deleting the network namespaces", lab.close)
    return result


def start_ctfs_side(daemon: Ctfsd, lab: NetLab, result: DebianResult) -> list[Ours]:
    """Boot ctfs's containers and run one untimed cycle of each; one that cannot be
    checkpointed is left out, and the notes say why."""
    ours = []
    for n, ids in enumerate(CTFS_IDS):
        address = lab.address(10 + n)
        ct = boot_postgres(daemon, lab, 301 + 2 * n, ids, address, result.notes)
        try:
            ctfs_cycle(ct, daemon.state, Side())  # warm-up
        except BenchError:
            events = (ct / "events").read_text().splitlines()
            why = events[-1].split("Z ", 1)[-1] if events else "no event"
            result.notes.append(f"ctfs with {ids} ids (CT {ct.name}): not measured: {why}")
            write_state(ct, "stopped")  # it runs on; it must not weigh on the others
            continue
        side = result.sides.setdefault(f"ctfs, {ids} ids", Side())
        ours.append(Ours(ct, address, side))
    return ours
