"""One command per open file between closes, however many write() calls carry it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.ctfsd_harness import Ctfsd


def _writes(path: Path, *chunks: bytes) -> list[int]:
    """Write each chunk with its own write() on one open file, then close; the errnos."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    results = []
    for chunk in chunks:
        try:
            os.write(fd, chunk)
            results.append(0)
        except OSError as exc:
            results.append(exc.errno or -1)
    try:
        os.close(fd)
        results.append(0)
    except OSError as exc:
        results.append(exc.errno or -1)
    return results


def _limit(container: Path, name: str) -> str:
    lines = (container / "limits").read_text().splitlines()
    return next(line.split()[1] for line in lines if line.split()[0] == name)


def test_lines_written_one_by_one_are_one_command(container: Path) -> None:
    assert _writes(container / "limits", b"numproc 100\n", b"physpages 0:128M\n") == [0, 0, 0]
    assert _limit(container, "numproc") == "100:100"
    assert _limit(container, "physpages") == "0:32768"


def test_a_number_written_in_two_pieces_is_one_number(container: Path) -> None:
    assert _writes(container / "cpuunits", b"2", b"0") == [0, 0, 0]
    assert (container / "cpuunits").read_text() == "20\n"


def test_a_refused_second_line_undoes_the_first(ctfsd: Ctfsd, running: Path) -> None:
    pids_max = ctfsd.cgroup_dir("pids", int(running.name)) / "pids.max"
    before = pids_max.read_text()
    assert _writes(running / "limits", b"numproc 100\n", b"bogus 1\n") == [0, errno.EINVAL, 0]
    assert _limit(running, "numproc") == "unlimited:unlimited"
    assert pids_max.read_text() == before
    conf = (ctfsd.state / running.name / "ctid.conf").read_text()
    assert "NUMPROC" not in conf
    assert "limits: undone, the rest of the command was refused" in (running / "events").read_text()


def test_an_error_without_a_final_newline_comes_back_from_close(container: Path) -> None:
    assert _writes(container / "state", b"paused") == [0, errno.EINVAL]
    assert (container / "state").read_text() == "stopped\n"
    assert 'state: rejected "paused"' in (container / "events").read_text()


def test_a_state_change_cannot_be_extended_once_carried_out(container: Path) -> None:
    assert _writes(container / "state", b"stopped\n", b"running\n") == [0, errno.EINVAL, 0]
    assert (container / "state").read_text() == "stopped\n"


def test_each_close_of_a_shared_file_ends_a_command(container: Path) -> None:
    # exec 3>cpuunits; echo 500 >&3; echo 700 >&3: every echo's dup is closed.
    fd = os.open(container / "cpuunits", os.O_WRONLY | os.O_TRUNC)
    try:
        for value in (b"500\n", b"700\n"):
            dup = os.dup(fd)
            os.write(dup, value)
            os.close(dup)
            assert (container / "cpuunits").read_text() == value.decode()
    finally:
        os.close(fd)


# ------------------------------------------------------------------ refusals


def _last_event(container: Path) -> str:
    return (container / "events").read_text().splitlines()[-1]


def test_truncating_to_a_size_is_eperm_with_a_sentence(container: Path) -> None:
    with pytest.raises(PermissionError):
        os.truncate(container / "cpuunits", 5)
    assert "cpuunits: refused: truncating to 5 bytes" in _last_event(container)


def test_truncating_to_zero_is_accepted(container: Path) -> None:
    os.truncate(container / "cpuunits", 0)
    assert (container / "cpuunits").read_text() == "1000\n"


def test_chmod_is_eperm_with_a_sentence(container: Path) -> None:
    with pytest.raises(PermissionError):
        os.chmod(container / "state", 0o600)
    assert "state: refused: the mode, owner and times are fixed" in _last_event(container)


def test_rename_is_eperm_with_a_sentence(container: Path) -> None:
    with pytest.raises(PermissionError):
        os.rename(container / "hostname", container / "name")
    assert "hostname: refused: files of ctfs cannot be renamed" in _last_event(container)


def test_creating_a_file_is_eperm_with_a_sentence(container: Path) -> None:
    with pytest.raises(PermissionError):
        os.open(container / "new", os.O_WRONLY | os.O_CREAT, 0o644)
    assert "new: refused: files of ctfs cannot be created" in _last_event(container)
