"""Checkpoints: freeze into the dump file, restore from it, and the dump upload.

Invariants:
- A failed freeze leaves the container running as it was; a failed restore leaves
  it frozen with its dump file untouched and nothing of the attempt running.
- The dump file is always either absent, the old one or a complete new one.
- A dump this ctfsd wrote or verified, unchanged since (``stamp``), is not hashed
  again, and CRIU's images of it are kept beside it (``KEPT_IMAGES``): on btrfs
  they share their extents with the dump file, and a restore runs straight from
  them, still in the page cache.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import trio

from ctfs.errors import CtfsError, busy, kernel_failed
from ctfs.kernel.api import Checkpointer, CriuDump, CriuError, CriuRestore, LazyPages
from ctfs.model import containment, criu_logs, dumpfile, lifecycle, own_cgroups, views
from ctfs.model.container import Container, InitProcess
from ctfs.policy import idmap

log = logging.getLogger(__name__)

# Stopping every process for a checkpoint; a D-state task may take a moment.
FREEZE_TIMEOUT_S = 10.0
# A freeze that caught a reader of ctfs inside is tried again this often, this long
# apart (0.5 s in all): a cat holds its file for about a millisecond.
FREEZE_TRIES, FREEZE_RETRY_S = 25, 0.02
# CRIU runs with a time limit: a damaged image can make it wait forever.
CRIU_TIMEOUT_S = 300.0
KEPT_IMAGES = ".frozen-images"
SCRATCH = (".criu-images", ".criu-work")


def stamp(path: Path) -> tuple[int, ...] | None:
    """What changes whenever a file's contents may have: device, inode, size, times."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


async def checkpointer(ct: Container) -> Checkpointer:
    await ct.ctx.checkpoints_probed.wait()
    engine = ct.backends.checkpointer
    if engine.unavailable is not None:
        raise CtfsError(errno.EOPNOTSUPP, f"checkpoints are unavailable: {engine.unavailable}")
    return engine


# ------------------------------------------------------------------ freeze


async def freeze(ct: Container) -> None:
    """Checkpoint into the dump file and end the processes; or change nothing."""
    engine = await checkpointer(ct)
    init = ct.init
    assert init is not None
    cgroups = ct.backends.cgroups
    sessions = await trio.to_thread.run_sync(
        ct.backends.processes.outside_pid_namespace, init.pid, cgroups.pids(ct.ctid)
    )
    if sessions:
        raise busy(
            "ctfs exec or enter is running in the container (host PID "
            f"{', '.join(map(str, sessions))}); end it first"
        )
    images, work = await trio.to_thread.run_sync(scratch, ct)
    ran = views.uptime(ct)
    began = time.monotonic()
    try:
        await freeze_between_reads(ct)
    except (OSError, TimeoutError) as exc:
        await trio.to_thread.run_sync(cgroups.thaw, ct.ctid)
        await trio.to_thread.run_sync(drop_scratch, ct)
        raise kernel_failed(f"cannot freeze the container: {exc}") from exc
    frozen_at = time.monotonic()
    await dump(ct, engine, init, images, work)
    dumped_at = time.monotonic()
    # CRIU ended the processes once their state was on disk.
    with trio.move_on_after(10):
        await init.exited.wait()
    if not init.exited.is_set():
        await trio.to_thread.run_sync(cgroups.kill_all, ct.ctid)
        await init.exited.wait()
    info = manifest_info(ct, engine.version, ran) | await own_cgroups.record(ct)
    try:
        size = await trio.to_thread.run_sync(dumpfile.pack, images, ct.dump_path, info)
    except OSError as exc:
        await _recover_from_unwritten_dump(ct, init, images, work, info, exc)
    ct.frozen = True
    ct.dump_stamp = stamp(ct.dump_path)
    await lifecycle.finish_stop(ct, init, network=False)
    await forget_link(ct)
    await trio.to_thread.run_sync(_keep_images, ct, images)
    await trio.to_thread.run_sync(drop_scratch, ct)
    written = time.monotonic()
    ct.events.record(
        f"frozen: freeze {(frozen_at - began) * 1000:.0f} ms, dump "
        f"{(dumped_at - frozen_at) * 1000:.0f} ms, dump file {size} bytes written and "
        f"synced in {(written - dumped_at) * 1000:.0f} ms"
    )


