"""Post-copy moves.  The source's side: frozen, dumped without its memory pages,
and serving them to the target until it has them all (``checkpoint.dump`` with
``lazy``).  The target's side: ``checkpoint.restore`` with ``lazy``, then
``await_pages``.

Invariants:
- Until ``commit``, ``abort`` ends CRIU and the container runs on here as after
  any failed dump (its cgroup thawed, CRIU's network lock gone).
- After ``commit`` nothing here thaws it again: its processes end when CRIU has
  served every page, or stay frozen (with all their memory) if the transfer
  broke, so that the container never runs twice.
"""

from __future__ import annotations

import logging
import time

import trio

from ctfs.errors import CtfsError, busy, kernel_failed
from ctfs.kernel.api import CriuError, LazyPages
from ctfs.model import checkpoint, criu_logs, dumpfile, lifecycle, own_cgroups, views
from ctfs.model.container import Container

log = logging.getLogger(__name__)


class ServingDump:
    """A container frozen for a post-copy move; see the module's invariants."""

    def __init__(self, ct: Container, lazy: LazyPages) -> None:
        self.ct = ct
        self.lazy = lazy
        self.images_written = trio.Event()
        self.done = trio.Event()
        self.error: CtfsError | None = None
        self.committed = False
        # Bytes of memory served after the restore (CRIU's count), once finished.
        self.served = 0

    async def start(self, nursery: trio.Nursery) -> None:
        """Freeze, dump, and pack the images into the dump file; returns with CRIU
        serving the pages.  A failure raises with the container running on."""
        ct = self.ct
        engine = await checkpoint.checkpointer(ct)
        init = ct.init
        assert init is not None
        cgroups = ct.backends.cgroups
        sessions = await trio.to_thread.run_sync(
            ct.backends.processes.outside_pid_namespace, init.pid, cgroups.pids(ct.ctid)
        )
        if sessions:
            raise busy("ctfs exec or enter is running in the container; end it first")
        self.images, self.work = await trio.to_thread.run_sync(checkpoint.scratch, ct)
        ran = views.uptime(ct)
        began = time.monotonic()
        try:
            await checkpoint.freeze_between_reads(ct)
        except (OSError, TimeoutError) as exc:
            await trio.to_thread.run_sync(cgroups.thaw, ct.ctid)
            await trio.to_thread.run_sync(checkpoint.drop_scratch, ct)
            raise kernel_failed(f"cannot freeze the container: {exc}") from exc
        frozen_at = time.monotonic()
        token = trio.lowlevel.current_trio_token()

        def on_images() -> None:
            token.run_sync_soon(self.images_written.set)

        async def dumping() -> None:
            try:
                await checkpoint.dump(
                    ct,
                    engine,
                    init,
                    self.images,
                    self.work,
                    self.lazy,
                    on_images,
                    may_resume=lambda: not self.committed,
                )
            except CtfsError as exc:
                self.error = exc
            finally:
                self.done.set()

        nursery.start_soon(dumping)
        async with trio.open_nursery() as first:
            first.start_soon(_set_when, self.done, first.cancel_scope)
            first.start_soon(_set_when, self.images_written, first.cancel_scope)
        if not self.images_written.is_set():
            assert self.error is not None
            raise self.error
        dumped_at = time.monotonic()
        info = checkpoint.manifest_info(ct, engine.version, ran) | await own_cgroups.record(ct)
        try:
            size = await trio.to_thread.run_sync(dumpfile.pack, self.images, ct.dump_path, info)
        except OSError as exc:
            await self.abort()
            raise kernel_failed(f"cannot write the dump file: {exc}") from exc
        ct.events.record(
            f"migration: frozen: freeze {(frozen_at - began) * 1000:.0f} ms, dump without its "
            f"memory {(dumped_at - frozen_at) * 1000:.0f} ms, dump file {size} bytes written "
            f"in {(time.monotonic() - dumped_at) * 1000:.0f} ms"
        )

    async def abort(self) -> None:
        """Before the commit: end CRIU; the container runs on here."""
        assert not self.committed
        await trio.to_thread.run_sync(self.ct.backends.checkpointer.stop_dump, self.images)
        await self.done.wait()
        await trio.to_thread.run_sync(lambda: self.ct.dump_path.unlink(missing_ok=True))

    def commit(self) -> None:
        self.committed = True

    async def finish(self) -> None:
        """After the commit: wait until every page was served; the processes end."""
        ct = self.ct
        await self.done.wait()
        self.served = await trio.to_thread.run_sync(
            ct.backends.checkpointer.lazy_bytes, self.images
        )
        init = ct.init
        if self.error is not None or init is None:
            ct.events.record(
                f"serving its memory to the target failed: {self.error}; its processes "
                "stay frozen here with all their memory",
                logging.ERROR,
            )
            return
        with trio.move_on_after(10):
            await init.exited.wait()
        if not init.exited.is_set():
            await trio.to_thread.run_sync(ct.backends.cgroups.kill_all, ct.ctid)
        await lifecycle.finish_stop(ct, init, network=False)
        await checkpoint.forget_link(ct)
        await trio.to_thread.run_sync(checkpoint.drop_scratch, ct)


async def await_pages(ct: Container) -> None:
    """After a lazy restore: once every memory page arrived, the scratch goes.  If
    the transfer failed, the restored processes cannot go on: they are ended."""
    work = ct.dir / checkpoint.SCRATCH[1]
    try:
        await trio.to_thread.run_sync(
            ct.backends.checkpointer.await_pages, work, checkpoint.CRIU_TIMEOUT_S
        )
    except CriuError as exc:
        kept = await trio.to_thread.run_sync(criu_logs.keep, ct, exc, "lazy-pages")
        ct.events.record(
            f"its memory did not all arrive ({exc}{kept}); the container is ended here, "
            "its source keeps what it had",
            logging.ERROR,
        )
        await trio.to_thread.run_sync(ct.backends.cgroups.kill_all, ct.ctid)
    finally:
        await trio.to_thread.run_sync(checkpoint.drop_scratch, ct)


async def _set_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
