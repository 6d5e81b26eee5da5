"""The container security baseline: capabilities dropped, devices allowed, system
calls denied.

Declared here once so the spawner (at start) and ``ctfs exec`` (joining later)
apply the same policy.  Pure data.
"""

from __future__ import annotations

import errno

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

# The seccomp filter every container process runs under: these system calls fail
# with the errno given, whatever the caller's capabilities.  Modelled on the default
# profiles of Docker (moby profiles/seccomp/default.json) and LXC (config/common.seccomp),
# keeping what a container's root legitimately does (mount proc and tmpfs, iptables,
# routing, reboot of its own pid namespace).  The reason for each entry:
DENIED_SYSCALLS: dict[str, tuple[int, str]] = {
    # File handles bypass mount namespaces and every path check: a handle guessed
    # or taken from another filesystem opens any file on it (the "shocker" escape).
    "open_by_handle_at": (errno.EPERM, "opens any file of a filesystem by handle, past its mounts"),
    # The kernel itself: replacing or extending it is the host's business.
    "kexec_load": (errno.EPERM, "loads a new kernel"),
    "kexec_file_load": (errno.EPERM, "loads a new kernel"),
    "init_module": (errno.EPERM, "loads code into the host's kernel"),
    "finit_module": (errno.EPERM, "loads code into the host's kernel"),
    "delete_module": (errno.EPERM, "unloads the host's kernel modules"),
    "create_module": (errno.EPERM, "obsolete module loading"),
    # The kernel keyring is not namespaced: keys would be shared with the host.
    # ENOSYS, as LXC and Docker answer, so software falls back rather than fails.
    "keyctl": (errno.ENOSYS, "the kernel keyring is shared with the host"),
    "add_key": (errno.ENOSYS, "the kernel keyring is shared with the host"),
    "request_key": (errno.ENOSYS, "the kernel keyring is shared with the host"),
    # Host-wide switches and counters.
    "acct": (errno.EPERM, "process accounting is host-wide"),
    "swapon": (errno.EPERM, "swap is host-wide"),
    "swapoff": (errno.EPERM, "swap is host-wide"),
    "quotactl": (errno.EPERM, "disk quotas are the host's (ctfs keeps the container's)"),
    "lookup_dcookie": (errno.EPERM, "reads host-wide profiling cookies"),
    "fanotify_init": (errno.EPERM, "watches whole host filesystems"),
    # Kernel attack surface with no place in a container.
    "bpf": (errno.EPERM, "loads programs into the host's kernel"),
    "perf_event_open": (
        errno.EPERM,
        "observes the whole host and is a frequent kernel exploit path",
    ),
    "userfaultfd": (errno.EPERM, "stalls the kernel at will, an exploitation aid"),
    "uselib": (errno.EPERM, "obsolete library loading"),
    "nfsservctl": (errno.EPERM, "obsolete NFS server control"),
    "vm86": (errno.EPERM, "obsolete real-mode execution"),
    "vm86old": (errno.EPERM, "obsolete real-mode execution"),
    "_sysctl": (errno.EPERM, "obsolete sysctl interface, around /proc/sys"),
    "ustat": (errno.EPERM, "obsolete host filesystem statistics"),
    "sysfs": (errno.EPERM, "obsolete filesystem type listing"),
}
