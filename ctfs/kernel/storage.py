"""Private areas and templates on btrfs.

The state directory must be on btrfs so that a private area is a subvolume
snapshotted from its template (instant, whatever the template's size) and, later,
carries a quota group.  When the state directory is on another filesystem, ctfsd
keeps a sparse btrfs image file in it and loop-mounts that image over the state
directory itself, so the on-disk layout is the same either way.

Invariant: nothing here follows a path chosen by a container; every path is built
from a CTID or a template name that ctfs validated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from ctfs.kernel import etcfiles
from ctfs.kernel.api import Disk, StorageError

BTRFS_SUPER_MAGIC = 0x9123683E
POOL_IMAGE = ".ctfs-pool.img"

__all__ = ["BtrfsStorage", "StorageError", "ensure_pool", "pool_device", "run_tool", "use_bfq"]


def run_tool(
    argv: Sequence[str], error: Callable[[str], Exception] = StorageError
) -> subprocess.CompletedProcess[str]:
    """Run a storage tool (btrfs, mkfs, mount...); ``error(reason)`` if it fails.

    The reason is the tool's last line of output, without btrfs's "ERROR: ".
    """
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise error(f"{argv[0]} is not installed") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        reason = detail[-1].removeprefix("ERROR: ") if detail else f"exit status {done.returncode}"
        raise error(f"{' '.join(argv[:3])}: {reason}")
    return done


def _run(*argv: str) -> str:
    return run_tool(argv).stdout


def is_btrfs(path: Path) -> bool:
    """True when ``path`` lives on a btrfs filesystem."""
    out = _run("stat", "-f", "-c", "%t", str(path))
    return int(out.strip(), 16) == BTRFS_SUPER_MAGIC


def ensure_pool(state_dir: Path, image_size: str) -> str:
    """Make ``state_dir`` a btrfs filesystem; return how (for the startup log)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if is_btrfs(state_dir):
        return f"{state_dir} is on btrfs"
    image = state_dir / POOL_IMAGE
    if not image.exists():
        entries = [e for e in os.listdir(state_dir) if e != POOL_IMAGE]
        if entries:
            raise StorageError(
                f"{state_dir} is not on btrfs and is not empty; ctfsd would hide its "
                "contents under the btrfs pool it mounts there"
            )
        tmp = state_dir / (POOL_IMAGE + ".new")
        with open(tmp, "wb") as f:
            f.truncate(_parse_image_size(image_size))
        _run("mkfs.btrfs", "-q", "-L", "ctfs", str(tmp))
        os.rename(tmp, image)
    _run("mount", "-o", "loop", str(image), str(state_dir))
    return f"mounted btrfs image {image} ({image_size}) on {state_dir}"


def pool_device(state_dir: Path) -> str | None:
    """The block device the pool at ``state_dir`` is mounted from, e.g. ``loop3``."""
    target = str(state_dir)
    device = None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == target and fields[2] == "btrfs":
                device = fields[0]  # the last mount on a path is the visible one
    if device is None or not device.startswith("/dev/"):
        return None
    return os.path.basename(os.path.realpath(device))


def use_bfq(device: str) -> str:
    """Select BFQ on ``device`` if it is the pool's own loop device; say what was done.

    ioprio becomes BFQ weights, which only a BFQ queue honours.  ctfsd changes the
    scheduler of the loop device it made, never of a disk it was given.
    """
    scheduler = Path(f"/sys/block/{device}/queue/scheduler")
    if not scheduler.exists():
        return f"{device} has no I/O scheduler; ioprio has no effect"
    if "[bfq]" in scheduler.read_text():
        return f"{device} uses BFQ; ioprio is honoured"
    if not device.startswith("loop"):
        return f"{device} does not use BFQ; ioprio has no effect until it does"
    try:
        scheduler.write_text("bfq")
    except OSError as exc:
        return f"cannot select BFQ on {device} ({exc.strerror}); ioprio has no effect"
    return f"selected BFQ on {device}; ioprio is honoured"


def _parse_image_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def create_subvolume(path: Path) -> None:
    _run("btrfs", "subvolume", "create", str(path))


def snapshot(source: Path, dest: Path) -> None:
    _run("btrfs", "subvolume", "snapshot", str(source), str(dest))


def delete_subvolume(path: Path) -> None:
    """Delete a subvolume, or a plain directory left by an interrupted create or
    by a migration's receive (then with the subvolumes right inside it)."""
    if not path.exists():
        return
    if _is_subvolume(path):
        _run("btrfs", "subvolume", "delete", str(path))
        return
    for child in path.iterdir():
        if not child.is_symlink() and child.is_dir() and _is_subvolume(child):
            _run("btrfs", "subvolume", "delete", str(child))
    shutil.rmtree(path)


def _is_subvolume(path: Path) -> bool:
    # A btrfs subvolume's root directory always has inode number 256.
    return path.stat().st_ino == 256


class BtrfsStorage:
    """The ``Storage`` backend: private areas as btrfs subvolumes of the pool."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._disk: Disk | None = None

    def pool_disk(self) -> Disk | None:
        if self._disk is None:  # the pool's device does not change while ctfsd runs
            name = pool_device(self.state_dir)
            if name is None:
                return None
            try:
                number = os.stat(f"/dev/{name}").st_rdev
            except OSError:
                return None
            self._disk = Disk(name, os.major(number), os.minor(number))
        return self._disk

    def snapshot(self, source: Path, dest: Path) -> None:
        snapshot(source, dest)

    def delete(self, path: Path) -> None:
        delete_subvolume(path)

    def update_etc_file(self, root: Path, name: str, render: Callable[[str], str]) -> bool:
        return etcfiles.update(root, name, render)
