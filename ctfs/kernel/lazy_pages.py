"""CRIU's post-copy pieces: the page server's endpoint and TLS, and its status pipe.

Facts checked here (CRIU 4.2.1, kernel 6.x; see DESIGN.md §7):
- ``criu dump --lazy-pages`` writes the images without the memory pages, then
  serves those from the frozen processes until the target's ``criu lazy-pages``
  fetched all of them, and only then ends the processes and exits.
- Its page server splices pages through pipes of up to 4 MiB: with
  ``fs.pipe-max-size`` at its default 1 MiB the transfer fails ("splice: Bad
  file descriptor"), so ``raise_pipe_limit`` lifts it (root lacks nothing else).
- ``--status-fd`` gets one NUL byte once the page server (or the lazy-pages
  daemon) is ready; EOF without it means the run failed.
- The restored processes open their userfaultfd themselves, inside the
  container's user namespace: with ``vm.unprivileged_userfaultfd`` at 0 (Debian's
  default) that is EPERM for a container with a private id range, so
  ``userfaultfd_allowed`` lifts it for the length of a lazy restore only (CRIU
  4.2.1 does not use /dev/userfaultfd).  Containers never can: ctfs's seccomp
  filter refuses userfaultfd to them; the window opens it to the host's own
  unprivileged users, for the few hundred milliseconds a restore takes.
- With ``--tls`` both ends present their certificates; the peer's own
  self-signed certificate is the only CA, and its common name is not checked
  (``--tls-no-cn-verify``): the certificate itself is the pin.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ctfs.kernel.criu_values import CriuError, LazyPages

log = logging.getLogger(__name__)

PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")
NEEDED_PIPE_MAX = 4 << 20
# The lazy-pages daemon connects to the source's page server and says it is ready.
READY_TIMEOUT_S = 30.0


def raise_pipe_limit() -> None:
    """Let CRIU's page server have the pipes it asks for (see the module's facts)."""
    with contextlib.suppress(OSError, ValueError):
        if int(PIPE_MAX_SIZE.read_text()) >= NEEDED_PIPE_MAX:
            return
    try:
        PIPE_MAX_SIZE.write_text(str(NEEDED_PIPE_MAX))
    except OSError as exc:
        raise CriuError(f"cannot raise fs.pipe-max-size for CRIU's page server: {exc}") from exc
    log.warning("raised fs.pipe-max-size to %d for CRIU's page server", NEEDED_PIPE_MAX)


UNPRIVILEGED_UFFD = Path("/proc/sys/vm/unprivileged_userfaultfd")
_uffd_lock = threading.Lock()
_uffd_users = 0
_uffd_before = ""


@contextlib.contextmanager
def userfaultfd_allowed() -> Iterator[None]:
    """``vm.unprivileged_userfaultfd`` at 1 while any lazy restore runs, then as it was."""
    global _uffd_users, _uffd_before
    with _uffd_lock:
        if _uffd_users == 0:
            try:
                _uffd_before = UNPRIVILEGED_UFFD.read_text().strip()
                if _uffd_before != "1":
                    UNPRIVILEGED_UFFD.write_text("1")
            except OSError as exc:
                raise CriuError(f"cannot allow userfaultfd for the restore: {exc}") from exc
        _uffd_users += 1
    try:
        yield
    finally:
        with _uffd_lock:
            _uffd_users -= 1
            if _uffd_users == 0 and _uffd_before not in ("", "1"):
                try:
                    UNPRIVILEGED_UFFD.write_text(_uffd_before)
                except OSError as exc:
                    log.error("cannot set vm.unprivileged_userfaultfd back: %s", exc)


def free_port(address: str) -> int:
    """A port nothing listens on at ``address`` now, for a page server to take.

    The kernel picks it; another program could take it before CRIU binds it, and
    the dump then fails early (its images not written), like any failed dump.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
    return port


def endpoint(lazy: LazyPages) -> list[str]:
    argv = ["--address", lazy.address, "--port", str(lazy.port)]
    if lazy.tls is not None:
        argv += [
            "--tls",
            "--tls-cacert", str(lazy.tls.peer_cert),
            "--tls-cert", str(lazy.tls.cert),
            "--tls-key", str(lazy.tls.key),
            "--tls-no-cn-verify",
        ]  # fmt: skip
    return argv


def status_pipe() -> tuple[int, int]:
    """(ours to read, CRIU's to write); the caller closes CRIU's end once it started."""
    return os.pipe2(os.O_CLOEXEC)


def call_when_ready(status: int, callback: Callable[[], None]) -> threading.Thread:
    """Call ``callback`` (in a thread) once CRIU says it is ready; never if it fails."""

    def wait() -> None:
        try:
            if os.read(status, 1) == b"\0":
                callback()
        finally:
            os.close(status)

    thread = threading.Thread(target=wait, name="criu-status", daemon=True)
    thread.start()
    return thread


def wait_ready(status: int, daemon: subprocess.Popen[str]) -> bool:
    """Wait for the lazy-pages daemon to be ready; False (it is killed) if it is not."""
    try:
        readable, _, _ = select.select([status], [], [], READY_TIMEOUT_S)
        ready = bool(readable) and os.read(status, 1) == b"\0"
    finally:
        os.close(status)
    if not ready:
        daemon.kill()
        daemon.communicate()
    return ready
