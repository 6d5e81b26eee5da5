"""ctfsd: mount the ctfs filesystem and serve it.

The mount itself belongs to a keeper process (ctfs.keeper), which holds the FUSE
connection; ctfsd takes it over (ctfs.fs.takeover), so a crash, a kill or an
upgrade of ctfsd is only a pause for the readers.  SIGTERM and SIGINT stop (the
keeper unmounts), SIGHUP upgrades in place (ctfs.endings).

Exit statuses (documented in ctfsd(8)): 0 clean shutdown, 1 unexpected error,
2 bad usage, 3 not root, 4 FUSE unavailable, 5 mount point unusable or busy,
6 storage or cgroups unusable.
"""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import trio

from ctfs import __version__, endings, keeper_link
from ctfs.fs.operations import CtfsOperations
from ctfs.fs.takeover import TakeoverError, take_over
from ctfs.kernel import backends, cgroup_mode, libc, storage
from ctfs.kernel.api import Cgroups, PeerLinks
from ctfs.kernel.templates import TemplateStore
from ctfs.model.host import Host
from ctfs.model.peer_service import PeerService
from ctfs.model.peers import PeerBook, default_name, route_source_address
from ctfs.policy.peers import DEFAULT_PORT, PeerError, parse_endpoint

log = logging.getLogger("ctfsd")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_ROOT, EXIT_NO_FUSE, EXIT_MOUNTPOINT, EXIT_STORAGE = range(
    7
)


class StartupError(Exception):
    def __init__(self, status: int, sentence: str) -> None:
        super().__init__(sentence)
        self.status = status


def _absolute(text: str) -> Path:
    # ctfsd changes to / before serving, so relative paths are resolved first.
    return Path(text).absolute()


def _storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--template-cache",
        default=Path("/var/cache/ctfs/templates"),
        type=_absolute,
        help="template tarballs to import (default /var/cache/ctfs/templates)",
    )
    parser.add_argument(
        "--default-template", default="busybox", help="template of new containers (default busybox)"
    )
    parser.add_argument(
        "--cgroup-parent", default="ctfs", help="parent cgroup of all containers (default ctfs)"
    )
    parser.add_argument(
        "--pool-size",
        default="64G",
        help="size of the sparse btrfs image made when the state directory "
        "is not on btrfs (default 64G)",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ctfsd", description="Serve OpenVZ-style containers as a filesystem."
    )
    parser.add_argument(
        "mountpoint",
        nargs="?",
        default="/ctfs",
        type=_absolute,
        help="where to mount (default /ctfs)",
    )
    parser.add_argument(
        "--state-dir",
        default=Path("/var/lib/ctfs"),
        type=_absolute,
        help="containers, templates and settings (default /var/lib/ctfs)",
    )
    _storage_options(parser)
    parser.add_argument(
        "--stop-timeout",
        default=30.0,
        type=float,
        help="seconds a graceful stop may take before the container is killed (default 30)",
    )
    parser.add_argument(
        "--criu",
        type=_absolute,
        default=None,
        help="the CRIU binary for checkpoints (default /opt/ctfs/criu/sbin/criu, "
        "as tools/setup builds it, else criu on PATH)",
    )
    parser.add_argument(
        "--uplink",
        default="auto",
        help="interface that answers ARP/NDP for container addresses: a name, "
        "auto (the interfaces of the default routes, the default) or none",
    )
    parser.add_argument(
        "--peer-name",
        default=None,
        help="this host's name for its peers (default: its host name's first label)",
    )
    parser.add_argument(
        "--peer-address",
        default=None,
        help="ADDRESS[:PORT] its peers reach it at (default: the source address of its "
        f"default route, port {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--migrate-memory",
        choices=("post-copy", "stop-and-copy"),
        default="post-copy",
        help="how a running container's memory moves to a peer: after the restore there, "
        "fetched as it is touched (post-copy, the default: the frozen time does not grow "
        "with its memory), or with its dump (stop-and-copy)",
    )
    parser.add_argument(
        "--foreground", "-f", action="store_true", help="stay in the foreground and log to stderr"
    )
    parser.add_argument(
        "--log-file",
        type=_absolute,
        default=Path("/var/log/ctfsd.log"),
        help="log file when in the background (default /var/log/ctfsd.log)",
    )
    parser.add_argument("--debug", action="store_true", help="log every request")
    parser.add_argument("--version", action="version", version=f"ctfsd {__version__}")
    return parser.parse_args(argv)


