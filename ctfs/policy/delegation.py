"""Which of its own files a container may write from inside.

None by default: the host lists them in ``delegated`` (saved as ``DELEGATED`` in
ctid.conf).  Only files that concern the container alone can be delegated:

- ``hostname``: its own UTS name, which its root may set anyway; through ctfs it
  is also saved and written to /etc/hostname and /etc/hosts;
- ``nameserver``: its own /etc/resolv.conf (but not ``inherit``, which would copy
  the host's).

Never ``state`` (a container freezing itself through ctfs would wait on its own
request), nor anything that changes its share of the host (limits, CPU, I/O,
quota) or its addresses (it could take a neighbour's).
"""

from __future__ import annotations

from collections.abc import Mapping

from ctfs.errors import invalid

KEY = "DELEGATED"
DELEGABLE = ("hostname", "nameserver")


def delegated(settings: Mapping[str, str]) -> frozenset[str]:
    return frozenset(settings.get(KEY, "").split()) & frozenset(DELEGABLE)


def parse(text: str) -> str:
    """The names written, checked and sorted, as ctid.conf keeps them; "" for none."""
    names = text.split()
    if names == ["none"]:
        return ""
    for name in names:
        if name not in DELEGABLE:
            raise invalid(
                f"{name!r} cannot be written from inside; delegable: {', '.join(DELEGABLE)}"
            )
    return " ".join(sorted(set(names)))


def render(settings: Mapping[str, str]) -> str:
    return "".join(f"{name}\n" for name in sorted(delegated(settings)))
