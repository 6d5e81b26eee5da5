"""What every benchmark in bench/ shares: running commands, packages, failures, signals.

A benchmark is a ``main() -> int`` run by ``run_bench``: a ``BenchError`` ends it
with a sentence and status 1, Ctrl-C (and SIGTERM or SIGHUP, after
``interrupt_on_termination``) with 130, always after its own cleanup has run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from tests.ctfsd_harness import Ctfsd, write_errno

COMMAND_TIMEOUT_S = 120.0
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


def run(
    argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with no stdin, capturing output; never raises on a bad status."""
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def must(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> float:
    """Run ``argv``; return its wall time in seconds, or raise BenchError if it failed."""
    began = time.perf_counter()
    done = run(argv, timeout)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip() or "no output")[-2000:]
        raise BenchError(f"{' '.join(argv)} exited with {done.returncode}: {output}")
    return elapsed


def write_state(container: Path, word: str) -> float:
    """Write ``word`` to the container's state file; return the time it took."""
    began = time.perf_counter()
    status = write_errno(container / "state", word.encode())
    elapsed = time.perf_counter() - began
    if status != 0:
        raise BenchError(f"writing {word!r} to {container}/state failed: {os.strerror(status)}")
    return elapsed


def missing_packages(names: Sequence[str]) -> list[str]:
    missing = []
    for name in names:
        done = run(["dpkg-query", "-W", "-f=${Status}", name], timeout=30)
        if done.stdout.strip() != "install ok installed":
            missing.append(name)
    return missing


@contextlib.contextmanager
def no_service_starts() -> Iterator[None]:
    """Keep maintainer scripts from starting services (lxc-net would make a bridge).

    Debian's policy-rc.d mechanism: exit status 101 denies every start.  A
    policy-rc.d that is already there is left as it is.
    """
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# temporary, from bench.start_stop\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def ensure_packages(names: Sequence[str]) -> None:
    """Install the Debian packages among ``names`` that are missing; raise BenchError."""
    missing = missing_packages(names)
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with no_service_starts():
        for argv in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        ):
            done = subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if done.returncode != 0:
                tail = (done.stderr.strip() or done.stdout.strip())[-1500:]
                raise BenchError(f"{' '.join(argv)} failed ({done.returncode}): {tail}")
    still = missing_packages(names)
    if still:
        raise BenchError(f"packages still missing after apt-get: {' '.join(still)}")
    keep_services_off(missing)


def keep_services_off(packages: Sequence[str]) -> None:
    """Undo what the maintainer scripts of freshly installed ``packages`` enabled for boot.

    ``lxc`` enables lxc-net (a bridge with dnsmasq), lxc and lxc-monitord, ``lxcfs``
    enables lxcfs on /var/lib/lxcfs; a benchmark run must not leave the next boot
    changed.  Nothing is started or stopped here (``systemctl disable`` only edits
    links, and ``--no-reload`` keeps a running systemd out of it).
    """
    unit_dirs = {Path("/lib/systemd/system"), Path("/usr/lib/systemd/system")}
    systemctl = shutil.which("systemctl")
    disabled = []
    for package in packages:
        for name in run(["dpkg-query", "-L", package], timeout=30).stdout.split():
            path = Path(name)
            if (
                systemctl
                and path.parent in unit_dirs
                and path.suffix == ".service"
                and "@" not in path.name
            ):
                argv = [systemctl, "disable", "--no-reload", path.name]
            elif path.parent == Path("/etc/init.d") and path.is_file():
                argv = ["update-rc.d", path.name, "disable"]
            else:
                continue
            done = run(argv, timeout=60)
            if done.returncode == 0:
                disabled.append(str(path))
            else:
                print(f"warning: {' '.join(argv)}: {done.stderr.strip()}", file=sys.stderr)
    if disabled:
        print(f"left disabled at boot (the packages enabled them): {' '.join(disabled)}")


def safely(what: str, action: Callable[[], object]) -> None:
    """Run one cleanup step; report a failure and carry on with the next."""
    try:
        action()
    except Exception as exc:
        print(f"cleanup: {what} failed: {exc}", file=sys.stderr)


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min)"


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP end a benchmark as Ctrl-C does: through its cleanup."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A cleanup that a second Ctrl-C (or SIGTERM, SIGHUP) must not cut short."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        interrupt_on_termination()


def print_log_tail(daemon: Ctfsd, lines: int = 30) -> None:
    """The end of ctfsd's log on stderr, to say why a benchmark failed."""
    log = daemon.log_text().strip()
    if log:
        tail = "\n".join(log.splitlines()[-lines:])
        print(f"ctfsd log (last lines):\n{tail}", file=sys.stderr)


def run_bench(name: str, main: Callable[[], int]) -> None:
    """Exit with what ``main`` returns: 130 on Ctrl-C, 1 with a sentence on BenchError."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up (any cleanup failure is reported above)", file=sys.stderr)
        sys.exit(130)
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(1)