def _is_stale_fuse_mount(path: Path) -> bool:
    # statfs always reaches the FUSE daemon (stat may be answered from the cache).
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def check_mountpoint(path: Path) -> None:
    """Make ``path`` usable: create it, or lazily unmount a dead ctfsd's mount."""
    if _is_stale_fuse_mount(path):
        # A ctfsd that was killed leaves "transport endpoint is not connected".
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        log.info("unmounted the stale mount at %s left by a previous ctfsd", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            EXIT_MOUNTPOINT, f"cannot create mount point {path}: {exc.strerror}"
        ) from exc
    if not path.is_dir():
        raise StartupError(EXIT_MOUNTPOINT, f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise StartupError(EXIT_MOUNTPOINT, f"{path} is busy: something is already mounted there")


def take_mount(args: argparse.Namespace) -> keeper_link.Held:
    """The mount's FUSE connection, from its keeper or from one started for it now."""
    # In the background the keeper logs where ctfsd will (it outlives this terminal).
    keeper_log = (
        None
        if args.foreground
        else os.open(args.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    )
    try:
        return keeper_link.take_or_start(
            args.mountpoint, lambda: check_mountpoint(args.mountpoint), keeper_log
        )
    except keeper_link.KeeperBusy as exc:
        raise StartupError(EXIT_MOUNTPOINT, f"{args.mountpoint} is busy: {exc}") from exc
    except (keeper_link.KeeperFailed, OSError) as exc:
        raise StartupError(EXIT_NO_FUSE, f"cannot mount {args.mountpoint}: {exc}") from exc
    finally:
        if keeper_log is not None:
            os.close(keeper_log)


def prepare(args: argparse.Namespace) -> tuple[Cgroups, keeper_link.Held]:
    if os.geteuid() != 0:
        raise StartupError(
            EXIT_NOT_ROOT, "ctfsd must run as root: it creates namespaces, cgroups and mounts"
        )
    if not os.path.exists("/dev/fuse"):
        raise StartupError(
            EXIT_NO_FUSE,
            "/dev/fuse does not exist: load the fuse module "
            "(modprobe fuse) or give the machine FUSE",
        )
    held = take_mount(args)
    try:
        return _prepare_storage(args), held
    except StartupError:
        if held.fresh:
            held.stop()  # a new mount nobody will serve would only make its readers wait
        raise


def _prepare_storage(args: argparse.Namespace) -> Cgroups:
    try:
        how = storage.ensure_pool(args.state_dir, args.pool_size)
        log.info("storage: %s", how)
        device = storage.pool_device(args.state_dir)
        if device is not None:
            log.info("storage: %s", storage.use_bfq(device))
        TemplateStore(args.state_dir).import_cache(args.template_cache)
    except (OSError, storage.StorageError) as exc:
        raise StartupError(EXIT_STORAGE, f"storage unusable: {exc}") from exc
    try:
        mode, cgroups = cgroup_mode.backend(args.cgroup_parent)
        log.info("cgroups: %s hierarchy; using the %s backend", mode, type(cgroups).__name__)
        return cgroups
    except (OSError, RuntimeError) as exc:
        raise StartupError(EXIT_STORAGE, f"cgroups unusable: {exc}") from exc


async def serve(
    args: argparse.Namespace, cgroups: Cgroups, held: keeper_link.Held, ready: int | None
) -> str:
    host = Host(
        backends.real(args.state_dir, cgroups, args.uplink, args.criu),
        args.state_dir,
        default_template=args.default_template,
        stop_timeout=args.stop_timeout,
        mountpoint=args.mountpoint,
    )
    # openssl, at the first start only: ~20 ms.
    host.peers = await trio.to_thread.run_sync(_peer_book, args, host.backends.peer_links)
    host.post_copy = args.migrate_memory == "post-copy"
    operations = CtfsOperations(host)
    try:
        session, first = take_over(operations, held.fuse_fd, held.init_request, args.debug)
    except (TakeoverError, OSError) as exc:
        if held.fresh:
            held.stop()
        raise StartupError(EXIT_NO_FUSE, f"cannot serve {args.mountpoint}: {exc}") from exc
    ending = endings.Ending(session.terminate)
    try:
        async with trio.open_nursery() as nursery:
            host.start(nursery)
            # What startup made lives as long as ctfsd: out of the collector's way, so
            # that its full passes stay short (with 1000 containers a read of
            # /ctfs/beancounters took 0.47 s at the median, 0.51-0.56 s at p90; full
            # collections were the likely cause of the tail).
            gc.freeze()
            log.info(
                "ctfsd %s serving %s (state in %s, %d containers%s)",
                __version__,
                args.mountpoint,
                args.state_dir,
                len(host.containers),
                "" if first else "; took the connection over",
            )
            if ready is not None:
                os.write(ready, b"ready\n")
                os.close(ready)
            nursery.start_soon(endings.on_signals, nursery.cancel_scope, ending)
            nursery.start_soon(_watch_keeper, held)
            if host.peers is not None:
                service = PeerService(host.peers, args.state_dir)
                host.serve_peers(service)
                nursery.start_soon(service.run)
            # serve() returns once an upgrade's requests are answered, or the mount went.
            await session.serve()
            nursery.cancel_scope.cancel()
    finally:
        session.close()  # the keeper unmounts, or keeps the mount for the next ctfsd
        running = host.running_count()
        host.close()
    if ending.how == endings.STOP and running:
        # Their views inside (/ctfs/CTID, /proc/meminfo...) are binds of this mount:
        # unmounting would leave them failing with ENOTCONN until they restart.
        log.info(
            "%d containers run and see themselves through %s: the keeper keeps it for "
            "the next ctfsd (stop the keeper to drop it: see ctfsd(8))",
            running,
            args.mountpoint,
        )
        return endings.KEEP
    return ending.how


def _peer_book(args: argparse.Namespace, links: PeerLinks) -> PeerBook | None:
    """This host's identity and peers; None (logged) when it cannot have them."""
    try:
        address, port = parse_endpoint(args.peer_address or route_source_address())
        name = args.peer_name or default_name()
        return PeerBook(links, args.state_dir, name, address, port)
    except (OSError, PeerError) as exc:
        log.error("peers: no identity, so no migration: %s", exc)
        return None


async def _watch_keeper(held: keeper_link.Held) -> None:
    await held.keeper_gone()
    log.warning(
        "the keeper (PID %d) is gone, killed or because the mount was removed: a crash of "
        "ctfsd would now end the mount; restart ctfsd (stop, start) to get a keeper again",
        held.keeper_pid,
    )


def _daemonize(log_file: Path) -> int:
    """Fork into the background; the parent exits once the child says it is ready."""
    read_end, write_end = os.pipe()
    if os.fork() != 0:
        os.close(write_end)
        answer = os.read(read_end, 64)
        if answer.startswith(b"ready"):
            os._exit(EXIT_OK)
        status = int(answer.decode() or EXIT_ERROR) if answer.strip().isdigit() else EXIT_ERROR
        os._exit(status)
    os.close(read_end)
    os.setsid()
    log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    return write_end


def _raise_file_limit() -> None:
    """ctfsd holds a descriptor per running container (its init's pidfd), and more
    while it reads them: systemd's default soft limit of 1024 would fail it near 1000
    containers.  The hard limit is ours to take."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _end(
    how: str, held: keeper_link.Held, args: argparse.Namespace, again: tuple[str, list[str]]
) -> int:
    if how == endings.UPGRADE:
        error = endings.reexecute(again)
        # The keeper holds the mount: the next ctfsd started takes it over.
        log.error("cannot re-execute %s: %s", again[1][0], error)
        return EXIT_ERROR
    if how == endings.KEEP:
        held.leave()
        return EXIT_OK
    if how == endings.STOP:
        if held.stop():
            log.info("unmounted %s; containers keep running", args.mountpoint)
        else:
            log.warning("the keeper did not confirm the unmount of %s", args.mountpoint)
    else:
        log.info(
            "%s was unmounted or its connection aborted; containers keep running", args.mountpoint
        )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    again = endings.command_line(argv)
    args = parse_args(argv)
    upgrading = endings.upgrading()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s ctfsd[%(process)d] %(levelname)s %(message)s",
    )
    endings.catch_early_signals()
    ready: int | None = None
    try:
        cgroups, held = prepare(args)
        if not args.foreground and not upgrading:
            ready = _daemonize(args.log_file)
        # Hold no directory busy.
        os.chdir("/")
        # Orphaned container inits become our children, so we can reap them.
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
        _raise_file_limit()
        how = trio.run(serve, args, cgroups, held, ready)
    except StartupError as exc:
        print(f"ctfsd: {exc}", file=sys.stderr)
        if ready is not None:
            os.write(ready, str(exc.status).encode())
        return exc.status
    except KeyboardInterrupt:
        return EXIT_OK
    return _end(how, held, args, again)


if __name__ == "__main__":
    sys.exit(main())
