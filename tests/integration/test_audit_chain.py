"""Per-license audit chains: appends, locking, tamper detection (as a superuser would tamper), CLI."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from seedline_server.domain.audit import GENESIS_HASH, lock_key
from seedline_server.service import audit
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import db, models
from tests.integration.conftest import CTX, Farm, make_farm

pytestmark = pytest.mark.asyncio(loop_scope="session")
EV = models.AuditEvent.__table__
SEEDLINE = Path(sys.executable).parent / "seedline"


async def chain(database: Database, license_id: str) -> list[models.AuditEvent]:
    async def run(uow: UnitOfWork) -> list[models.AuditEvent]:
        ev = models.AuditEvent
        stmt = select(ev).where(ev.license_id == license_id).order_by(ev.sequence)
        return list((await uow.session.scalars(stmt)).all())

    return await database.read(CTX, run)


async def verify_one(url: str, license_id: str | None) -> audit.Report:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await audit.verify(conn, license_id=license_id, one_chain=True, batch=2)
    finally:
        await engine.dispose()


async def note(database: Database, license_id: str, n: int = 3) -> None:
    """Append ``n`` events to the license's chain in one transaction."""

    async def run(uow: UnitOfWork) -> None:
        for i in range(n):
            await uow.audit(
                license_id=license_id,
                resource=f"licenses/{license_id}",
                action="NOTE_ADDED",
                before={"n": i, "x": 1.5},
                after={"n": i + 1, "nested": {"list": [1, "two", None, True]}},
            )

    await database.write(CTX, run)


