"""This host's key pair for peers, made with openssl in a directory of the test's own."""

from __future__ import annotations

import ssl
from pathlib import Path

from ctfs.kernel import identity


def test_a_key_pair_is_made_once_and_kept(tmp_path: Path) -> None:
    first = identity.load_or_make(tmp_path)
    again = identity.load_or_make(tmp_path)
    assert first == again
    assert (tmp_path / ".identity" / "key.pem").stat().st_mode & 0o777 == 0o600


def test_the_certificate_and_key_belong_together(tmp_path: Path) -> None:
    made = identity.load_or_make(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(made.cert, made.key)  # ssl.SSLError if they do not match


def test_a_half_made_pair_is_made_again(tmp_path: Path) -> None:
    made = identity.load_or_make(tmp_path)
    made.cert.unlink()
    remade = identity.load_or_make(tmp_path)
    assert remade.fingerprint != made.fingerprint
    assert not list((tmp_path / ".identity").glob("*.new"))
