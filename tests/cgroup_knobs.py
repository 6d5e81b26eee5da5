"""The kernel files tests and benches read and write, for the host's cgroup version.

The system tests check what ctfs wrote to the kernel through these, and
``bench.fairness`` compares ctfs with a peer of plain cgroup directories holding the
very values ctfs wrote.  Which files those are depends on the host: cgroup v1 keeps
``cpu.shares``, ``cpu.cfs_quota_us``, ``cpuacct.usage`` and ``blkio.bfq.*`` in one
hierarchy per controller; cgroup v2 keeps ``cpu.weight``, ``cpu.max``, ``cpu.stat``
and ``io.*`` in one directory.  A *locator* maps a v1 controller name to the
directory holding that controller's files (on v2 every name gives the same one),
so the bench's code says what it means and this module says where it lives.

Invariant: a value read from a ctfs container's cgroup and written to a raw one
with the same knob gives the raw cgroup exactly the kernel setting ctfs chose.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ctfs.kernel.cgroup_mode import detect
from ctfs.kernel.cgroup_v1 import cpu_shares
from ctfs.kernel.cgroup_v2 import cpu_weight
from ctfs.policy.scheduling import Scheduling

CGROUP_ROOT = Path("/sys/fs/cgroup")
Locate = Callable[[str], Path]
NO_CAP = -1
# v1 shows "no limit" as the largest page-aligned signed 64-bit number.
V1_UNLIMITED = 2**63 - 4096


def read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


class Knobs(Protocol):
    """One cgroup version's files for CPU weight, CPU cap, CPU time and BFQ I/O."""

    version: str
    weight_file: str
    default_weight: int

    def raw_dirs(self, parent: str, child: str) -> list[Path]:
        """The directories a raw cgroup ``parent/child`` needs, parents first."""

    def raw_at(self, parent: str, child: str) -> Locate:
        """The locator of raw cgroup ``parent/child``."""

    def enable(self, parent_dir: Path) -> None:
        """Let ``parent_dir``'s children use the bench's controllers (v2 only)."""

    def expected_weight(self, cpuunits: int) -> int: ...

    def weight(self, at: Locate) -> int: ...

    def set_weight(self, at: Locate, value: int) -> None: ...

    def cap(self, at: Locate) -> tuple[int, int]:
        """(quota, period) in microseconds; quota NO_CAP when none."""

    def set_cap(self, at: Locate, quota: int, period: int) -> None: ...

    def cpu_ns(self, at: Locate) -> int: ...

    def io_weight(self, at: Locate) -> int: ...

    def set_io_weight(self, at: Locate, value: int) -> None: ...

    def io_bytes(self, at: Locate) -> int:
        """Bytes the cgroup's tasks wrote to disks (through BFQ on v1)."""

    def memory_limit(self, at: Locate) -> int | None:
        """The hard memory limit in bytes; None when there is none."""


def _write(path: Path, value: int | str) -> None:
    with open(path, "w") as f:
        f.write(str(value))


