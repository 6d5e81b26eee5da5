"""CPU and disk scheduling settings: OpenVZ's cpuunits, cpulimit, cpus and ioprio.

Pure translation from ctid.conf settings to the cgroup backend's version-neutral
values.

Mappings (also in ctfs(5)):
- cpuunits 8..500000 -> a CPU weight proportional to cpuunits (cpuunits/500000);
  on cgroup v1 that is cpu.shares scaled by 262144/500000, so the whole range
  fits the kernel's 2..262144 and ratios between containers survive.
- cpulimit (percent of one CPU) and cpus -> one CFS cap: the lower of cpulimit and
  cpus x 100 percent, as quota over a 100 ms period.
- cpus -> also a cpuset of that many CPUs, rotated by CTID so containers with few
  CPUs spread over the machine; software inside sees that many CPUs.
- ioprio 0..7 -> BFQ weight (ioprio + 1) x 100: 100..800, twice the bandwidth of
  ioprio 0 at ioprio 1, eight times at 7.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ctfs.errors import invalid, out_of_range
from ctfs.kernel.api import CpuCap

CPUUNITS_MIN, CPUUNITS_MAX, CPUUNITS_DEFAULT = 8, 500_000, 1000
IOPRIO_MIN, IOPRIO_MAX, IOPRIO_DEFAULT = 0, 7, 4
CFS_PERIOD_US = 100_000


@dataclass(frozen=True)
class Scheduling:
    cpuunits: int = CPUUNITS_DEFAULT
    cpulimit: int = 0  # percent of one CPU; 0 = unlimited
    cpus: int = 0  # 0 = all
    ioprio: int = IOPRIO_DEFAULT

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> Scheduling:
        """Read ctid.conf values; anything unreadable falls back to its default."""

        def number(key: str, default: int) -> int:
            try:
                return int(settings.get(key, default))
            except ValueError:
                return default

        return cls(
            cpuunits=number("CPUUNITS", CPUUNITS_DEFAULT),
            cpulimit=number("CPULIMIT", 0),
            cpus=number("CPUS", 0),
            ioprio=number("IOPRIO", IOPRIO_DEFAULT),
        )

    def cpu_weight(self) -> float:
        """A fraction of the largest weight, proportional to cpuunits."""
        return self.cpuunits / CPUUNITS_MAX

    def cpu_cap(self) -> CpuCap:
        caps = [p for p in (self.cpulimit, self.cpus * 100) if p > 0]
        return CpuCap(min(caps) * CFS_PERIOD_US // 100 if caps else None, CFS_PERIOD_US)

    def cpu_set(self, ctid: int, available: list[int]) -> list[int]:
        if not self.cpus or self.cpus >= len(available):
            return list(available)
        start = ctid % len(available)
        return [available[(start + i) % len(available)] for i in range(self.cpus)]

    def io_weight(self) -> int:
        return (self.ioprio + 1) * 100


def parse_number(text: str, what: str, low: int, high: int) -> int:
    """One decimal integer in ``low..high`` (EINVAL for syntax, ERANGE for range)."""
    if not text:
        raise invalid(f"empty value; write a number in {low}..{high}")
    if not (text.isascii() and text.isdigit()):
        raise invalid(f"{text!r} is not a whole number; write {what} in {low}..{high}")
    value = int(text)
    if not low <= value <= high:
        raise out_of_range(f"{value} is not in {low}..{high}")
    return value
