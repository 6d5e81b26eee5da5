"""Debian 12 with PostgreSQL moves to another host with an open inserting session
and loses no row (two ctfsd on one switch: tests.migration_lab)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ctfsd_harness import Ctfsd, started, write_errno
from tests.migration_lab import HOSTS, PREFIX, MigrationLab
from tests.system.test_debian import (
    PG_TEMPLATE,
    _booted,
    _sh,
    assert_every_row_once,
    insert_across,
)

PORT = 7385
ADDRESS = f"{PREFIX}.60"
CTID = 8601


@pytest.fixture(scope="module")
def pg_hosts() -> Iterator[tuple[MigrationLab, Ctfsd, Ctfsd]]:
    lab = MigrationLab()
    try:
        daemons = []
        for name in ("hosta", "hostb"):
            extra = ("--uplink", "up0", "--peer-name", name, "--peer-address",
                     f"{HOSTS[name]}:{PORT}")  # fmt: skip
            daemon = Ctfsd(stop_timeout=60, wrapper=lab.enter(name), extra=extra, start_timeout=600)
            daemon.add_template(PG_TEMPLATE)
            daemons.append(daemon)
        with started(daemons[0]) as a, started(daemons[1]) as b:
            for here, there in ((a, b), (b, a)):
                assert (
                    write_errno(here.mount / "peers", (there.mount / "identity").read_bytes()) == 0
                )
            yield lab, a, b
    finally:
        lab.close()


@pytest.mark.emulation_heavy
def test_postgresql_moves_with_an_inserting_session_and_every_row_once(
    pg_hosts: tuple[MigrationLab, Ctfsd, Ctfsd],
) -> None:
    lab, a, b = pg_hosts
    ct = a.mount / str(CTID)
    ct.mkdir()
    try:
        assert write_errno(ct / "template", PG_TEMPLATE.encode()) == 0
        assert write_errno(ct / "ip", ADDRESS.encode()) == 0
        assert write_errno(ct / "state", b"running") == 0, (ct / "events").read_text()
        assert _booted(ct) == "running"
        _sh(
            ct,
            "echo \"listen_addresses = '*'\" >> /etc/postgresql/15/main/postgresql.conf && "
            f"echo 'host all all {PREFIX}.0/24 trust' >> /etc/postgresql/15/main/pg_hba.conf && "
            "systemctl restart postgresql@15-main",
        )

        def move() -> None:
            assert write_errno(ct / "state", b"hostb") == 0, (ct / "events").read_text()

        acks = insert_across(lab.enter("client"), ADDRESS, move, 30, 120)
        assert not ct.exists()
        assert_every_row_once(b.mount / str(CTID), acks)  # it carried on there
    finally:
        for daemon in (a, b):
            path: Path = daemon.mount / str(CTID)
            if path.exists():
                if write_errno(path / "state", b"stopped") not in (0, 2):
                    daemon.kill_container(CTID)
                path.rmdir()
