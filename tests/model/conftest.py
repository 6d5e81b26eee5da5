"""Model tier: the container model against the real kernel, without a FUSE mount.

``model_host`` is a ``ctfs.model.host.Host`` built as ctfsd builds it (real
backends, its own btrfs pool and cgroup parent), and ``run`` drives it inside
trio for the length of one scenario.  Everything it made goes afterwards: its
containers (stopped through the model, or killed through their cgroups), the
cgroup parent, the pool and the temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from ctfs.kernel import backends, cgroup_mode, storage
from ctfs.kernel.templates import TemplateStore
from ctfs.model import lifecycle
from ctfs.model.container import State
from ctfs.model.host import Host
from tests.ctfsd_harness import SYSTEM_TEMPLATE_CACHE, remove_cgroup_trees

Scenario = Callable[[Host], Awaitable[None]]


class ModelBed:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="ctfs-model-"))
        self.state = self.base / "state"
        self.parent = f"ctfs-model-{os.getpid()}-{self.base.name[-4:]}"
        storage.ensure_pool(self.state, "2G")
        # Only busybox: the system cache may hold the Debian templates too (500 MB).
        cache = self.base / "templates"
        cache.mkdir()
        for suffix in (".tar.gz", ".conf"):
            (cache / f"busybox{suffix}").symlink_to(SYSTEM_TEMPLATE_CACHE / f"busybox{suffix}")
        TemplateStore(self.state).import_cache(cache)
        _, self.cgroups = cgroup_mode.backend(self.parent)

    def host(self) -> Host:
        made = backends.real(self.state, self.cgroups, "none", None)
        return Host(made, self.state, stop_timeout=3.0)

    def run(self, scenario: Scenario) -> None:
        """Serve a fresh Host for ``scenario``; stop and destroy its containers after."""

        async def main() -> None:
            host = self.host()
            async with trio.open_nursery() as nursery:
                host.start(nursery)
                try:
                    await scenario(host)
                finally:
                    with trio.CancelScope(shield=True):
                        await _tear_down(host)
                    host.close()
                    nursery.cancel_scope.cancel()

        trio.run(main)

    def cleanup(self) -> None:
        for ctid in self.cgroups.populated():
            with contextlib.suppress(OSError):
                self.cgroups.kill_all(ctid)
        remove_cgroup_trees(self.parent)
        subprocess.run(["umount", "-l", str(self.state)], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


async def _tear_down(host: Host) -> None:
    for ctid in host.sorted_ctids():
        container = host.containers[ctid]
        if container.state is State.RUNNING:
            async with container.changing(State.STOPPING):
                await lifecycle.stop(container)
        if container.state is State.STOPPED:
            await host.destroy(ctid)


@pytest.fixture(scope="session")
def model_bed() -> Iterator[ModelBed]:
    bed = ModelBed()
    try:
        yield bed
    finally:
        bed.cleanup()


@pytest.fixture
def run(model_bed: ModelBed) -> Callable[[Scenario], None]:
    return model_bed.run
