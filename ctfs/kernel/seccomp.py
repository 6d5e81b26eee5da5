"""The seccomp filter of every container process, built and loaded by libseccomp.

The list of denied system calls and why is ``ctfs.policy.security.DENIED_SYSCALLS``.
The filter covers the x86 32-bit and x32 system call tables as well as the native
one: a denied call must not be reachable through another ABI.

libseccomp (Debian's libseccomp2) is called directly through ctypes, the few
functions this needs: the Python bindings find the library with
``ctypes.util.find_library``, which costs 25-30 ms here, and ``ctfs exec`` pays
every millisecond of its start-up.  Loading needs no ``no_new_privs``: the loader
still has CAP_SYS_ADMIN (the container's init before exec, ``ctfs exec`` before it
runs the command), so setuid programs inside keep working.  Import this module
before entering a container's mount namespace: it loads the library then.
"""

from __future__ import annotations

import ctypes
import os

from ctfs.policy.security import DENIED_SYSCALLS

_LIBRARY = "libseccomp.so.2"
# From <seccomp.h>: actions, and the audit architecture tokens of x86.
_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_ARCH_X86_64 = 0xC000003E
_ARCH_X86 = 0x40000003
_ARCH_X32 = 0x4000003E
_NR_UNKNOWN = -1  # __NR_SCMP_ERROR: no such system call on this architecture

_lib = ctypes.CDLL(_LIBRARY, use_errno=True)
_lib.seccomp_init.restype = ctypes.c_void_p
_lib.seccomp_init.argtypes = [ctypes.c_uint32]
_lib.seccomp_release.argtypes = [ctypes.c_void_p]
_lib.seccomp_arch_native.restype = ctypes.c_uint32
_lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
_lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
_lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
_lib.seccomp_load.argtypes = [ctypes.c_void_p]


def _check(result: int, what: str) -> None:
    # libseccomp returns -errno.
    if result < 0:
        raise OSError(-result, f"seccomp: {what}: {os.strerror(-result)}")


def install() -> None:
    """Load the filter into the calling thread; inherited by children and kept at exec."""
    context = _lib.seccomp_init(_ACT_ALLOW)
    if not context:
        raise OSError("seccomp: cannot make a filter context")
    try:
        if _lib.seccomp_arch_native() == _ARCH_X86_64:
            for arch in (_ARCH_X86, _ARCH_X32):
                _check(_lib.seccomp_arch_add(context, arch), "add an architecture")
        for name, (code, _reason) in DENIED_SYSCALLS.items():
            number = _lib.seccomp_syscall_resolve_name(name.encode())
            if number == _NR_UNKNOWN:
                continue  # not a system call of this architecture
            _check(_lib.seccomp_rule_add(context, _ACT_ERRNO | code, number, 0), f"deny {name}")
        _check(_lib.seccomp_load(context), "load the filter")
    finally:
        _lib.seccomp_release(context)
