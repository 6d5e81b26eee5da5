"""The Prometheus text exposition format (version 0.0.4), pure.

A family is a name, a type, a help line and samples; a sample is labels and a
value.  Label values are escaped as the format asks (backslash, double quote,
newline); names are ctfs's own and already valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

COUNTER, GAUGE = "counter", "gauge"


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass
class Family:
    name: str
    kind: str  # COUNTER or GAUGE
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append(Sample(tuple(labels.items()), value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    """Every family with at least one sample, HELP and TYPE first."""
    lines: list[str] = []
    for family in families:
        if not family.samples:
            continue
        lines.append(f"# HELP {family.name} {_escape(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels)
            head = f"{family.name}{{{labels}}}" if labels else family.name
            lines.append(f"{head} {_number(sample.value)}")
    return "".join(f"{line}\n" for line in lines)
