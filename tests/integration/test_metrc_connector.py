"""The METRC connector against the fake METRC over TLS, with real PostgreSQL behind the outbox.

Plants are created and grown through the use cases, so every delivery is the one the outbox wrote
in the change's own transaction, delivered by the real worker through the real connector.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.certs import DevPki, write_dev_pki
from seedline_server.config import Settings
from seedline_server.domain import plant as plant_rules
from seedline_server.integrations import metrc_mapping as m
from seedline_server.integrations.fakes import _serve
from seedline_server.integrations.fakes import metrc as fake_metrc
from seedline_server.integrations.limits import SharedLimits
from seedline_server.integrations.registry import Connectors
from seedline_server.integrations.sync import Scheduler, SyncRunner
from seedline_server.integrations.transport import Exchange, Http
from seedline_server.integrations.worker import OutboxWorker, WorkerSettings
from seedline_server.service import integrations as integration_cases
from seedline_server.service import plants
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import db, models
from seedline_server.store import integration_models as im
from tests.support import metrc_load as load
from tests.support.fakes import FakeAdmin

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = WorkerSettings(batch=8, concurrency=8, base_delay=0.01, max_delay=0.05, breaker_threshold=100)


Metrc = FakeAdmin  # the fake METRC, served in this process


@dataclass
class Rig:
    farm: load.Farm
    metrc: Metrc
    connectors: Connectors
    worker: OutboxWorker
    engine: AsyncEngine


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(tmp_path_factory.mktemp("metrc-pki"))


@pytest_asyncio.fixture(loop_scope="session")
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    e = db.make_engine(migrated, pool_size=5)
    yield e
    await e.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def rig(database: Database, engine: AsyncEngine, pki: DevPki) -> AsyncIterator[Rig]:
    facility = f"MC-{uuid.uuid4().hex[:8].upper()}"
    running = await _serve.start(
        fake_metrc.make_app(load.fake_config(facility)),
        host="127.0.0.1",
        port=0,
        cert=pki.server_cert,
        key=pki.server_key,
    )
    url = f"https://127.0.0.1:{running.port}"
    farm = await load.make_farm(database, url, facility)
    http = Http(ca_file=pki.ca_cert, timeout=5)
    connectors = Connectors(
        engine, load.keyring(), http, SharedLimits(engine, "metrc-tests"), settings=Settings()
    )
    worker = OutboxWorker(engine, connectors, FAST, name="metrc-tests", only=[farm.integration_id])
    async with httpx.AsyncClient(
        base_url=url, verify=ssl.create_default_context(cafile=str(pki.ca_cert))
    ) as admin:
        yield Rig(farm, Metrc(url, admin), connectors, worker, engine)
    await http.aclose()
    await running.stop()


async def new_plants(database: Database, farm: load.Farm, n: int) -> list[models.Plant]:
    new = plants.NewPlant("", farm.variety_id, farm.section_id, "", "", plant_rules.Phase.CLONE, None)

    async def run(uow: UnitOfWork) -> list[models.Plant]:
        return await plants.create_plants(uow, farm.license_id, new, n)

    return await database.write(load.CTX, run)


async def grow(database: Database, farm: load.Farm, plant_id: str, phase: plant_rules.Phase) -> None:
    async def run(uow: UnitOfWork) -> None:
        await plants.change_phase(uow, farm.license_id, plant_id, phase, None, "")

    await database.write(load.CTX, run)


async def test_connection_test_reports_what_it_found(rig: Rig) -> None:
    connector: Any = await rig.connectors(rig.farm.integration_id)
    log: list[Exchange] = []
    report = await connector.test(log)
    assert (report.reachable, report.authenticated, report.license_visible) == (True, True, True)
    assert report.latency is not None
    assert log[0].endpoint == "GET /facilities/v2"
    assert log[0].status == "SUCCESS"

    row = await rig.connectors.load(rig.farm.integration_id)
    other = type(row)(
        row.id,
        row.license_id,
        row.kind,
        row.endpoint_uri,
        {**row.config, "facilityLicenseNumber": "NOT-MINE"},
        row.credentials,
        row.version,
    )
    report = await rig.connectors.build(other).test([])  # type: ignore[attr-defined]
    assert (report.reachable, report.authenticated, report.license_visible) == (True, True, False)


async def test_plants_are_registered_then_tagged_and_an_ambiguous_failure_is_looked_up(
    database: Database, rig: Rig
) -> None:
    a, b = await new_plants(database, rig.farm, 2)
    await rig.worker.run_until_idle(within=30)
    state = await rig.metrc.state()
    labels = {m.label_for(a.id), m.label_for(b.id)}
    assert labels <= set(state["plant_batches"])
    assert {state["plant_batches"][x]["Type"] for x in labels} == {"Clone"}

    # The tagging call is applied, then answered with a 500: the retry must look the tag up.
    await rig.metrc.post(
        "/_fake/faults",
        {
            "rules": [
                {
                    "method": "POST",
                    "path_prefix": "/plantbatches/v2/growthphase",
                    "mode": "apply_then_500",
                    "count": 2,
                }
            ]
        },
    )
    await grow(database, rig.farm, a.id, plant_rules.Phase.VEGETATIVE)
    await grow(database, rig.farm, b.id, plant_rules.Phase.VEGETATIVE)
    await rig.worker.run_until_idle(within=30)
    state = await rig.metrc.state()
    async with rig.engine.connect() as conn:
        errors = (
            await conn.execute(
                select(im.Delivery.event_type, im.Delivery.state, im.Delivery.last_error).where(
                    im.Delivery.integration_id == rig.farm.integration_id, im.Delivery.state != "DELIVERED"
                )
            )
        ).all()
    assert not errors, errors
    for label in labels:
        plant = state["plants"][label]
        assert plant["GrowthPhase"] == "Vegetative"
        assert plant["PlantBatchName"] == label
        assert state["create_counts"][f"plant:{label}"] == 1
    assert not [d for d in state["duplicate_attempts"] if d["key"] in labels and d["kind"] != "batch"]
    async with rig.engine.connect() as conn:
        lookups = (
            (
                await conn.execute(
                    select(im.IntegrationLog.summary).where(
                        im.IntegrationLog.integration_id == rig.farm.integration_id,
                        im.IntegrationLog.endpoint.like("GET /plants/v2/%"),
                    )
                )
            )
            .scalars()
            .all()
        )
    assert len(lookups) == 2  # one look-before-resend per ambiguous failure, and they found the tags

    # Flowering is a PUT to the tagged plant.
    await grow(database, rig.farm, a.id, plant_rules.Phase.FLOWERING)
    await rig.worker.run_until_idle(within=30)
    assert (await rig.metrc.state())["plants"][m.label_for(a.id)]["GrowthPhase"] == "Flowering"


async def run_sync(rig: Rig, database: Database, **kw: Any) -> str:
    async def ask(uow: UnitOfWork) -> str:
        run = await integration_cases.request_sync(
            uow, rig.farm.license_id, rig.farm.integration_id, integration_cases.SyncRequest(**kw)
        )
        return run.id

    run_id = await database.write(load.CTX, ask)
    runner = SyncRunner(rig.engine, rig.connectors)
    for _ in range(50):
        async with rig.engine.connect() as conn:
            state = await conn.scalar(select(im.SyncRun.state).where(im.SyncRun.id == run_id))
        if state in ("SUCCEEDED", "FAILED", "PARTIALLY_SUCCEEDED"):
            return run_id
        await runner.run_one()
    raise AssertionError(f"sync run {run_id} did not finish: {state}")


async def test_reconciliation_lists_every_kind_of_difference_and_push_resends(
    database: Database, rig: Rig
) -> None:
    synced, drifted, unsent = await new_plants(database, rig.farm, 3)
    await rig.worker.run_until_idle(within=30)
    for p in (synced, drifted, unsent):
        await grow(database, rig.farm, p.id, plant_rules.Phase.VEGETATIVE)
    await rig.worker.run_until_idle(within=30)
    state = await rig.metrc.state()
    async with rig.engine.connect() as conn:
        dbg = (
            await conn.execute(
                select(im.IntegrationLog.endpoint, im.IntegrationLog.status, im.IntegrationLog.summary).where(
                    im.IntegrationLog.integration_id == rig.farm.integration_id
                )
            )
        ).all()
    assert {m.label_for(p.id) for p in (synced, drifted, unsent)} <= set(state["plants"]), dbg
    # Now METRC loses one of ours, has one of ours in another phase, and has a plant Seedline
    # never had.
    stranger = "1A4FF0100000022000099999"
    now = datetime.now(UTC).isoformat()
    await rig.metrc.post("/_fake/reset", {})
    await rig.metrc.post(
        "/_fake/seed",
        {
            "plants": [
                {"Label": stranger, "GrowthPhase": "Vegetative", "LastModified": now},
                {"Label": m.label_for(drifted.id), "GrowthPhase": "Flowering", "LastModified": now},
                {"Label": m.label_for(synced.id), "GrowthPhase": "Vegetative", "LastModified": now},
            ]
        },
    )

    run_id = await run_sync(rig, database, scopes=("PLANTS",), mode="FULL", direction="PULL")
    async with rig.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(im.SyncDifference.kind, im.SyncDifference.remote_id).where(
                    im.SyncDifference.sync_run_id == run_id
                )
            )
        ).all()
        pages = (
            await conn.execute(
                text("SELECT count(*) FROM integration_logs WHERE sync_run_id = :r"), {"r": run_id}
            )
        ).scalar_one()
    found = {(kind, label) for kind, label in rows}
    assert ("MISSING_LOCAL", stranger) in found
    assert ("PHASE_MISMATCH", m.label_for(drifted.id)) in found
    assert ("MISSING_REMOTE", m.label_for(unsent.id)) in found
    assert not any(label == m.label_for(synced.id) for _, label in found)
    assert pages >= 3  # vegetative, flowering and on-hold lists, paged

    # A PUSH re-sends what METRC lacks through the outbox, looked up first.
    await run_sync(rig, database, scopes=("PLANTS",), mode="FULL", direction="PUSH")
    await rig.worker.run_until_idle(within=30)
    state = await rig.metrc.state()
    assert state["plants"][m.label_for(unsent.id)]["GrowthPhase"] == "Vegetative"


async def test_incremental_pulls_stay_inside_24_hour_windows(database: Database, rig: Rig) -> None:
    since = datetime.now(UTC) - timedelta(hours=60)
    run_id = await run_sync(
        rig, database, scopes=("PLANTS",), mode="INCREMENTAL", direction="PULL", since=since
    )
    async with rig.engine.connect() as conn:
        state, error = (
            await conn.execute(
                select(im.SyncRun.state, im.SyncRun.error_detail).where(im.SyncRun.id == run_id)
            )
        ).one()
        calls = (
            await conn.execute(
                text("SELECT count(*) FROM integration_logs WHERE sync_run_id = :r AND status = 'SUCCESS'"),
                {"r": run_id},
            )
        ).scalar_one()
    assert state == "SUCCEEDED", error
    assert calls >= 3 * 3  # 60 hours = 3 windows, each over the three plant lists


async def test_schedule_plants_every_4_hours_inventory_daily_and_a_weekly_full_sync(
    database: Database, rig: Rig
) -> None:
    scheduler = Scheduler(rig.engine)
    runner = SyncRunner(rig.engine, rig.connectors)

    async def due_at(at: datetime) -> tuple[str, list[str], datetime | None] | None:
        await scheduler.tick(at)
        async with rig.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(im.SyncRun.id, im.SyncRun.mode, im.SyncRun.scopes, im.SyncRun.since_time).where(
                        im.SyncRun.integration_id == rig.farm.integration_id, im.SyncRun.state == "QUEUED"
                    )
                )
            ).first()
        if row is None:
            return None
        for _ in range(50):  # run it (and whatever else is queued) to the end
            async with rig.engine.connect() as conn:
                state = await conn.scalar(select(im.SyncRun.state).where(im.SyncRun.id == row.id))
            if state != "QUEUED" and state != "RUNNING":
                assert state == "SUCCEEDED", state
                return row.mode, sorted(row.scopes), row.since_time
            await runner.run_one()
        raise AssertionError("the scheduled run did not finish")

    # The scheduler is asked at simulated times; runs record their real completion time, t0.
    t0 = datetime.now(UTC)
    assert await due_at(t0) == ("FULL", ["INVENTORY", "PLANTS"], None)  # never synced: a full run
    assert await due_at(t0 + timedelta(hours=1)) is None
    mode, scopes, since = await due_at(t0 + timedelta(hours=4, minutes=1)) or ("", [], None)
    assert (mode, scopes) == ("INCREMENTAL", ["PLANTS"])
    assert since is not None
    assert since >= t0 - timedelta(minutes=1)
    daily = await due_at(t0 + timedelta(days=1, minutes=1))
    assert daily is not None
    assert daily[:2] == ("INCREMENTAL", ["INVENTORY", "PLANTS"])
    weekly = await due_at(t0 + timedelta(days=7, minutes=1))
    assert weekly is not None
    assert weekly[:2] == ("FULL", ["INVENTORY", "PLANTS"])
