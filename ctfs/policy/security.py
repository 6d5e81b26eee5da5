"""The container security baseline: capabilities dropped and devices allowed.

Declared here once so the launcher (at start) and ``ctfs exec`` (joining later)
apply the same policy.
"""

from __future__ import annotations

# Capabilities removed from every container's bounding set.  Numbers from
# <linux/capability.h>; names as capabilities(7) spells them.
DROPPED_CAPABILITIES: dict[str, int] = {
    "sys_module": 16,  # loading kernel modules changes the host kernel
    "sys_rawio": 17,  # raw I/O ports and /dev/mem reach past every boundary
    "sys_pacct": 20,  # process accounting is host-wide
    "sys_boot": 22,  # reboot/kexec; ctfs stops containers itself
    "sys_time": 25,  # the clock is shared with the host
    "audit_control": 30,  # the audit subsystem is host-wide
    "mac_override": 32,
    "mac_admin": 33,
    "syslog": 34,  # the kernel ring buffer is host-wide
    "wake_alarm": 35,
    "block_suspend": 36,
}

# The devices cgroup allow-list: the usual character devices, nothing else.
# ("m" everywhere lets a container mknod nodes it still cannot open.)
ALLOWED_DEVICES: tuple[str, ...] = (
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",  # null
    "c 1:5 rwm",  # zero
    "c 1:7 rwm",  # full
    "c 1:8 rwm",  # random
    "c 1:9 rwm",  # urandom
    "c 5:0 rwm",  # tty
    "c 5:1 rwm",  # console
    "c 5:2 rwm",  # ptmx
    "c 136:* rwm",  # pts
    "c 10:229 rwm",  # fuse, so ctfs can be mounted inside a container
)
