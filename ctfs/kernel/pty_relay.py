"""Run a command on a pseudo-terminal of the container's own devpts, relayed to ours.

When ``ctfs exec``/``enter`` runs from a terminal, the command must not get the
host's terminal: a process left inside the container could push keystrokes into
the administrator's host shell with TIOCSTI.  Like vzctl enter and lxc-attach, the
command gets a new pseudo-terminal from the container's devpts instance, and this
process (outside the container's pid namespace, invisible to it) copies bytes
between the two.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import termios
import tty
from collections.abc import Callable


def _copy_window_size(source: int, dest: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dest, termios.TIOCSWINSZ, size)


def run_on_pty(start: Callable[[], None], fork: Callable[[], int] = os.fork) -> int:
    """Fork; the child gets a container pty as its controlling terminal and calls ``start``
    (which execs).  Relay until it exits; return its raw wait status."""
    master, slave = os.openpty()  # the container's /dev/ptmx: we joined its mount ns
    pid = fork()
    if pid == 0:
        os.close(master)
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.close(slave)
        start()
        os._exit(126)
    os.close(slave)
    _copy_window_size(0, master)
    signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(0, master))
    saved = termios.tcgetattr(0)
    tty.setraw(0, termios.TCSANOW)  # keep what the user typed ahead
    try:
        _relay(master)
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)
    _, status = os.waitpid(pid, 0)
    return status


def _relay(master: int) -> None:
    stdin_open = True
    while True:
        readable = [master, 0] if stdin_open else [master]
        try:
            ready, _, _ = select.select(readable, [], [])
        except InterruptedError:
            continue
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:  # every slave end closed: the command is done
                    return
                raise
            if not data:
                return
            os.write(1, data)
        if 0 in ready:
            data = os.read(0, 65536)
            if data:
                os.write(master, data)
            else:
                stdin_open = False
