"""Run a piece of code in a container's network namespace, from one thread of ctfsd.

A thread may switch its own network namespace (setns with CLONE_NEWNET affects only
the calling thread), and a socket keeps the namespace it was made in.  So netlink
work for a container runs in a worker thread that enters the container's namespace
and is always put back before the thread serves anything else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ctfs.kernel import libc


@contextlib.contextmanager
def entered(pid: int) -> Iterator[None]:
    """Inside the block, this thread is in the network namespace of process ``pid``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(target, libc.CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            # If this failed the thread would serve others from the wrong namespace;
            # setns back to a namespace we hold open cannot fail short of a kernel bug.
            libc.setns(home, libc.CLONE_NEWNET)
    finally:
        os.close(home)


def path(pid: int) -> str:
    return f"/proc/{pid}/ns/net"
