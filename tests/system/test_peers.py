"""/ctfs/identity and /ctfs/peers: this host's key pair, and the peers it trusts."""

from __future__ import annotations

import errno
import stat
import subprocess

from tests.ctfsd_harness import Ctfsd, write_errno

OTHER_FP = "ab" * 32


def _identity(ctfsd: Ctfsd) -> list[str]:
    return (ctfsd.mount / "identity").read_text().split()


def test_identity_is_one_peers_line_with_the_fingerprint_of_its_certificate(
    ctfsd: Ctfsd,
) -> None:
    _, endpoint, fingerprint = _identity(ctfsd)
    cert = ctfsd.state / ".identity" / "cert.pem"
    shown = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert fingerprint == "sha256:" + shown.strip().split("=")[1].replace(":", "").lower()
    assert endpoint.endswith(":7385")


def test_the_private_key_is_roots_alone(ctfsd: Ctfsd) -> None:
    key = ctfsd.state / ".identity" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700


def test_peers_are_empty_at_first_and_written_whole(ctfsd: Ctfsd) -> None:
    peers = ctfsd.mount / "peers"
    assert write_errno(peers, b"\n") == 0
    assert peers.read_text() == ""
    line = f"host2 198.18.0.2:7385 sha256:{OTHER_FP}"
    assert write_errno(peers, f"# the rack's other host\n{line}\n".encode()) == 0
    assert peers.read_text() == f"{line}\n"
    assert write_errno(peers, b"\n") == 0
    assert peers.read_text() == ""


def test_peers_survive_a_daemon_restart(ctfsd: Ctfsd) -> None:
    line = f"host2 198.18.0.2:7000 sha256:{OTHER_FP}\n"
    assert write_errno(ctfsd.mount / "peers", line.encode()) == 0
    before = _identity(ctfsd)
    ctfsd.terminate()
    ctfsd.start()
    try:
        assert (ctfsd.mount / "peers").read_text() == line
        assert _identity(ctfsd) == before  # the same key pair
    finally:
        write_errno(ctfsd.mount / "peers", b"\n")


def test_a_bad_line_is_einval_names_the_line_and_changes_nothing(ctfsd: Ctfsd) -> None:
    peers = ctfsd.mount / "peers"
    good = f"host2 198.18.0.2:7385 sha256:{OTHER_FP}\n"
    assert write_errno(peers, good.encode()) == 0
    try:
        bad = good + "host3 example.org:7385 sha256:" + "cd" * 32 + "\n"
        assert write_errno(peers, bad.encode()) == errno.EINVAL
        assert peers.read_text() == good
        assert "peers: rejected: peers: line 2: 'example.org' is not an IP address" in (
            ctfsd.log_text()
        )
    finally:
        write_errno(peers, b"\n")


def test_this_hosts_own_certificate_is_not_a_peer(ctfsd: Ctfsd) -> None:
    _, _, fingerprint = _identity(ctfsd)
    line = f"myself 198.18.0.9:7385 {fingerprint}\n"
    assert write_errno(ctfsd.mount / "peers", line.encode()) == errno.EINVAL
    assert "has this host's own certificate" in ctfsd.log_text()


def test_identity_is_read_only(ctfsd: Ctfsd) -> None:
    assert write_errno(ctfsd.mount / "identity", b"x\n") == errno.EACCES


def test_truncating_the_file_trusts_nobody(ctfsd: Ctfsd) -> None:
    peers = ctfsd.mount / "peers"
    assert write_errno(peers, f"host2 198.18.0.2:7385 sha256:{OTHER_FP}\n".encode()) == 0
    subprocess.run(["sh", "-c", f": > {peers}"], check=True)
    assert peers.read_text() == ""


def test_a_host_without_a_default_route_still_has_an_identity(net_ctfsd: Ctfsd) -> None:
    # The lab's host namespace has no default route; nothing says --peer-address.
    _, endpoint, fingerprint = _identity(net_ctfsd)
    assert endpoint == "127.0.0.1:7385" and fingerprint.startswith("sha256:")
    assert "give --peer-address for its peers to reach it" in net_ctfsd.log_text()
