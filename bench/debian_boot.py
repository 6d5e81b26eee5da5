"""bench.start_stop's Debian part: boot to ``running`` and graceful stop of Debian 12
(systemd 252), ctfs next to LXC, both from the same debian-12 template tarball.

Boot to running is measured two ways, from the same cycles:

- from outside: from just before the start (``echo running > state``, or
  ``lxc-start -d``) until ``systemctl is-system-running --wait``, asked again and
  again from outside (``ctfs exec`` / ``lxc-attach``), has said ``running``.  Until
  systemd listens on its socket the answer is "offline"; each try costs one exec
  or attach, and the last one's return is included;
- by systemd's own clock: its ``FinishTimestamp`` (what systemd-analyze calls
  "Startup finished", CLOCK_REALTIME, which containers share with the host) minus
  the host's wall clock just before the start.  Also systemd's own userspace boot
  (``FinishTimestamp - UserspaceTimestamp``, systemd-analyze's "userspace").

Graceful stop: ``echo stopped > state`` (ctfs sends the template's HALT_SIGNAL,
SIGRTMIN+4, and waits for systemd to end) and ``lxc-stop`` (which sends
SIGRTMIN+3 when init blocks it, as systemd does; read from its trace log).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BenchError, safely, write_state
from bench.debian import (
    DEBIAN,
    Runner,
    boot_clock,
    failed_units,
    in_ctfs,
    in_lxc,
    template_tarball,
    wait_until_settled,
)
from bench.lxc import LxcDebian
from bench.samples import Samples, print_table

CTID = 102
NOTES = """\
  outside: from just before the start until is-system-running --wait, polled with
    ctfs exec / lxc-attach, said running (its last exec or attach included);
  systemd: systemd's FinishTimestamp minus the host's clock just before the start;
  userspace: FinishTimestamp - UserspaceTimestamp, systemd-analyze's "userspace".
  Same debian-12 tarball on both sides; ctfs's container has its --ids, LXC's is
  privileged (LXC's default).  Each container's first boot (the warm-up, not counted)
  also makes its machine-id.  systemd takes SIGRTMIN+4 as poweroff, SIGRTMIN+3 as
  halt: both end in reboot(2), which in a pid namespace ends its init."""


@dataclass
class Boots:
    """One side's figures."""

    start: Samples
    outside: Samples
    systemd: Samples
    userspace: Samples
    stop: Samples
    said: list[str] = field(default_factory=list)  # what is-system-running said
    halt: str = ""  # the signal the stop sent
    failed: str = ""  # failed units, if it did not say running

    @classmethod
    def named(cls, who: str, start: str, stop: str) -> Boots:
        return cls(
            Samples(f"{who}: {start}", "ms"),
            Samples(f"{who}: boot to running, outside", "ms"),
            Samples(f"{who}: boot to running, systemd", "ms"),
            Samples(f"{who}: systemd's own userspace boot", "ms"),
            Samples(f"{who}: {stop}", "ms"),
        )

    def rows(self) -> list[Samples]:
        return [self.outside, self.systemd, self.userspace, self.start, self.stop]


def boot(start: Callable[[], float], inside: Runner, into: Boots | None) -> None:
    """Start, wait for the end of systemd's boot, and note the times."""
    wall = time.time()
    began = time.perf_counter()
    started = start()
    said = wait_until_settled(inside)
    outside = time.perf_counter() - began
    clock = boot_clock(inside)
    if into is None:
        return
    into.start.values.append(started)
    into.outside.values.append(outside)
    into.systemd.values.append(clock.finish - wall)
    into.userspace.values.append(clock.finish - clock.userspace)
    into.said.append(said)
    if said != "running" and not into.failed:
        into.failed = failed_units(inside) or "none listed"


def stop_signal(ct: Path) -> str:
    """The signal of ctfs's last stop, from events ("stopped: N ms after SIG...")."""
    for line in reversed((ct / "events").read_text().splitlines()):
        found = re.search(r"stopped: .* after (\S+)$", line)
        if found:
            return found.group(1)
    return "not in events"


def bench_ctfs_debian(mount: Path, ids: str, runs: int, settle: float) -> Boots:
    """A debian-12 container of ``ids`` in the ctfsd of ``mount``; removed at the end."""
    boots = Boots.named("ctfs", "state write 'running'", "state write 'stopped'")
    ct = mount / str(CTID)
    ct.mkdir()
    try:
        (ct / "template").write_text(f"{DEBIAN}\n")
        (ct / "idmap").write_text(f"{ids}\n")
        print(f"ctfs: {runs} boot/stop cycles of CT {CTID} ({DEBIAN}, {ids} ids) ...", flush=True)
        for n in range(runs + 1):  # the first is a warm-up
            boot(lambda: write_state(ct, "running"), in_ctfs(ct), boots if n else None)
            time.sleep(settle)
            stopped = write_state(ct, "stopped")
            if n:
                boots.stop.values.append(stopped)
        boots.halt = stop_signal(ct)
    finally:
        safely(f"stopping CT {CTID}", lambda: write_state(ct, "stopped"))
        safely(f"removing CT {CTID}", ct.rmdir)
    return boots


def bench_lxc_debian(workdir: Path, runs: int, settle: float) -> Boots:
    boots = Boots.named("LXC", "lxc-start -d", "lxc-stop")
    lxc = LxcDebian(workdir, template_tarball(DEBIAN))
    try:
        print(f"lxc: creating {lxc.name} from {DEBIAN}'s tarball (lxc-create -t none) ...")
        lxc.create()
        print(f"lxc: {runs} boot/stop cycles ...", flush=True)
        try:
            boot(lxc.start, in_lxc(lxc.name), None)  # warm-up
            time.sleep(settle)
            boots.halt = lxc.stop_traced()[1]
            for _ in range(runs):
                boot(lxc.start, in_lxc(lxc.name), boots)
                time.sleep(settle)
                boots.stop.values.append(lxc.stop())
        except BenchError as exc:
            log = lxc.log.read_text(errors="replace")[-2000:] if lxc.log.exists() else ""
            raise BenchError(f"{exc}\nlxc-start log:\n{log}" if log else str(exc)) from exc
        return boots
    finally:
        safely("destroying the LXC Debian container", lxc.destroy)


def report(runs: int, ours: Boots | None, lxc: Boots | None) -> None:
    title = f"{DEBIAN} (systemd 252): boot to running and graceful stop, {runs} runs each"
    rows = [*(ours.rows() if ours else []), *(lxc.rows() if lxc else [])]
    print_table(f"{title} after one warm-up", rows)
    for who, boots in (("ctfs", ours), ("LXC", lxc)):
        if boots is None:
            continue
        said = ", ".join(f"{word} x{boots.said.count(word)}" for word in sorted(set(boots.said)))
        print(f"  {who}: is-system-running said {said}; its stop sent {boots.halt}")
        if boots.failed:
            print(f"  {who}: failed units: {boots.failed}")
    print(NOTES)
