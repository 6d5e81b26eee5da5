"""The top of the mount: version, templates, creating and destroying containers."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from ctfs import __version__
from tests.ctfsd_harness import Ctfsd, wait_for, write_errno


def test_version_reads_ctfs_and_the_version(mount: Path) -> None:
    assert (mount / "version").read_text() == f"ctfs {__version__}\n"


def test_templates_lists_busybox_without_any_download(mount: Path) -> None:
    assert "busybox" in (mount / "templates").read_text().splitlines()


def test_templates_lists_every_installed_template_sorted(mount: Path) -> None:
    assert (mount / "templates").read_text() == "busybox\nbusybox-alt\n"


def test_a_control_files_size_covers_its_text_in_whole_pages(mount: Path) -> None:
    assert len((mount / "version").read_bytes()) < 4096
    assert (mount / "version").stat().st_size == 4096


def test_sendfile_copies_a_control_files_whole_text(mount: Path, tmp_path: Path) -> None:
    # busybox cat and cp's copy_file_range fallback go through splice, which reads
    # up to the size the kernel holds.
    expected = (mount / "templates").read_bytes()
    copy = tmp_path / "copy"
    with open(mount / "templates", "rb") as source, open(copy, "wb") as target:
        while os.sendfile(target.fileno(), source.fileno(), None, 65536):
            pass
    assert copy.read_bytes() == expected


def test_root_files_are_read_only(mount: Path) -> None:
    assert stat.S_IMODE((mount / "version").stat().st_mode) == 0o444
    with pytest.raises(PermissionError):
        (mount / "version").write_text("x")


def test_mkdir_creates_a_stopped_container_from_the_default_template(
    ctfsd: Ctfsd, container: Path
) -> None:
    assert (container / "state").read_text() == "stopped\n"
    assert (container / "template").read_text() == "busybox\n"
    assert (ctfsd.state / container.name / "root" / "bin" / "busybox").exists()


def test_new_container_is_listed_at_the_top(mount: Path, container: Path) -> None:
    assert container.name in os.listdir(mount)


def test_container_directory_lists_its_control_files(container: Path) -> None:
    assert {"state", "template", "hostname", "procs", "events"} <= set(os.listdir(container))


def test_private_area_is_a_btrfs_subvolume(ctfsd: Ctfsd, container: Path) -> None:
    # A btrfs subvolume's root directory always has inode 256.
    assert (ctfsd.state / container.name / "root").stat().st_ino == 256


def test_settings_are_kept_in_openvz_ctid_conf(ctfsd: Ctfsd, container: Path) -> None:
    conf = (ctfsd.state / container.name / "ctid.conf").read_text()
    assert 'OSTEMPLATE="busybox"' in conf
    assert f'HOSTNAME="ct{container.name}"' in conf


@pytest.mark.parametrize("name", ["abc", "0101", "0", "2147483645", "1.5"])
def test_mkdir_of_a_name_that_is_not_a_ctid_is_einval(mount: Path, name: str) -> None:
    with pytest.raises(OSError) as info:
        (mount / name).mkdir()
    assert info.value.errno == errno.EINVAL


def test_mkdir_of_an_existing_container_is_eexist(container: Path) -> None:
    with pytest.raises(FileExistsError):
        container.mkdir()


def test_creating_a_file_at_the_top_is_refused(mount: Path) -> None:
    with pytest.raises(PermissionError):
        (mount / "notes").write_text("x")


def test_rmdir_of_an_unknown_container_is_enoent(mount: Path) -> None:
    with pytest.raises(FileNotFoundError):
        (mount / "999999").rmdir()


def test_rmdir_destroys_a_stopped_container_and_its_private_area(
    ctfsd: Ctfsd, mount: Path, new_ctid: int
) -> None:
    path = mount / str(new_ctid)
    path.mkdir()
    path.rmdir()
    assert not path.exists()
    assert not (ctfsd.state / str(new_ctid)).exists()


def test_a_read_sees_one_snapshot_for_the_whole_open(running: Path) -> None:
    with open(running / "events", "rb", buffering=0) as events:
        first = events.read(10)
        (running / "hostname").write_text("snapshot-check\n")
        rest = events.read()
    assert b"snapshot-check" not in first + rest
    assert b"snapshot-check" in (running / "events").read_bytes()


def test_a_read_from_the_start_again_sees_the_present(running: Path) -> None:
    # As procfs: top and free keep a file open and read it again from offset 0.
    with open(running / "hostname", "rb", buffering=0) as hostname:
        hostname.read()
        (running / "hostname").write_text("read-again\n")
        hostname.seek(0)
        assert hostname.read() == b"read-again\n"


def test_a_request_that_waits_holds_up_no_other(running: Path, mount: Path) -> None:
    # A stop waits for busybox init to halt (300 ms here): while that write is
    # under way, every other request is answered at once.
    writer = threading.Thread(target=write_errno, args=(running / "state", b"stopped"))
    writer.start()
    try:
        assert wait_for(lambda: (running / "state").read_text() == "stopping\n", timeout=5)
        began = time.monotonic()
        for _ in range(20):
            assert (mount / "version").read_text().startswith("ctfs ")
            assert (running / "state").read_text() == "stopping\n"
        assert writer.is_alive(), "the stop ended before the reads: nothing was shown"
        assert time.monotonic() - began < 0.2
    finally:
        writer.join(timeout=30)
    assert (running / "state").read_text() == "stopped\n"