async def freeze_between_reads(ct: Container) -> None:
    """Freeze the container, at a moment none of its processes holds a file of ctfs
    open if one comes soon.

    CRIU re-opens such a file at restore and refuses it if its size changed, which
    a view's may have (a reader of /proc/meminfo caught in the middle).  A reader
    like cat holds its file for a millisecond; one like top for good, and is dumped
    as it is (its views' sizes rarely change: see ctfs.fs.attributes).
    """
    cgroups = ct.backends.cgroups
    for _ in range(FREEZE_TRIES):
        await trio.to_thread.run_sync(cgroups.freeze, ct.ctid, FREEZE_TIMEOUT_S)
        if not ct.ctx.open_inside(ct.ctid):
            return
        await trio.to_thread.run_sync(cgroups.thaw, ct.ctid)
        await trio.sleep(FREEZE_RETRY_S)
    await trio.to_thread.run_sync(cgroups.freeze, ct.ctid, FREEZE_TIMEOUT_S)


async def dump(
    ct: Container,
    engine: Checkpointer,
    init: InitProcess,
    images: Path,
    work: Path,
    lazy: LazyPages | None = None,
    on_images: Callable[[], None] | None = None,
    may_resume: Callable[[], bool] = lambda: True,
) -> None:
    """Run CRIU on the frozen container; if it fails, the container runs on as it was
    (unless ``may_resume()`` says no by then: it stays frozen).

    ``lazy``: serve the memory pages to a target instead of writing them
    (``ctfs.model.postcopy``); ``on_images`` is called (from a thread) once the
    other images are written.
    """
    # CRIU 4.2.1 cannot re-create a veth for a restore in a user namespace on this
    # kernel (its user-namespace daemon's link request is refused, EOPNOTSUPP).  So
    # a private container's veth goes before the dump and ctfs makes it anew while
    # CRIU restores; its sockets keep their addresses, and packets meanwhile are
    # retransmitted.  Routes it added to eth0 itself are lost.
    private = idmap.base_of(ct.settings) is not None
    unlinked = private and bool(ct.addresses)
    if unlinked:
        await forget_link(ct)
    options = CriuDump(
        pid=init.pid,
        images=images,
        work=work,
        cgroups=ct.backends.cgroups.criu_options(ct.ctid),
        veth=ct.backends.network.veth(ct.ctid) if ct.addresses and not unlinked else None,
        timeout=CRIU_TIMEOUT_S,
        id_base=idmap.base_of(ct.settings),
        views=tuple(inside for inside, _ in views.restore_views(ct)),
        lazy=lazy,
    )
    try:
        await trio.to_thread.run_sync(engine.dump, options, lambda: None, on_images)
    except CriuError as exc:
        kept = await trio.to_thread.run_sync(criu_logs.keep, ct, exc, "dump")
        if not may_resume():
            raise kernel_failed(f"checkpoint failed: {exc}{kept}") from exc
        await _recover_from_failed_dump(ct, init, relink=unlinked)
        raise kernel_failed(f"checkpoint failed, the container runs on: {exc}{kept}") from exc


def manifest_info(ct: Container, criu_version: str, ran: float) -> dict[str, object]:
    return {
        # Seconds it had run: the restored container's uptime goes on from there.
        views.UPTIME_KEY: round(ran, 2),
        "ctid": ct.ctid,
        "cgroup_parent": ct.backends.cgroups.parent,
        "criu": criu_version,
        "template": ct.template_name,
        "hostname": ct.hostname,
        "addresses": [str(a) for a in ct.addresses],
    }


async def _recover_from_failed_dump(ct: Container, init: InitProcess, relink: bool = False) -> None:
    """After CRIU failed or was killed: the container runs on as it was.

    ``relink``: its veth was removed for the dump; it is made anew.
    """
    cgroups = ct.backends.cgroups
    if relink and not init.exited.is_set():
        try:
            await trio.to_thread.run_sync(lifecycle.configure_network, ct, init.pid)
        except OSError as exc:
            ct.events.record(f"its network could not be made anew: {exc}", logging.ERROR)
    await trio.to_thread.run_sync(cgroups.thaw, ct.ctid)
    if not init.exited.is_set():
        try:
            await trio.to_thread.run_sync(ct.backends.checkpointer.remove_network_lock, init.pid)
        except Exception as exc:  # the container runs; say what may be left
            ct.events.record(f"cannot check for CRIU's network lock: {exc}", logging.ERROR)
    await trio.to_thread.run_sync(drop_scratch, ct)
    if init.exited.is_set():
        # It did not survive the attempt: clean up as for any stop.
        await lifecycle.finish_stop(ct, init)
        ct.events.record("the failed checkpoint ended the container", logging.ERROR)


