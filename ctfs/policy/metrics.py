"""The Prometheus text exposition format (version 0.0.4), pure.

A family is a name, a type, a help line and samples; a sample is labels and a
value.  Label values are escaped as the format asks (backslash, double quote,
newline); names are ctfs's own and already valid.

Samples keep their labels already formatted: /ctfs/metrics of a thousand
containers has over 100,000 samples, and the same labels (a container and a
resource) serve five families, so they are formatted once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

COUNTER, GAUGE = "counter", "gauge"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(**values: str) -> str:
    """``{key="value",...}`` as a sample line carries it ("" for no labels)."""
    if not values:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in values.items()) + "}"


@dataclass
class Family:
    name: str
    kind: str  # COUNTER or GAUGE
    help: str
    # (formatted labels, value)
    samples: list[tuple[str, float]] = field(default_factory=list)

    def add(self, value: float, **values: str) -> None:
        self.samples.append((labels(**values), value))

    def add_labelled(self, value: float, formatted: str) -> None:
        """A sample whose labels ``labels`` formatted already."""
        self.samples.append((formatted, value))


def _number(value: float) -> str:
    if type(value) is int:
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    """Every family with at least one sample, HELP and TYPE first."""
    lines: list[str] = []
    for family in families:
        if not family.samples:
            continue
        name = family.name
        lines.append(f"# HELP {name} {_escape(family.help)}\n# TYPE {name} {family.kind}\n")
        lines.extend(f"{name}{tags} {_number(value)}\n" for tags, value in family.samples)
    return "".join(lines)
