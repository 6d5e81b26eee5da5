"""Durations of one metric, the tables of them bench.start_stop prints, and the timed
reads of a file it measures them with."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BenchError

MS = 1e3
US = 1e6


@dataclass
class Samples:
    """Durations of one metric, in seconds."""

    label: str
    unit: str  # "ms" or "µs"
    values: list[float] = field(default_factory=list)

    @property
    def scale(self) -> float:
        return MS if self.unit == "ms" else US

    def median(self) -> float:
        return statistics.median(self.values) * self.scale

    def p90(self) -> float:
        if len(self.values) < 2:
            return self.values[0] * self.scale
        return statistics.quantiles(self.values, n=10, method="inclusive")[8] * self.scale

    def row(self) -> str:
        if not self.values:
            return f"  {self.label:<46} {'-':>11} {'-':>11} {0:>6}"
        return (
            f"  {self.label:<46} {fmt(self.median(), self.unit):>11}"
            f" {fmt(self.p90(), self.unit):>11} {len(self.values):>6}"
        )


def fmt(value: float, unit: str) -> str:
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def print_table(title: str, rows: Sequence[Samples]) -> None:
    print(f"\n{title}")
    print(f"  {'metric':<46} {'median':>11} {'p90':>11} {'n':>6}")
    for samples in rows:
        print(samples.row())


def read_in_process(path: str) -> float:
    """open+read+close of ``path``; return the time it took."""
    began = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - began
    if not data:
        raise BenchError(f"{path} read empty")
    return elapsed


def read_with_cat(cat: str, path: str) -> float:
    """``cat path`` as a spawned process; return its wall time."""
    began = time.perf_counter()
    done = subprocess.run([cat, path], stdin=subprocess.DEVNULL, capture_output=True, check=False)
    elapsed = time.perf_counter() - began
    if done.returncode != 0 or not done.stdout:
        raise BenchError(f"cat {path}: status {done.returncode}: {done.stderr!r}")
    return elapsed


def bench_reads(
    sources: Sequence[tuple[str, Path]],
    iterations: int,
    reader: Callable[[str], float],
    prefix: str,
    unit: str,
) -> list[Samples]:
    """Read every source ``iterations`` times, interleaved so load hits all alike."""
    results = [Samples(f"{prefix} {label}", unit) for label, _ in sources]
    paths = [str(path) for _, path in sources]
    for path in paths:
        for _ in range(max(5, iterations // 50)):  # warm-up
            reader(path)
    for _ in range(iterations):
        for samples, path in zip(results, paths, strict=True):
            samples.values.append(reader(path))
    return results