async def _recover_from_unwritten_dump(
    ct: Container,
    init: InitProcess,
    images: Path,
    work: Path,
    info: dict[str, object],
    error: OSError,
) -> NoReturn:
    """The dump file could not be written, but CRIU's images are on disk: bring the
    container back from them.  Always raises, saying how it ended."""
    # CRIU recreates the veth, so the old host end must be gone first.
    await lifecycle.finish_stop(ct, init, network=False)
    await forget_link(ct)
    try:
        await _restore_from(ct, images, work, dumpfile.Manifest(info, {}))
    except CtfsError as again:
        await lifecycle.remove_network(ct)
        # Out of the scratch directory, which the next checkpoint empties.
        saved = ct.dir / f".failed-images-{int(time.time())}"
        await trio.to_thread.run_sync(images.rename, saved)
        raise kernel_failed(
            f"cannot write the dump file ({error}) nor restore from the images "
            f"({again.sentence}); they are kept in {saved}"
        ) from error
    await trio.to_thread.run_sync(drop_scratch, ct)
    raise kernel_failed(f"cannot write the dump file ({error}); the container runs on") from error


async def forget_link(ct: Container) -> None:
    try:
        await trio.to_thread.run_sync(ct.backends.network.remove_link, ct.ctid)
    except OSError as exc:
        ct.events.record(f"cannot remove the veth: {exc}", logging.ERROR)


# ----------------------------------------------------------------- restore


async def restore(ct: Container, lazy: LazyPages | None = None) -> None:
    """Bring a frozen container back from its dump file; or change nothing.

    ``lazy``: its memory pages come from a source's page server (a post-copy move);
    the scratch directories then stay for ``postcopy.await_pages``.
    """
    await checkpointer(ct)
    if ct.backends.cgroups.pids(ct.ctid):
        raise kernel_failed("the container's cgroup still holds processes; not restoring")
    images, work = await trio.to_thread.run_sync(scratch, ct)
    verified = ct.dump_stamp is not None and ct.dump_stamp == stamp(ct.dump_path)
    kept = ct.dir / KEPT_IMAGES
    try:
        try:
            if verified and kept.is_dir():
                manifest = await trio.to_thread.run_sync(
                    dumpfile.read_manifest, ct.dump_path, False
                )
                images = kept
            else:
                manifest = await trio.to_thread.run_sync(
                    dumpfile.unpack, ct.dump_path, images, not verified
                )
        except dumpfile.DumpError as exc:
            raise kernel_failed(f"the dump file is refused: {exc}") from exc
        except OSError as exc:
            raise kernel_failed(f"cannot read the dump file: {exc}") from exc
        await _restore_from(ct, images, work, manifest, lazy)
    except BaseException:
        await trio.to_thread.run_sync(drop_scratch, ct)
        raise
    if lazy is None:
        await trio.to_thread.run_sync(drop_scratch, ct)
    await trio.to_thread.run_sync(drop_kept, ct)
    try:
        await trio.to_thread.run_sync(ct.dump_path.unlink)
    except OSError as exc:
        ct.events.record(f"cannot remove the used dump file: {exc}", logging.ERROR)
    ct.frozen = False