class V1Knobs:
    version = "cgroup v1"
    weight_file = "cpu.shares"
    default_weight = 1024
    controllers = ("cpu", "cpuacct", "blkio")

    def raw_dirs(self, parent: str, child: str) -> list[Path]:
        tops = [CGROUP_ROOT / controller / parent for controller in self.controllers]
        return [path for top in tops for path in (top, top / child)]

    def raw_at(self, parent: str, child: str) -> Locate:
        return lambda controller: CGROUP_ROOT / controller / parent / child

    def enable(self, parent_dir: Path) -> None:
        pass

    def expected_weight(self, cpuunits: int) -> int:
        return cpu_shares(Scheduling(cpuunits=cpuunits).cpu_weight())

    def weight(self, at: Locate) -> int:
        return read_int(at("cpu") / "cpu.shares")

    def set_weight(self, at: Locate, value: int) -> None:
        _write(at("cpu") / "cpu.shares", value)

    def cap(self, at: Locate) -> tuple[int, int]:
        return read_int(at("cpu") / "cpu.cfs_quota_us"), read_int(at("cpu") / "cpu.cfs_period_us")

    def set_cap(self, at: Locate, quota: int, period: int) -> None:
        _write(at("cpu") / "cpu.cfs_quota_us", NO_CAP)
        _write(at("cpu") / "cpu.cfs_period_us", period)
        _write(at("cpu") / "cpu.cfs_quota_us", quota)

    def cpu_ns(self, at: Locate) -> int:
        return read_int(at("cpuacct") / "cpuacct.usage")

    def io_weight(self, at: Locate) -> int:
        return read_int(at("blkio") / "blkio.bfq.weight")

    def set_io_weight(self, at: Locate, value: int) -> None:
        _write(at("blkio") / "blkio.bfq.weight", value)

    def memory_limit(self, at: Locate) -> int | None:
        limit = read_int(at("memory") / "memory.limit_in_bytes")
        return None if limit >= V1_UNLIMITED else limit

    def io_bytes(self, at: Locate) -> int:
        total = 0
        for line in (at("blkio") / "blkio.bfq.io_service_bytes").read_text().splitlines():
            words = line.split()
            if len(words) == 2 and words[0] == "Total":
                total = int(words[1])
        return total


class V2Knobs:
    version = "cgroup v2"
    weight_file = "cpu.weight"
    default_weight = 100

    def raw_dirs(self, parent: str, child: str) -> list[Path]:
        return [CGROUP_ROOT / parent, CGROUP_ROOT / parent / child]

    def raw_at(self, parent: str, child: str) -> Locate:
        return lambda controller: CGROUP_ROOT / parent / child

    def enable(self, parent_dir: Path) -> None:
        wanted = {"cpu", "io"}
        for directory in (parent_dir.parent, parent_dir):
            have = set((directory / "cgroup.subtree_control").read_text().split())
            for controller in sorted(wanted - have):
                _write(directory / "cgroup.subtree_control", f"+{controller}")

    def expected_weight(self, cpuunits: int) -> int:
        return cpu_weight(Scheduling(cpuunits=cpuunits).cpu_weight())

    def weight(self, at: Locate) -> int:
        return read_int(at("cpu") / "cpu.weight")

    def set_weight(self, at: Locate, value: int) -> None:
        _write(at("cpu") / "cpu.weight", value)

    def cap(self, at: Locate) -> tuple[int, int]:
        quota, period = (at("cpu") / "cpu.max").read_text().split()
        return (NO_CAP if quota == "max" else int(quota)), int(period)

    def set_cap(self, at: Locate, quota: int, period: int) -> None:
        _write(at("cpu") / "cpu.max", f"{'max' if quota == NO_CAP else quota} {period}")

    def cpu_ns(self, at: Locate) -> int:
        for line in (at("cpu") / "cpu.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "usage_usec":
                return int(value) * 1000
        raise OSError(f"{at('cpu')}/cpu.stat has no usage_usec")

    def io_weight(self, at: Locate) -> int:
        bfq = at("blkio") / "io.bfq.weight"
        if bfq.exists():
            return int(bfq.read_text().split()[1])  # "default N"
        return int((at("blkio") / "io.weight").read_text().split()[1]) // 10

    def set_io_weight(self, at: Locate, value: int) -> None:
        bfq = at("blkio") / "io.bfq.weight"
        if bfq.exists():
            _write(bfq, f"default {value}")
        else:  # io.weight's scale is ten times BFQ's, as in ctfs.kernel.cgroup_v2
            _write(at("blkio") / "io.weight", f"default {value * 10}")

    def memory_limit(self, at: Locate) -> int | None:
        text = (at("memory") / "memory.max").read_text().strip()
        return None if text == "max" else int(text)

    def io_bytes(self, at: Locate) -> int:
        total = 0
        for line in (at("blkio") / "io.stat").read_text().splitlines():
            for word in line.split()[1:]:
                name, _, value = word.partition("=")
                if name == "wbytes":
                    total += int(value)
        return total


def host_knobs() -> Knobs:
    """The knobs of this host's cgroup version (v1 also on a hybrid host)."""
    return V2Knobs() if detect(CGROUP_ROOT) == "unified" else V1Knobs()
