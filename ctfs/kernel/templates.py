"""OS templates: imported from the template cache into btrfs subvolumes.

The cache (``/var/cache/ctfs/templates`` by default, filled by ``tools/setup``)
holds ``NAME.tar.gz`` and ``NAME.conf`` per template, as OpenVZ's template cache
does.  ctfsd imports each one into ``STATE/templates/NAME`` (a subvolume every
private area is snapshotted from) and re-imports it when the tarball changes.
Existing containers keep the snapshot they were made from.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
from pathlib import Path

from ctfs import conffile
from ctfs.kernel import storage
from ctfs.kernel.api import Template
from ctfs.policy.signals import parse_halt_signal

log = logging.getLogger(__name__)

TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# What init gets to stop when a template names no HALT_SIGNAL: sysvinit's
# power-failure signal, as OpenVZ sends.
DEFAULT_HALT_SIGNAL = "SIGPWR"


def describe(name: str, root: Path, meta: dict[str, str]) -> Template:
    """The template ``name`` as its ``.conf`` describes it; ValueError if that is wrong."""
    init = meta.get("INIT", "/sbin/init")
    if not init.startswith("/"):
        raise ValueError(f"INIT must be an absolute path, not {init!r}")
    try:
        halt = parse_halt_signal(meta.get("HALT_SIGNAL", DEFAULT_HALT_SIGNAL))
    except ValueError as exc:
        raise ValueError(f"HALT_SIGNAL: {exc}") from None
    return Template(
        name=name,
        root=root,
        init=init,
        halt_signal=halt,
        description=meta.get("DESCRIPTION", ""),
    )


class TemplateStore:
    """The ``Templates`` backend: the installed templates under ``STATE/templates``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "templates"
        self.dir.mkdir(exist_ok=True)

    def names(self) -> list[str]:
        return sorted(
            p.name
            for p in self.dir.iterdir()
            if p.is_dir() and TEMPLATE_NAME.match(p.name) and (self.dir / f"{p.name}.conf").exists()
        )

    def get(self, name: str) -> Template | None:
        if not TEMPLATE_NAME.match(name) or not (self.dir / name).is_dir():
            return None
        try:
            meta = conffile.read(self.dir / f"{name}.conf")
        except FileNotFoundError:
            return None
        try:
            return describe(name, self.dir / name, meta)
        except ValueError as exc:  # checked at import: someone edited it since
            log.error("template %s: %s.conf: %s", name, name, exc)
            return None

    def import_cache(self, cache: Path) -> list[str]:
        """Import every new or changed tarball from ``cache``; return what was imported."""
        imported: list[str] = []
        if not cache.is_dir():
            log.warning("template cache %s does not exist; no templates imported", cache)
            return imported
        for tarball in sorted(cache.glob("*.tar.gz")):
            name = tarball.name.removesuffix(".tar.gz")
            meta = cache / f"{name}.conf"
            if not TEMPLATE_NAME.match(name) or not meta.exists():
                log.warning("template cache: skipping %s (bad name or no %s)", tarball, meta.name)
                continue
            try:
                describe(name, self.dir / name, conffile.read(meta))
            except ValueError as exc:
                log.error("template cache: not importing %s: %s: %s", name, meta, exc)
                continue
            digest = _digest(tarball, meta)
            stamp = self.dir / f".{name}.digest"
            if (self.dir / name).is_dir() and stamp.exists() and stamp.read_text() == digest:
                continue
            self._import(name, tarball, meta, digest)
            imported.append(name)
        return imported

    def _import(self, name: str, tarball: Path, meta: Path, digest: str) -> None:
        staging = self.dir / f".{name}.new"
        storage.delete_subvolume(staging)
        storage.create_subvolume(staging)
        try:
            done = subprocess.run(
                ["tar", "-xzpf", str(tarball), "--numeric-owner", "-C", str(staging)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise storage.StorageError(f"unpacking {tarball}: {done.stderr.strip()}")
        except BaseException:
            storage.delete_subvolume(staging)
            raise
        old = self.dir / f".{name}.old"
        storage.delete_subvolume(old)
        if (self.dir / name).exists():
            (self.dir / name).rename(old)
        staging.rename(self.dir / name)
        storage.delete_subvolume(old)
        conffile.write_atomic(self.dir / f"{name}.conf", meta.read_bytes())
        conffile.write_atomic(self.dir / f".{name}.digest", digest)
        log.info("imported template %s from %s", name, tarball)


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
