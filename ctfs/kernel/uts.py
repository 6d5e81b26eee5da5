"""A running container's host name, set and read in its UTS namespace from ctfsd.

setns changes only the calling thread's UTS namespace, so each call runs in a
throw-away thread that joins, acts, and switches back.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from ctfs.kernel import libc

T = TypeVar("T")


def _in_uts_namespace(init_pid: int, action: Callable[[], T]) -> T:
    """Run ``action`` in a throw-away thread that has joined the UTS namespace of ``init_pid``."""
    result: list[T] = []
    errors: list[BaseException] = []

    def in_namespace() -> None:
        # A fresh thread: if switching back failed, the foreign namespace dies with it.
        try:
            own = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
            target = os.open(f"/proc/{init_pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc.setns(target, libc.CLONE_NEWUTS)
                try:
                    result.append(action())
                finally:
                    libc.setns(own, libc.CLONE_NEWUTS)
            finally:
                os.close(own)
                os.close(target)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_namespace, name="ctfs-uts")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def set_hostname(init_pid: int, name: str) -> None:
    """Set the host name in the UTS namespace of ``init_pid``."""
    _in_uts_namespace(init_pid, lambda: libc.sethostname(name))
