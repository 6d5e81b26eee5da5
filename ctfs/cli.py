"""ctfs: the command for people.

``list``, ``status`` and friends only read the mounted files.  ``exec`` and
``enter`` find the container's init through ``procs`` and then join its cgroups,
namespaces and root directly, as vzctl exec and lxc-attach do.

Exit statuses of ``exec``/``enter``: the command's own; 125 when ctfs itself
failed (no such container, not running, not root), 126 when the command could
not be run, 127 when it was not found, 128+N when it was killed by signal N.

``ctfs exec CTID -- CMD`` is what scripts call in loops, and most of its cost is
Python starting up: its path imports only os, sys and what joining needs.  argparse
(and pathlib) are loaded for the other commands, help and bad usage only.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

from ctfs.policy.values import parse_ctid

EXIT_CTFS_FAILED = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127

CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "container": "ctfs",
}


class CliError(Exception):
    pass


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _check_mount(mount: str) -> None:
    if not os.path.exists(f"{mount}/version"):
        raise CliError(f"{mount} is not a ctfs mount (is ctfsd running?)")


def _container_dir(mount: str, name: str) -> str:
    if parse_ctid(name) is None:
        raise CliError(f"{name!r} is not a CTID")
    directory = f"{mount}/{name}"
    if not os.path.isdir(directory):
        _check_mount(mount)
        raise CliError(f"no container {name}")
    return directory


def cmd_list(mount: str, running_only: bool, header: bool) -> int:
    _check_mount(mount)
    names = sorted((n for n in os.listdir(mount) if parse_ctid(n) is not None), key=int)
    rows: list[tuple[str, str, str, str]] = []
    for name in names:
        directory = f"{mount}/{name}"
        state = _read(f"{directory}/state").strip() or "-"
        if running_only and state != "running":
            continue
        count = len(_read(f"{directory}/procs").split())
        hostname = _read(f"{directory}/hostname").strip() or "-"
        rows.append((name, str(count) if state == "running" else "-", state, hostname))
    if header:
        print(f"{'CTID':>10} {'NPROC':>5} {'STATUS':<10} HOSTNAME")
    for ctid, nproc, state, hostname in rows:
        print(f"{ctid:>10} {nproc:>5} {state:<10} {hostname}")
    return 0


def _init_pid(mount: str, name: str) -> int:
    directory = _container_dir(mount, name)
    state = _read(f"{directory}/state").strip()
    if state != "running":
        raise CliError(f"container {name} is {state or 'gone'}, not running")
    pids = _read(f"{directory}/procs").split()
    if not pids:
        raise CliError(f"container {name} has no processes")
    return int(pids[0])


def run_inside(mount: str, name: str, argv: list[str]) -> int:
    """Run ``argv`` inside container ``name``; return its exit status."""
    # Imported now: once the mount namespace is joined, the host's files are out of
    # reach.  (os.execvpe imports warnings lazily, so it is loaded here too.)
    import warnings  # noqa: F401

    from ctfs.kernel import libc, nsenter, seccomp

    on_terminal = os.isatty(0) and os.isatty(1)
    if on_terminal:
        from ctfs.kernel import pty_relay
    if os.geteuid() != 0:
        raise CliError("joining a container needs root")
    init_pid = _init_pid(mount, name)
    env = dict(CONTAINER_ENV)
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    try:
        joined = nsenter.join_container(init_pid)
    except OSError as exc:
        raise CliError(f"cannot join container {name}: {exc.strerror or exc}") from exc

    def start() -> None:
        """In the child: only stdio crosses into the container, then exec."""
        try:
            nsenter.enter_user(joined)
            seccomp.install()
            os.closerange(3, 65536)
            os.chdir("/root" if os.path.isdir("/root") else "/")
            os.execvpe(argv[0], argv, env)
        except FileNotFoundError:
            print(f"ctfs: {argv[0]}: command not found", file=sys.stderr)
            os._exit(EXIT_NOT_FOUND)
        except OSError as exc:
            print(f"ctfs: {argv[0]}: {exc.strerror}", file=sys.stderr)
            os._exit(EXIT_CANNOT_RUN)

    # The pid namespace applies to children only: the command always runs in a child.
    if on_terminal:
        status = pty_relay.run_on_pty(start, lambda: libc.fork_into_cgroup(joined.birth))
    else:
        pid = libc.fork_into_cgroup(joined.birth)
        if pid == 0:
            # A session of its own inside the container, as on a terminal: a session
            # led from outside the pid namespace would make the container impossible
            # to checkpoint while anything it started runs.
            os.setsid()
            start()
        # Not in our process group any more: pass on what would have reached it.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
        status = _wait(pid)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def cmd_exec(mount: str, ctid: str, command: list[str]) -> int:
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("no command given: ctfs exec CTID -- COMMAND [ARG...]")
    return run_inside(mount, ctid, command)


def _new_lines(text: str, last: str) -> list[str]:
    """The lines of ``text`` after the line ``last`` (all of them if it is not there)."""
    lines = text.splitlines()
    if last in lines:
        return lines[len(lines) - lines[::-1].index(last) :]
    return lines


def cmd_migrate(mount: str, ctid: str, peer: str) -> int:
    """``echo PEER > state``, showing the move's stages from ``events`` as they come."""
    import threading
    import time

    directory = _container_dir(mount, ctid)
    before = _read(f"{directory}/events").splitlines()
    last = before[-1] if before else ""
    failure: list[OSError] = []

    def move() -> None:
        # One write(2), as echo does: a buffered file would write again at close.
        try:
            fd = os.open(f"{directory}/state", os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            failure.append(exc)
            return
        try:
            os.write(fd, f"{peer}\n".encode())
        except OSError as exc:
            failure.append(exc)
        finally:
            os.close(fd)

    mover = threading.Thread(target=move)
    began = time.monotonic()
    mover.start()
    frozen = ""
    while True:
        done = not mover.is_alive()
        try:
            lines = _new_lines(_read(f"{directory}/events"), last)
        except OSError:
            lines = []  # the directory went: the move finished
        for line in lines:
            _, _, sentence = line.partition(" ")  # after its time stamp
            print(f"{time.monotonic() - began:7.2f} s  {sentence}", flush=True)
            if "frozen " in sentence and "now on" in sentence:
                frozen = sentence.split("frozen ", 1)[1].split(" ms", 1)[0]
            last = line
        if done:
            break
        time.sleep(0.1)
    took = time.monotonic() - began
    if failure:
        reason = os.strerror(failure[0].errno or errno.EIO)
        print(f"ctfs: CT {ctid} did not move to {peer}: {reason} (see {directory}/events)",
              file=sys.stderr)  # fmt: skip
        return 1
    summary = f"CT {ctid} now runs on {peer}: {took:.2f} s in all"
    print(summary + (f", frozen {frozen} ms" if frozen else ""))
    return 0


def parse_and_run(argv: list[str]) -> int:
    """Every command line but the quick ``exec`` form: argparse, help, usage errors."""
    import argparse

    parser = argparse.ArgumentParser(prog="ctfs", description="Work with ctfs containers.")
    parser.add_argument(
        "--mount",
        "-m",
        default=_default_mount(),
        help="where ctfsd is mounted (default $CTFS_MOUNT or /ctfs)",
    )
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list containers (like vzlist -a)")
    p.add_argument("--running", "-r", action="store_true", help="only running containers")
    p.add_argument("--no-header", "-H", action="store_true", help="omit the header line")
    p.set_defaults(func=lambda a: cmd_list(a.mount, a.running, not a.no_header))

    p = sub.add_parser("exec", help="run a command inside a running container")
    p.add_argument("ctid")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    p.set_defaults(func=lambda a: cmd_exec(a.mount, a.ctid, a.command))

    p = sub.add_parser("enter", help="open a shell inside a running container")
    p.add_argument("ctid")
    p.set_defaults(func=lambda a: run_inside(a.mount, a.ctid, ["/bin/sh", "-l"]))

    p = sub.add_parser("migrate", help="move a container to a peer (like vzmigrate --online)")
    p.add_argument("ctid")
    p.add_argument("peer", help="a peer's name in MOUNT/peers, NAME:PORT or its address")
    p.set_defaults(func=lambda a: cmd_migrate(a.mount, a.ctid, a.peer))

    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


def _default_mount() -> str:
    return os.environ.get("CTFS_MOUNT", "/ctfs")


def quick_exec(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """``[--mount DIR] exec CTID -- COMMAND...`` read without argparse, else None."""
    mount = _default_mount()
    if len(argv) >= 2 and argv[0] in ("--mount", "-m"):
        mount, argv = argv[1], argv[2:]
    elif argv and argv[0].startswith("--mount="):
        mount, argv = argv[0].removeprefix("--mount="), argv[1:]
    if len(argv) >= 4 and argv[0] == "exec" and argv[2] == "--":
        return mount, argv[1], argv[3:]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick = quick_exec(argv)
    try:
        if quick is not None:
            return run_inside(*quick)
        return parse_and_run(argv)
    except CliError as exc:
        print(f"ctfs: {exc}", file=sys.stderr)
        return EXIT_CTFS_FAILED
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            print(f"ctfs: {exc.filename}: a dead mount (ctfsd stopped?)", file=sys.stderr)
        else:
            print(f"ctfs: {exc}", file=sys.stderr)
        return EXIT_CTFS_FAILED


if __name__ == "__main__":
    sys.exit(main())