async def _restore_from(
    ct: Container,
    images: Path,
    work: Path,
    manifest: dumpfile.Manifest,
    lazy: LazyPages | None = None,
) -> None:
    """Run CRIU on ``images``; on failure nothing of the attempt is left running."""
    began = time.monotonic()
    cgroups = ct.backends.cgroups
    await lifecycle.prepare_cgroups(ct)
    subtree_controls = await own_cgroups.remake(ct, manifest)
    addresses = ct.addresses
    private = idmap.base_of(ct.settings) is not None
    options = CriuRestore(
        images=images,
        work=work,
        root=ct.root,
        cgroups=cgroups.criu_options(ct.ctid),
        veth=ct.backends.network.veth(ct.ctid) if addresses else None,
        addresses=tuple(str(a) for a in addresses),
        # A private container's veth is made by ctfs while CRIU restores (see freeze).
        make_veth=private,
        timeout=CRIU_TIMEOUT_S,
        same_cgroups=(
            manifest.info.get("ctid") == ct.ctid
            and manifest.info.get("cgroup_parent") == cgroups.parent
        ),
        id_base=idmap.base_of(ct.settings),
        views=views.restore_views(ct),
        subtree_controls=subtree_controls,
        lazy=lazy,
    )
    try:
        pid = await trio.to_thread.run_sync(
            ct.backends.checkpointer.restore, options, lambda: cgroups.kill_all(ct.ctid)
        )
        tree = await trio.to_thread.run_sync(containment.checked_tree, ct, pid)
    except (CriuError, CtfsError) as exc:
        kept = ""
        if isinstance(exc, CriuError):
            kept = await trio.to_thread.run_sync(criu_logs.keep, ct, exc, "restore")
        else:
            await trio.to_thread.run_sync(containment.kill_tree, ct, pid)
        await trio.to_thread.run_sync(cgroups.kill_all, ct.ctid)
        await lifecycle.clean_up_cgroups(ct)
        await forget_link(ct)
        raise kernel_failed(f"restore failed, the container stays frozen: {exc}{kept}") from exc
    _carry_uptime(ct, manifest)
    if addresses:
        # Before it runs: its first packets (a restored connection's retransmission)
        # would meet no source-filter entry and no route on a host new to it (a
        # migration's target), and wait out its retransmission timeout (~1 s).
        try:
            await trio.to_thread.run_sync(lifecycle.configure_network, ct, pid)
        except OSError as exc:
            ct.events.record(f"restored, but its network is incomplete: {exc}", logging.ERROR)
    ct.backends.processes.resume(tree)
    lifecycle.adopt(ct, pid)
    ms = (time.monotonic() - began) * 1000
    ct.events.record(f"restored: init is PID {pid} on the host ({ms:.0f} ms)")


def _carry_uptime(ct: Container, manifest: dumpfile.Manifest) -> None:
    ran = manifest.info.get(views.UPTIME_KEY)
    if not isinstance(ran, int | float) or ran < 0:
        return  # a dump of an older ctfs: its uptime begins again
    try:
        ct.persist(**{views.UPTIME_KEY: f"{ran:.2f}"})
    except OSError as exc:
        ct.events.record(f"cannot save ctid.conf: {exc}; uptime begins again", logging.ERROR)


async def discard(ct: Container) -> None:
    """A frozen container becomes stopped: its dump file goes."""
    await trio.to_thread.run_sync(drop_kept, ct)
    # Already gone (removed by hand) is as good as discarded.
    await trio.to_thread.run_sync(lambda: ct.dump_path.unlink(missing_ok=True))
    ct.frozen = False
    await lifecycle.remove_network(ct)
    ct.events.record("stopped: the dump file was discarded")


def drop_used_dump(ct: Container) -> None:
    """A running container's dump was used by a restore ctfsd did not see through."""
    if ct.frozen:
        log.warning("CT %d: runs, so its dump file was used; removing it", ct.ctid)
        with contextlib.suppress(FileNotFoundError):
            ct.dump_path.unlink()
        ct.frozen = False
    drop_scratch(ct)
    drop_kept(ct)


# ---------------------------------------------------------------- scratch


def scratch(ct: Container) -> tuple[Path, Path]:
    """Empty directories for CRIU's images and its work files (logs, pidfile)."""
    images, work = (ct.dir / name for name in SCRATCH)
    for path in (images, work):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700)
    return images, work


def drop_scratch(ct: Container) -> None:
    for name in SCRATCH:
        shutil.rmtree(ct.dir / name, ignore_errors=True)


def _keep_images(ct: Container, images: Path) -> None:
    drop_kept(ct)
    images.rename(ct.dir / KEPT_IMAGES)


def drop_kept(ct: Container) -> None:
    shutil.rmtree(ct.dir / KEPT_IMAGES, ignore_errors=True)
