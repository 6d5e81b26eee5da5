"""ctid.conf syntax and atomic replacement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctfs import conffile as config


def test_parse_reads_openvz_syntax_and_skips_comments() -> None:
    text = '# comment\nOSTEMPLATE="busybox"\n\nHOSTNAME=ct101\nbroken line\n'
    assert config.parse(text) == {"OSTEMPLATE": "busybox", "HOSTNAME": "ct101"}


def test_render_then_parse_round_trips() -> None:
    values = {"OSTEMPLATE": "busybox", "HOSTNAME": "ct101.example.com", "EMPTY": ""}
    assert config.parse(config.render(values, header="ctfs")) == values


def test_render_refuses_a_quote_in_a_value() -> None:
    with pytest.raises(ValueError):
        config.render({"HOSTNAME": 'a"b'})


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "ctid.conf"
    target.write_text("old\n")
    config.write_atomic(target, 'HOSTNAME="new"\n')
    assert target.read_text() == 'HOSTNAME="new"\n'
    assert os.listdir(tmp_path) == ["ctid.conf"]