@asynccontextmanager
async def superuser(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def tampering(url: str, license_id: str, statements: Sequence[str]) -> AsyncIterator[None]:
    """Run ``statements`` past the append-only trigger, as a superuser can; restore afterwards.

    ``session_replication_role = replica`` turns ordinary triggers off for this session only
    (superuser required), which is exactly what an attacker with superuser would do.
    """
    async with superuser(url) as engine:
        async with engine.begin() as conn:
            saved = [
                dict(r._mapping) for r in await conn.execute(select(EV).where(EV.c.license_id == license_id))
            ]
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
            for statement in statements:
                await conn.execute(text(statement), {"lic": license_id})
        try:
            yield
        finally:
            async with engine.begin() as conn:
                await conn.execute(text("SET LOCAL session_replication_role = replica"))
                await conn.execute(delete(EV).where(EV.c.license_id == license_id))
                await conn.execute(insert(EV), saved)


async def test_each_license_has_its_own_gap_free_chain(database: Database, farm: Farm, migrated: str) -> None:
    other = await make_farm(database, f"IT-{uuid.uuid4().hex[:10]}")
    await note(database, farm.license_id, 3)
    await note(database, other.license_id, 2)

    async def both(uow: UnitOfWork) -> None:  # a transfer accept writes to two chains at once
        for lic in (farm.license_id, other.license_id, farm.license_id):
            await uow.audit(license_id=lic, resource=f"licenses/{lic}", action="UPDATE", before={}, after={})

    await database.write(CTX, both)
    for lic in (farm.license_id, other.license_id):
        events = await chain(database, lic)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[0].prev_hash == GENESIS_HASH
        for prev, event in itertools.pairwise(events):
            assert event.prev_hash == prev.hash
            assert event.seq > prev.seq
        report = await verify_one(migrated, lic)
        assert report.intact, report.findings
        assert report.heads[0].sequence == len(events)
        assert report.heads[0].hash == events[-1].hash
    # license creation (2 events: license, plus section and variety) + 3 notes + 2 in "both"
    assert len(await chain(database, farm.license_id)) == 3 + 3 + 2


async def test_license_less_chain_verifies(database: Database, farm: Farm, migrated: str) -> None:
    report = await verify_one(migrated, None)  # company creations
    assert report.intact, report.findings
    assert report.heads
    assert report.heads[0].license_id is None


async def test_chains_of_different_licenses_do_not_wait_for_each_other(
    database: Database, farm: Farm, migrated: str
) -> None:
    other = await make_farm(database, f"IT-{uuid.uuid4().hex[:10]}")
    async with superuser(migrated) as engine, engine.begin() as conn:
        # Hold farm's chain lock as a long-running transaction would.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(farm.license_id)})
        await asyncio.wait_for(note(database, other.license_id, 1), timeout=5)
        blocked = asyncio.create_task(note(database, farm.license_id, 1))
        await asyncio.sleep(0.5)
        assert not blocked.done()
    await asyncio.wait_for(blocked, timeout=5)
    assert (await verify_one(migrated, farm.license_id)).intact


async def test_crossed_two_license_transactions_do_not_deadlock(database: Database, migrated: str) -> None:
    a = await make_farm(database, f"IT-{uuid.uuid4().hex[:10]}")
    b = await make_farm(database, f"IT-{uuid.uuid4().hex[:10]}")
    calls = 0

    def crossed(first: str, second: str) -> Any:
        async def run(uow: UnitOfWork) -> None:
            nonlocal calls
            calls += 1
            await uow.audit(
                license_id=first, resource=f"licenses/{first}", action="UPDATE", before={}, after={}
            )
            await asyncio.sleep(0.2)  # both transactions have recorded their first event
            await uow.audit(
                license_id=second, resource=f"licenses/{second}", action="UPDATE", before={}, after={}
            )

        return run

    for _ in range(3):
        await asyncio.wait_for(
            asyncio.gather(
                database.write(CTX, crossed(a.license_id, b.license_id)),
                database.write(CTX, crossed(b.license_id, a.license_id)),
            ),
            timeout=10,
        )
    assert calls == 6  # no transaction was a deadlock victim and run again
    for lic in (a.license_id, b.license_id):
        assert (await verify_one(migrated, lic)).intact


async def test_intact_chain_verifies(database: Database, farm: Farm, migrated: str) -> None:
    await note(database, farm.license_id, 5)
    report = await verify_one(migrated, farm.license_id)
    assert report.intact
    assert report.events == len(await chain(database, farm.license_id))


async def test_altered_event_is_detected_at_its_sequence(
    database: Database, farm: Farm, migrated: str
) -> None:
    await note(database, farm.license_id, 4)
    events = await chain(database, farm.license_id)
    target = events[4]
    sql = f"UPDATE audit_events SET after = '{{\"n\": 99}}' WHERE id = '{target.id}'"
    async with tampering(migrated, farm.license_id, [sql]):
        report = await verify_one(migrated, farm.license_id)
        assert [(f.sequence, f.event_id, f.problem) for f in report.findings] == [
            (target.sequence, target.id, audit.Problem.CONTENT_HASH_MISMATCH)
        ]
    assert (await verify_one(migrated, farm.license_id)).intact  # restored


async def test_deleted_event_is_detected_as_a_gap(database: Database, farm: Farm, migrated: str) -> None:
    await note(database, farm.license_id, 4)
    events = await chain(database, farm.license_id)
    gone, after = events[3], events[4]
    async with tampering(migrated, farm.license_id, [f"DELETE FROM audit_events WHERE id = '{gone.id}'"]):
        (finding,) = (await verify_one(migrated, farm.license_id)).findings
        assert (finding.sequence, finding.event_id, finding.problem) == (
            after.sequence,
            after.id,
            audit.Problem.SEQUENCE_GAP,
        )
        assert f"sequence {gone.sequence} missing" in finding.detail


async def test_deleted_and_renumbered_is_a_previous_hash_mismatch(
    database: Database, farm: Farm, migrated: str
) -> None:
    await note(database, farm.license_id, 4)
    events = await chain(database, farm.license_id)
    gone = events[3]
    statements = [
        f"DELETE FROM audit_events WHERE id = '{gone.id}'",
        "UPDATE audit_events SET sequence = sequence - 1 "
        f"WHERE license_id = :lic AND sequence > {gone.sequence}",
    ]
    async with tampering(migrated, farm.license_id, statements):
        (finding,) = (await verify_one(migrated, farm.license_id)).findings
        # The next event now sits at the gone one's sequence: its hash no longer matches there.
        assert finding.sequence == gone.sequence
        assert finding.event_id == events[4].id
        assert finding.problem is audit.Problem.REORDERED


@pytest.mark.parametrize("how", ["sequence", "content"])
async def test_reordered_events_are_detected(database: Database, farm: Farm, migrated: str, how: str) -> None:
    await note(database, farm.license_id, 4)
    events = await chain(database, farm.license_id)
    x, y = events[3], events[5]
    if how == "sequence":  # swap the positions of two events
        statements = [
            f"UPDATE audit_events SET sequence = -1 WHERE id = '{x.id}'",
            f"UPDATE audit_events SET sequence = {x.sequence} WHERE id = '{y.id}'",
            f"UPDATE audit_events SET sequence = {y.sequence} WHERE id = '{x.id}'",
        ]
    else:  # swap every column but the position (seq, sequence)
        cols = [c.name for c in EV.columns if c.name not in ("seq", "sequence", "id")]
        sets = ", ".join(f"{c} = o.{c}" for c in cols)
        statements = [
            f"UPDATE audit_events a SET {sets} FROM audit_events o "
            f"WHERE a.seq = {x.seq} AND o.seq = {y.seq} OR a.seq = {y.seq} AND o.seq = {x.seq}",
            f"UPDATE audit_events SET id = 'ZZZZZZZZZZZZZZZZZZZZZZZZZZ' WHERE seq = {x.seq}",
            f"UPDATE audit_events SET id = '{x.id}' WHERE seq = {y.seq}",
            f"UPDATE audit_events SET id = '{y.id}' WHERE seq = {x.seq}",
        ]
    async with tampering(migrated, farm.license_id, statements):
        (finding,) = (await verify_one(migrated, farm.license_id)).findings
        assert (finding.sequence, finding.event_id, finding.problem) == (
            x.sequence,
            y.id,
            audit.Problem.REORDERED,
        )
        assert f"valid at sequence {y.sequence}" in finding.detail


async def test_rewritten_link_is_a_previous_hash_mismatch(
    database: Database, farm: Farm, migrated: str
) -> None:
    """An attacker replaces an event and recomputes its own hash, but not its successors'."""
    await note(database, farm.license_id, 3)
    events = await chain(database, farm.license_id)
    victim = events[2]
    forged = dict(victim.__dict__)
    forged["after"] = {"forged": True}
    new_hash = audit.row_hash(type("Row", (), forged)(), victim.prev_hash)
    sql = (
        f"UPDATE audit_events SET after = '{{\"forged\": true}}', hash = '{new_hash}' "
        f"WHERE id = '{victim.id}'"
    )
    async with tampering(migrated, farm.license_id, [sql]):
        (finding,) = (await verify_one(migrated, farm.license_id)).findings
        assert (finding.sequence, finding.problem) == (
            events[3].sequence,
            audit.Problem.PREVIOUS_HASH_MISMATCH,
        )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET principal = 'mallory' WHERE license_id = :lic",
        "DELETE FROM audit_events WHERE license_id = :lic",
        "TRUNCATE audit_events",
    ],
)
async def test_application_cannot_change_the_trail(database: Database, farm: Farm, statement: str) -> None:
    async def run(uow: UnitOfWork) -> None:
        await uow.session.execute(text(statement), {"lic": farm.license_id})

    with pytest.raises(DBAPIError) as err:
        await database.write(CTX, run)
    assert "append-only" in str(err.value)


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "SEEDLINE_LOG_LEVEL": "warning"}
    return subprocess.run(
        [str(SEEDLINE), "audit", "verify", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_cli_exit_codes_and_broken_link(database: Database, farm: Farm, migrated: str) -> None:
    await note(database, farm.license_id, 3)
    events = await chain(database, farm.license_id)
    ok = await asyncio.to_thread(_cli, migrated, "--license", f"licenses/{farm.license_id}", "--heads")
    assert ok.returncode == 0, ok.stderr
    assert f"OK: {len(events)} events in 1 chains verified" in ok.stdout
    assert f"HEAD licenses/{farm.license_id} sequence {len(events)} hash {events[-1].hash}" in ok.stdout
    target = events[2]
    sql = f"UPDATE audit_events SET principal = 'users/mallory' WHERE id = '{target.id}'"
    async with tampering(migrated, farm.license_id, [sql]):
        broken = await asyncio.to_thread(_cli, migrated, "--license", farm.license_id)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert (
            f"BROKEN licenses/{farm.license_id} sequence {target.sequence} event {target.id}: "
            "content hash mismatch" in broken.stdout
        )
        everything = await asyncio.to_thread(_cli, migrated)
        assert everything.returncode == 1
        assert f"licenses/{farm.license_id} sequence {target.sequence}" in everything.stdout
    whole = await asyncio.to_thread(_cli, migrated)
    assert whole.returncode == 0, whole.stdout + whole.stderr  # every chain the suite wrote is intact


# ---------------------------------------------------------------------------------------------
# Migration 0006 re-chains the pre-0006 global chain


def _migration() -> Any:
    path = db.MIGRATIONS / "versions" / "0006_audit_chains.py"
    spec = importlib.util.spec_from_file_location("audit_chains_0006", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _fresh(pg_url: str, name: str) -> str:
    admin = create_async_engine(pg_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        await conn.execute(text(f"CREATE DATABASE {name}"))
    await admin.dispose()
    return pg_url.replace("/seedline_test?", f"/{name}?")


async def test_migration_rechains_existing_events_per_license(pg_url: str) -> None:
    url = await _fresh(pg_url, "seedline_audit_rechain")
    await db.migrate(url, "0005")
    legacy = _migration()._legacy_hash
    licenses = ["01JD00000000000000000000AA", None, "01JD00000000000000000000BB"]
    engine = create_async_engine(url)
    head = GENESIS_HASH
    async with engine.begin() as conn:
        for i in range(9):
            row = {
                "id": f"01JD0000000000000000000{i:03d}",
                "license_id": licenses[i % 3],
                "event_time": datetime(2026, 1, 1, 0, 0, i, 1000 * i, tzinfo=UTC),
                "principal": "users/old",
                "method": "/old",
                "resource": f"things/{i}",
                "action": "CREATE",
                "before": None,
                "after": {"i": i, "f": 0.5},
                "request_id": "",
            }
            digest = legacy(head, type("Row", (), row)())
            await conn.execute(
                text(
                    "INSERT INTO audit_events (id, license_id, event_time, principal, method, resource,"
                    " action, before, after, request_id, prev_hash, hash) VALUES (:id, :license_id,"
                    " :event_time, :principal, :method, :resource, :action, NULL, CAST(:after AS jsonb),"
                    " :request_id, :p, :h)"
                ),
                {**row, "after": f'{{"i": {i}, "f": 0.5}}', "p": head, "h": digest},
            )
            head = digest
    await db.migrate(url)
    async with engine.connect() as conn:
        report = await audit.verify(conn)
        rows = (await conn.execute(text("SELECT license_id, sequence FROM audit_events ORDER BY seq"))).all()
    assert report.intact, report.findings
    assert report.events == 9
    assert len(report.heads) == 3
    assert [r.sequence for r in rows] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    # The trigger is back on after the re-chaining.
    with pytest.raises(DBAPIError):
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM audit_events"))
    # Down again: the global chain verifies with the old formula.
    await asyncio.to_thread(command.downgrade, db.alembic_config(url), "0005")
    async with engine.connect() as conn:
        old = (await conn.execute(text("SELECT * FROM audit_events ORDER BY seq"))).all()
    prev = GENESIS_HASH
    for r in old:
        assert r.prev_hash == prev
        assert legacy(prev, r) == r.hash
        prev = r.hash
    # A tampered legacy chain stops the upgrade rather than being laundered.
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            text("UPDATE audit_events SET principal = 'mallory' WHERE id = '01JD0000000000000000000004'")
        )
    with pytest.raises(RuntimeError, match="broken at seq"):
        await db.migrate(url)
    forced = db.alembic_config(url)
    forced.cmd_opts = type("Opts", (), {"x": ["audit_rechain=force"]})()  # type: ignore[assignment]
    await asyncio.to_thread(command.upgrade, forced, "head")
    await engine.dispose()


async def test_verify_throughput_figure(
    database: Database, migrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Smoke check (and the figure for docs): rows per second of verify on a small chain."""
    farm = await make_farm(database, f"IT-{uuid.uuid4().hex[:10]}")
    for _ in range(10):
        await note(database, farm.license_id, 50)
    engine = create_async_engine(migrated)
    async with engine.connect() as conn:
        start = time.perf_counter()
        report = await audit.verify(conn, license_id=farm.license_id, one_chain=True)
        elapsed = time.perf_counter() - start
    await engine.dispose()
    assert report.intact
    assert report.events >= 500
    with capsys.disabled():
        print(f"\nverify: {report.events / elapsed:,.0f} events/s")
