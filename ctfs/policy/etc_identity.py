"""/etc/hostname and /etc/machine-id: who the container's system thinks it is.

Pure renderers for ``Storage.update_etc_file``.  systemd reads both at boot
(systemd.io/CONTAINER_INTERFACE): a hostname file that disagrees with the
container's hostname would win over it, and a machine-id shared by every
container made from one template would give them one journal and one D-Bus id.
"""

from __future__ import annotations

MACHINE_ID_LENGTH = 32
HEX_DIGITS = frozenset("0123456789abcdef")


def render_hostname(old: str, hostname: str) -> str:
    """The file holds the container's hostname, whatever it held before."""
    del old
    return f"{hostname}\n"


def is_machine_id(text: str) -> bool:
    """32 lower-case hexadecimal digits, as machine-id(5) says (not all zero)."""
    word = text.strip()
    return len(word) == MACHINE_ID_LENGTH and set(word) <= HEX_DIGITS and word.strip("0") != ""


def render_machine_id(old: str, fresh: str) -> str:
    """Keep a container's own id for good; give it ``fresh`` when it has none.

    Templates ship an empty /etc/machine-id ("uninitialized" counts as none too).
    """
    if is_machine_id(old):
        return old
    return f"{fresh}\n"
