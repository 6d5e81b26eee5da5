"""This host's key pair for talking to its peers: made once, kept in the state dir.

``STATE/.identity/`` (0700) holds ``key.pem`` (0600, an ECDSA P-256 key) and
``cert.pem``, a self-signed certificate of that key.  Peers trust it by the
SHA-256 of its DER form (``ctfs.policy.peers``), not by a CA, so its subject and
lifetime carry no meaning: CN=ctfs, valid for 100 years.

Invariant: either both files are there and belong together, or neither is
(they are written under temporary names and renamed, the certificate last).
The key never leaves this directory.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
from pathlib import Path

from ctfs.kernel.peer_values import Identity

DIRECTORY = ".identity"
KEY, CERT = "key.pem", "cert.pem"
# openssl makes a P-256 key and its certificate in about 20 ms here.
OPENSSL_TIMEOUT_S = 30


def fingerprint_of(pem: str) -> str:
    """The SHA-256 fingerprint of a PEM certificate (ValueError if it is not one)."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def load_or_make(state_dir: Path) -> Identity:
    """The identity kept in ``state_dir``, made first if there is none."""
    directory = state_dir / DIRECTORY
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    key, cert = directory / KEY, directory / CERT
    if not cert.is_file() or not key.is_file():
        _make(key, cert)
    return Identity(key, cert, fingerprint_of(cert.read_text()))


def _make(key: Path, cert: Path) -> None:
    new_key, new_cert = key.with_suffix(".new"), cert.with_suffix(".new")
    for path in (new_key, new_cert):
        path.unlink(missing_ok=True)
    # The key file is made 0600 before openssl writes the key into it.
    os.close(os.open(new_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-new", "-newkey", "ec"),
                *("-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc", "-sha256"),
                *("-days", "36500", "-subj", "/CN=ctfs"),
                *("-keyout", str(new_key), "-out", str(new_cert)),
            ],
            check=True,
            capture_output=True,
            timeout=OPENSSL_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as exc:
        raise OSError(f"openssl could not make a key pair: {exc.stderr.decode().strip()}") from exc
    os.chmod(new_key, 0o600)
    new_key.replace(key)
    new_cert.replace(cert)
