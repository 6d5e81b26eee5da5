"""Malformed writes: the right errno, a sentence in events and the log, nothing changed."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.ctfsd_harness import Ctfsd, write_errno

BAD_STATE_WRITES = [
    (b"paused\n", "unknown state"),
    (b"\n", "empty value"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"running stopped", "one word"),
    (b"r" * 100_000, "too long"),
]


@pytest.mark.parametrize(
    "data,reason", BAD_STATE_WRITES, ids=["word", "empty", "binary", "two-words", "huge"]
)
def test_bad_state_write_is_einval_and_changes_nothing(
    ctfsd: Ctfsd, running: Path, data: bytes, reason: str
) -> None:
    procs = (running / "procs").read_text()
    assert write_errno(running / "state", data) == errno.EINVAL
    assert (running / "state").read_text() == "running\n"
    assert (running / "procs").read_text() == procs
    last = (running / "events").read_text().splitlines()[-1]
    assert "state: rejected" in last and reason in last
    assert reason in ctfsd.log_text()


def test_write_at_an_offset_is_einval(container: Path) -> None:
    assert write_errno(container / "state", b"running", offset=3) == errno.EINVAL
    assert (container / "state").read_text() == "stopped\n"
    assert "offset 3" in (container / "events").read_text()


def test_bad_hostname_is_einval_and_keeps_the_old_one(container: Path) -> None:
    assert write_errno(container / "hostname", b"not_a host!") == errno.EINVAL
    assert (container / "hostname").read_text() == f"ct{container.name}\n"


def test_writing_a_read_only_container_file_is_refused(container: Path) -> None:
    assert write_errno(container / "procs", b"1") == errno.EACCES


def test_the_daemon_keeps_serving_after_a_burst_of_garbage(running: Path, mount: Path) -> None:
    for _ in range(50):
        write_errno(running / "state", b"\x00\x01\x02" * 100)
    assert (mount / "version").read_text().startswith("ctfs ")
    assert (running / "state").read_text() == "running\n"


def test_events_lines_carry_a_utc_timestamp(container: Path) -> None:
    write_errno(container / "state", b"bogus")
    stamp = (container / "events").read_text().splitlines()[-1].split()[0]
    assert len(stamp) == 20 and stamp.endswith("Z") and stamp[10] == "T"
