"""The peer listener: only configured peers get in, by certificate, both ways.

A ctfsd ("hosta") runs in the lab's host namespace and listens on 198.19.0.1; the
other side is ctfs's own client code (``PeerService.connect``) run in the lab's
client namespace with a key pair of the test's own, as a second ctfsd would.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctfs.kernel import identity
from tests.ctfsd_harness import Ctfsd, started, wait_for, write_errno
from tests.network_lab import CLIENT_V4, HOST_V4, Lab

PORT = 7385
CONNECT = textwrap.dedent(
    """
    import sys, trio
    from pathlib import Path
    from ctfs.errors import CtfsError
    from ctfs.kernel.peer_link import TlsPeerLinks
    from ctfs.model.peer_service import PeerService
    from ctfs.model.peers import PeerBook
    from ctfs.policy.peers import parse_line
    state, name, target = Path(sys.argv[1]), sys.argv[2], parse_line(sys.argv[3])
    book = PeerBook(TlsPeerLinks(), state, name, sys.argv[4])
    book.peers = [target]
    async def main():
        try:
            stream = await PeerService(book, state).connect(target)
        except CtfsError as exc:
            print("refused", exc.errno_value, exc.sentence)
            return
        print("connected")
        await stream.aclose()
    trio.run(main)
    """
)


@pytest.fixture(scope="module")
def hosta(lab: Lab) -> Iterator[Ctfsd]:
    daemon = Ctfsd(
        wrapper=lab.enter(lab.host),
        extra=("--uplink", "up0", "--peer-name", "hosta", "--peer-address", f"{HOST_V4}:{PORT}"),
    )
    with started(daemon):
        yield daemon


@pytest.fixture
def other() -> Iterator[Path]:
    """The state directory of the other side: its key pair is made there."""
    path = Path(tempfile.mkdtemp(prefix="ctfs-peer-"))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=True)


def _line(state: Path, name: str) -> str:
    return f"{name} {CLIENT_V4}:{PORT} sha256:{identity.load_or_make(state).fingerprint}"


def _trust(daemon: Ctfsd, *lines: str) -> None:
    assert write_errno(daemon.mount / "peers", "".join(f"{x}\n" for x in lines).encode()) == 0
    if lines:  # the listener follows the list
        assert wait_for(lambda: "peers: listening on" in daemon.log_text())


def _connect(lab: Lab, state: Path, name: str, target: str) -> str:
    argv = [*lab.enter(lab.client), sys.executable, "-c", CONNECT, str(state), name, target]
    done = subprocess.run([*argv, CLIENT_V4], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _hosta(daemon: Ctfsd) -> str:
    return (daemon.mount / "identity").read_text().strip()


def test_a_configured_peer_gets_in(hosta: Ctfsd, lab: Lab, other: Path) -> None:
    _trust(hosta, _line(other, "hostb"))
    try:
        assert _connect(lab, other, "hostb", _hosta(hosta)) == "connected"
        assert "peers: hostb introduced itself" in hosta.log_text()
    finally:
        _trust(hosta)


def test_an_unknown_host_is_refused(hosta: Ctfsd, lab: Lab, other: Path, tmp_path: Path) -> None:
    _trust(hosta, _line(tmp_path, "hostc"))
    try:
        answer = _connect(lab, other, "hostb", _hosta(hosta))
        assert answer.startswith(f"refused {errno.EACCES} hosta refused this host")
        assert "'hostb' is not a configured peer" in answer
        assert not (hosta.state / ".peer-certs" / "hostb.pem").exists()
    finally:
        _trust(hosta)


def test_a_host_that_takes_a_peers_name_is_refused(
    hosta: Ctfsd, lab: Lab, other: Path, tmp_path: Path
) -> None:
    _trust(hosta, _line(other, "hostb"))
    try:
        answer = _connect(lab, tmp_path, "hostb", _hosta(hosta))  # another key pair
        assert answer.startswith(f"refused {errno.EACCES}")
        assert "is not hostb's" in answer
        assert f"refused an introduction from {CLIENT_V4}" in hosta.log_text()
    finally:
        _trust(hosta)


def test_a_server_with_another_certificate_is_left_before_anything_is_sent(
    hosta: Ctfsd, lab: Lab, other: Path
) -> None:
    _trust(hosta, _line(other, "hostb"))
    try:
        name, endpoint, _ = _hosta(hosta).split()
        impostor = f"{name} {endpoint} sha256:{'ab' * 32}"
        seen = len(hosta.log_text())
        answer = _connect(lab, other, "hostb", impostor)
        assert answer.startswith(f"refused {errno.EACCES} hosta: {HOST_V4}:{PORT} presented")
        time.sleep(0.2)
        # The handshake happened; no request followed it.
        assert "introduc" not in hosta.log_text()[seen:]
    finally:
        _trust(hosta)


def test_nobody_is_listened_to_without_peers(hosta: Ctfsd, lab: Lab, other: Path) -> None:
    _trust(hosta)
    answer = _connect(lab, other, "hostb", _hosta(hosta))
    assert answer.startswith(f"refused {errno.EHOSTUNREACH} cannot reach hosta")


def test_a_removed_peers_certificate_is_dropped(hosta: Ctfsd, lab: Lab, other: Path) -> None:
    _trust(hosta, _line(other, "hostb"))
    assert _connect(lab, other, "hostb", _hosta(hosta)) == "connected"
    assert (hosta.state / ".peer-certs" / "hostb.pem").exists()
    _trust(hosta)
    assert wait_for(lambda: not (hosta.state / ".peer-certs" / "hostb.pem").exists())
