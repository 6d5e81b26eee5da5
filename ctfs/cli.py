"""ctfs: the command for people.

``list``, ``status`` and friends only read the mounted files.  ``exec`` and
``enter`` find the container's init through ``procs`` and then join its cgroups,
namespaces and root directly, as vzctl exec and lxc-attach do.

Exit statuses of ``exec``/``enter``: the command's own; 125 when ctfs itself
failed (no such container, not running, not root), 126 when the command could
not be run, 127 when it was not found, 128+N when it was killed by signal N.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from ctfs.values import parse_ctid

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


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _container_dir(mount: Path, name: str) -> Path:
    if parse_ctid(name) is None:
        raise CliError(f"{name!r} is not a CTID")
    directory = mount / name
    if not directory.is_dir():
        if not (mount / "version").exists():
            raise CliError(f"{mount} is not a ctfs mount (is ctfsd running?)")
        raise CliError(f"no container {name}")
    return directory


def cmd_list(args: argparse.Namespace) -> int:
    mount: Path = args.mount
    if not (mount / "version").exists():
        raise CliError(f"{mount} is not a ctfs mount (is ctfsd running?)")
    names = sorted((e.name for e in mount.iterdir() if parse_ctid(e.name) is not None), key=int)
    rows: list[tuple[str, str, str, str]] = []
    for name in names:
        directory = mount / name
        state = _read(directory / "state").strip() or "-"
        if args.running and state != "running":
            continue
        count = len(_read(directory / "procs").split())
        hostname = _read(directory / "hostname").strip() or "-"
        rows.append((name, str(count) if state == "running" else "-", state, hostname))
    if not args.no_header:
        print(f"{'CTID':>10} {'NPROC':>5} {'STATUS':<10} HOSTNAME")
    for ctid, nproc, state, hostname in rows:
        print(f"{ctid:>10} {nproc:>5} {state:<10} {hostname}")
    return 0


def _init_pid(directory: Path) -> int:
    state = _read(directory / "state").strip()
    if state != "running":
        raise CliError(f"container {directory.name} is {state or 'gone'}, not running")
    pids = _read(directory / "procs").split()
    if not pids:
        raise CliError(f"container {directory.name} has no processes")
    return int(pids[0])


def run_inside(mount: Path, name: str, argv: list[str]) -> int:
    """Run ``argv`` inside container ``name``; return its exit status."""
    # Imported now: once the mount namespace is joined, the host's files are out of reach.
    from ctfs.kernel import nsenter, pty_relay

    if os.geteuid() != 0:
        raise CliError("joining a container needs root")
    init_pid = _init_pid(_container_dir(mount, name))
    env = dict(CONTAINER_ENV)
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    try:
        nsenter.join_container(init_pid)
    except OSError as exc:
        raise CliError(f"cannot join container {name}: {exc.strerror or exc}") from exc

    def start() -> None:
        """In the child: only stdio crosses into the container, then exec."""
        try:
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
    if os.isatty(0) and os.isatty(1):
        status = pty_relay.run_on_pty(start)
    else:
        pid = os.fork()
        if pid == 0:
            start()
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


def cmd_exec(args: argparse.Namespace) -> int:
    command = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("no command given: ctfs exec CTID -- COMMAND [ARG...]")
    return run_inside(args.mount, args.ctid, command)


def cmd_enter(args: argparse.Namespace) -> int:
    return run_inside(args.mount, args.ctid, ["/bin/sh", "-l"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctfs", description="Work with ctfs containers.")
    parser.add_argument(
        "--mount",
        "-m",
        type=Path,
        default=Path(os.environ.get("CTFS_MOUNT", "/ctfs")),
        help="where ctfsd is mounted (default $CTFS_MOUNT or /ctfs)",
    )
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list containers (like vzlist -a)")
    p.add_argument("--running", "-r", action="store_true", help="only running containers")
    p.add_argument("--no-header", "-H", action="store_true", help="omit the header line")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("exec", help="run a command inside a running container")
    p.add_argument("ctid")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("enter", help="open a shell inside a running container")
    p.add_argument("ctid")
    p.set_defaults(func=cmd_enter)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except CliError as exc:
        print(f"ctfs: {exc}", file=sys.stderr)
        return EXIT_CTFS_FAILED
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            print(f"ctfs: {args.mount} is a dead mount (ctfsd stopped?)", file=sys.stderr)
        else:
            print(f"ctfs: {exc}", file=sys.stderr)
        return EXIT_CTFS_FAILED


if __name__ == "__main__":
    sys.exit(main())
