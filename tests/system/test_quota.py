"""The quota file: diskspace enforced by a btrfs qgroup, diskinodes counted, all persisted."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ctfsd_harness import Ctfsd, ctfs_exec, wait_for, write_errno
from tests.system.conftest import _ctids

UNLIMITED = 9223372036854775807
MIB_BLOCKS = 1024  # 1 MiB in 1K blocks


def _quota(container: Path) -> dict[str, tuple[int, int, int]]:
    """{name: (used, soft, hard)} as the file reads."""
    text = (container / "quota").read_text()
    rows = [line.split() for line in text.splitlines()]
    return {row[0]: (int(row[1]), int(row[2]), int(row[3])) for row in rows}


def _limits(container: Path) -> dict[str, tuple[int, int]]:
    return {name: (soft, hard) for name, (_used, soft, hard) in _quota(container).items()}


def _private(ctfsd: Ctfsd, container: Path) -> Path:
    return ctfsd.state / container.name / "root"


def _conf(ctfsd: Ctfsd, container: Path) -> str:
    return (ctfsd.state / container.name / "ctid.conf").read_text()


def _write_blob(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(b"\xa5" * (1 << 20))


def _qgroup_limit(subvolume: Path) -> str:
    """The 'max referenced' column of the subvolume's qgroup, as btrfs-progs prints it."""
    out = subprocess.run(
        ["btrfs", "qgroup", "show", "--raw", "-r", "-f", str(subvolume)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = next(line.split() for line in out.splitlines() if line.startswith("0/"))
    return row[3]


def _set(container: Path, text: str) -> None:
    assert write_errno(container / "quota", text.encode()) == 0, (container / "events").read_text()


@pytest.fixture
def other_running(ctfsd: Ctfsd, mount: Path) -> Iterator[Path]:
    """A second running container, stopped and destroyed afterwards."""
    ctid = next(_ctids)
    path = mount / str(ctid)
    path.mkdir()
    try:
        assert write_errno(path / "state", b"running") == 0
        yield path
    finally:
        if write_errno(path / "state", b"stopped") not in (0, errno.ENOENT):
            ctfsd.kill_container(ctid)
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()


# ------------------------------------------------------------------ reading


def test_a_new_container_reads_its_usage_and_no_limits(container: Path) -> None:
    text = (container / "quota").read_text()
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == ["diskspace", "diskinodes"]
    assert text.endswith("\n")
    quota = _quota(container)
    for name in ("diskspace", "diskinodes"):
        used, soft, hard = quota[name]
        assert used > 0
        assert (soft, hard) == (UNLIMITED, UNLIMITED)


def test_diskspace_usage_includes_what_was_just_written(ctfsd: Ctfsd, container: Path) -> None:
    before = _quota(container)["diskspace"][0]
    _write_blob(_private(ctfsd, container) / "root" / "blob", 4)
    after = _quota(container)["diskspace"][0]
    # 4 MiB of data plus a little metadata; read at once, not after the next commit.
    assert 4 * MIB_BLOCKS <= after - before < 5 * MIB_BLOCKS


def test_diskinodes_counts_every_inode_once(ctfsd: Ctfsd, container: Path) -> None:
    before = _quota(container)["diskinodes"][0]
    base = _private(ctfsd, container) / "root" / "many"
    base.mkdir()
    for i in range(5):
        (base / f"f{i}").write_text("x")
    os.link(base / "f0", base / "hardlink")  # the same inode again
    (base / "symlink").symlink_to("/etc")  # an inode of its own, not followed
    assert _quota(container)["diskinodes"][0] == before + 7


# ------------------------------------------------------------------ writing


def test_limits_read_back_in_1k_blocks_and_inodes(container: Path) -> None:
    _set(container, "diskspace 10M:12M")
    _set(container, "diskinodes 1000:2000")
    assert _limits(container) == {"diskspace": (10240, 12288), "diskinodes": (1000, 2000)}


def test_one_value_sets_soft_and_hard(container: Path) -> None:
    _set(container, "diskspace 1.5G\n")
    assert _limits(container)["diskspace"] == (1572864, 1572864)


def test_several_lines_are_applied_in_one_write(container: Path) -> None:
    _set(container, "diskspace 20M:30M\ndiskinodes 5000:6000\n")
    assert _limits(container) == {"diskspace": (20480, 30720), "diskinodes": (5000, 6000)}


def test_the_hard_limit_is_the_private_areas_qgroup_limit(ctfsd: Ctfsd, container: Path) -> None:
    _set(container, "diskspace 10M:12M")
    assert _qgroup_limit(_private(ctfsd, container)) == str(12 << 20)


def test_unlimited_lifts_the_qgroup_limit(ctfsd: Ctfsd, container: Path) -> None:
    _set(container, "diskspace 10M")
    _set(container, "diskspace unlimited")
    assert _limits(container)["diskspace"] == (UNLIMITED, UNLIMITED)
    assert _qgroup_limit(_private(ctfsd, container)) == "none"


@pytest.mark.parametrize(
    ("text", "number", "words"),
    [
        ("diskspace 10X", errno.EINVAL, "unknown suffix 'X'"),
        ("diskquota 10M", errno.EINVAL, "unknown keyword 'diskquota'"),
        ("diskspace", errno.EINVAL, "takes one value"),
        ("diskspace 10M 12M", errno.EINVAL, "takes one value"),
        ("diskspace 20M:10M", errno.EINVAL, "the soft limit 20480 is above the hard limit 10240"),
        ("diskinodes 10K", errno.EINVAL, "a plain count"),
        ("diskspace 10M\ndiskspace 20M", errno.EINVAL, "given twice"),
        ("diskspace 9223372036854775808", errno.ERANGE, "beyond 9223372036854775807"),
        ("diskinodes 99999999999999999999", errno.ERANGE, "beyond 9223372036854775807"),
    ],
)
def test_bad_input_is_refused_with_a_sentence_and_changes_nothing(
    ctfsd: Ctfsd, container: Path, text: str, number: int, words: str
) -> None:
    _set(container, "diskspace 50M:60M")
    before, conf = _limits(container), _conf(ctfsd, container)
    assert write_errno(container / "quota", text.encode()) == number
    last = (container / "events").read_text().splitlines()[-1]
    assert "quota: rejected" in last
    assert words in last
    assert _limits(container) == before
    assert _conf(ctfsd, container) == conf
    assert _qgroup_limit(_private(ctfsd, container)) == str(60 << 20)


def test_a_bad_line_leaves_the_good_lines_unapplied(container: Path) -> None:
    assert write_errno(container / "quota", b"diskinodes 100:200\ndiskspace 5Q\n") == errno.EINVAL
    assert _limits(container)["diskinodes"] == (UNLIMITED, UNLIMITED)


# -------------------------------------------------------------- persistence


def test_limits_are_saved_in_ctid_conf(ctfsd: Ctfsd, container: Path) -> None:
    _set(container, "diskspace 10M:12M\ndiskinodes 1000:2000")
    conf = _conf(ctfsd, container)
    assert 'DISKSPACE="10240:12288"' in conf
    assert 'DISKINODES="1000:2000"' in conf


def test_limits_survive_a_daemon_restart(ctfsd: Ctfsd, container: Path) -> None:
    _set(container, "diskspace 10M:12M\ndiskinodes 1000:2000")
    ctfsd.terminate()
    ctfsd.start()
    assert _limits(container) == {"diskspace": (10240, 12288), "diskinodes": (1000, 2000)}
    assert _qgroup_limit(_private(ctfsd, container)) == str(12 << 20)


# -------------------------------------------------------------- enforcement


def test_writing_past_the_hard_limit_inside_fails_with_edquot(ctfsd: Ctfsd, running: Path) -> None:
    used = _quota(running)["diskspace"][0]
    _set(running, f"diskspace {used + 8 * MIB_BLOCKS}")
    result = ctfs_exec(running, "dd", "if=/dev/zero", "of=/root/fill", "bs=1M", "count=64")
    assert result.returncode != 0
    assert "Disk quota exceeded" in result.stderr
    assert (_private(ctfsd, running) / "root" / "fill").stat().st_size <= 8 << 20


def test_a_limit_below_usage_holds_and_can_be_lifted(ctfsd: Ctfsd, container: Path) -> None:
    # Set while stopped and below what the template already uses: even root on the
    # host cannot add data, and the limit can still be changed.
    _set(container, "diskspace 1M")
    blob = _private(ctfsd, container) / "root" / "blob"
    with pytest.raises(OSError) as caught:
        _write_blob(blob, 1)
    assert caught.value.errno == errno.EDQUOT
    _set(container, "diskspace unlimited")
    _write_blob(blob, 1)


# Appends 24 MiB through one open file, retrying whatever EDQUOT refuses; notes in
# /dev/shm (tmpfs, outside the quota) its PID, that it was blocked, and when done.
WRITER = (
    "echo $$ > /dev/shm/writer; exec 3>>/root/fill; n=0; "
    "while [ $n -lt 24 ]; do "
    "if dd if=/dev/zero bs=64k count=16 >&3 2>/dev/null; then n=$((n + 1)); "
    "else : > /dev/shm/blocked; sleep 0.05; fi; "
    "done; echo $$ > /dev/shm/done"
)


def test_raising_the_limit_lets_the_same_writer_go_on(ctfsd: Ctfsd, running: Path) -> None:
    used = _quota(running)["diskspace"][0]
    _set(running, f"diskspace {used + 8 * MIB_BLOCKS}")
    started = ctfs_exec(running, "sh", "-c", f"sh -c '{WRITER}' </dev/null >/dev/null 2>&1 &")
    assert started.returncode == 0, started.stderr
    shm = Path(f"/proc/{(running / 'procs').read_text().split()[0]}/root/dev/shm")
    fill = _private(ctfsd, running) / "root" / "fill"
    assert wait_for(lambda: (shm / "blocked").exists(), timeout=30), (
        "the writer never hit the limit"
    )
    assert not (shm / "done").exists()
    assert fill.stat().st_size <= 8 << 20

    _set(running, f"diskspace {used + 64 * MIB_BLOCKS}")
    assert wait_for(lambda: (shm / "done").exists(), timeout=30), "the writer did not go on"
    assert (shm / "done").read_text() == (shm / "writer").read_text()
    assert fill.stat().st_size >= 24 << 20


def test_the_host_and_another_container_write_on_while_one_is_full(
    ctfsd: Ctfsd, running: Path, other_running: Path
) -> None:
    used = _quota(running)["diskspace"][0]
    _set(running, f"diskspace {used + 2 * MIB_BLOCKS}")
    full = ctfs_exec(running, "dd", "if=/dev/zero", "of=/root/fill", "bs=1M", "count=16")
    assert "Disk quota exceeded" in full.stderr

    host_file = ctfsd.state / f"host-fill-{running.name}"
    try:
        _write_blob(host_file, 16)  # the pool itself, outside any container
    finally:
        host_file.unlink(missing_ok=True)
    other = ctfs_exec(other_running, "dd", "if=/dev/zero", "of=/root/fill", "bs=1M", "count=16")
    assert other.returncode == 0, other.stderr


# ------------------------------------------------------------------- events


def test_crossing_the_soft_limit_is_noted_once(ctfsd: Ctfsd, container: Path) -> None:
    used = _quota(container)["diskspace"][0]
    _set(container, f"diskspace {used + MIB_BLOCKS}:unlimited")
    _quota(container)
    _write_blob(_private(ctfsd, container) / "root" / "blob", 2)
    for _ in range(3):
        _quota(container)
    events = (container / "events").read_text()
    assert events.count("quota: diskspace usage") == 1
    assert events.count("is above the soft limit") == 1


def test_going_back_under_the_soft_limit_is_noted(ctfsd: Ctfsd, container: Path) -> None:
    used = _quota(container)["diskspace"][0]
    _set(container, f"diskspace {used + MIB_BLOCKS}:unlimited")
    blob = _private(ctfsd, container) / "root" / "blob"
    _write_blob(blob, 2)
    _quota(container)
    blob.unlink()
    _quota(container)
    _quota(container)
    assert (container / "events").read_text().count("diskspace usage") == 2
    assert "is back within its limits" in (container / "events").read_text().splitlines()[-1]


def test_inodes_above_a_limit_are_noted_once(ctfsd: Ctfsd, container: Path) -> None:
    used = _quota(container)["diskinodes"][0]
    _set(container, f"diskinodes {used + 2}:{used + 1000}")
    for i in range(5):
        (_private(ctfsd, container) / "root" / f"f{i}").write_text("x")
    for _ in range(3):
        assert _quota(container)["diskinodes"][0] == used + 5
    events = (container / "events").read_text()
    assert events.count("quota: diskinodes usage") == 1
    assert f"diskinodes usage {used + 5} inodes is above the soft limit {used + 2}" in events


def test_a_template_change_keeps_the_disk_limit(ctfsd: Ctfsd, container: Path) -> None:
    _set(container, "diskspace 50M\n")
    assert write_errno(container / "template", b"busybox-alt") == 0
    assert _limits(container)["diskspace"] == (51200, 51200)
    assert _qgroup_limit(_private(ctfsd, container)) == str(50 * 2**20)
