"""10,000 plant registrations to the fake METRC through 5% injected failures and a SIGKILLed worker.

Everything is real and separate: PostgreSQL, the fake METRC (its own process, TLS), and three
`seedline worker` processes, one of which is killed with SIGKILL while it holds claimed
deliveries. Failures injected at the fake: plain 500s (nothing applied), 500s and dropped
connections *after* applying (the ambiguous case), and timeouts. The fake refuses a second batch
of the same name and counts every creation, so "exactly once" is read from the fake itself.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.certs import write_dev_pki
from seedline_server.integrations import metrc_mapping
from seedline_server.service.uow import Database
from seedline_server.store import db, models
from seedline_server.store import integration_models as im
from tests.support import metrc_load as load
from tests.support.fakes import FakeProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")

PLANTS = 10_000
FAULTS = {
    "seed": 20261206,
    "rules": [
        {
            "method": "POST",
            "path_prefix": "/plantbatches/v2/plantings",
            "mode": "error500",
            "probability": 0.02,
        },
        {
            "method": "POST",
            "path_prefix": "/plantbatches/v2/plantings",
            "mode": "apply_then_500",
            "probability": 0.015,
        },
        {
            "method": "POST",
            "path_prefix": "/plantbatches/v2/plantings",
            "mode": "apply_then_timeout",
            "probability": 0.01,
            "delay_s": 2.0,
        },
        {
            "method": "POST",
            "path_prefix": "/plantbatches/v2/plantings",
            "mode": "timeout",
            "probability": 0.005,
            "delay_s": 2.0,
        },
    ],
}


@pytest_asyncio.fixture(loop_scope="session")
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    e = db.make_engine(migrated, pool_size=4)
    yield e
    await e.dispose()


@pytest.mark.timeout(600)
async def test_ten_thousand_registrations_arrive_exactly_once(
    database: Database, migrated: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    pki = write_dev_pki(tmp_path / "pki")
    number = f"LOAD-{uuid.uuid4().hex[:8].upper()}"
    # Limits raised so the test is about faults, not pacing (the benchmark keeps METRC's).
    fake = FakeProcess(
        "metrc",
        pki.server_cert,
        pki.server_key,
        pki.ca_cert,
        config=load.fake_config(number, get_rate=2000, rate=2000, concurrent=64),
        workdir=tmp_path,
    ).start()
    workers = []
    try:
        farm = await load.make_farm(database, fake.base_url, number)
        fake.post("/_fake/faults", FAULTS)
        created_s = await load.create_plants(database, farm, PLANTS)
        print(f"\ncreated {PLANTS} plants (and their outbox rows) in {created_s:.1f} s")
        t0 = time.monotonic()
        env = load.worker_env(
            migrated,
            pki.ca_cert,
            {
                "SEEDLINE_INTEGRATION_TIMEOUT_SECONDS": "1",
                "SEEDLINE_OUTBOX_CONCURRENCY": "24",
                "SEEDLINE_OUTBOX_BASE_DELAY_SECONDS": "0.05",
                "SEEDLINE_OUTBOX_MAX_DELAY_SECONDS": "0.5",
                "SEEDLINE_OUTBOX_LEASE_SECONDS": "3",
                "SEEDLINE_OUTBOX_MAX_ATTEMPTS": "40",
                "SEEDLINE_BREAKER_COOLDOWN_SECONDS": "0.5",
                "SEEDLINE_METRC_RATE_PER_VENDOR_KEY": "2000",
                "SEEDLINE_METRC_GET_RATE_PER_FACILITY": "2000",
                "SEEDLINE_METRC_CONCURRENCY_PER_FACILITY": "48",
            },
        )
        log = tmp_path / "workers.log"
        workers = [load.start_worker(env, log), load.start_worker(env, log)]
        # Kill one worker with SIGKILL once a third is through: it dies holding claimed rows.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = await load.delivery_states(engine, farm.integration_id)
            if states.get("DELIVERED", 0) >= PLANTS // 3:
                break
            await asyncio.sleep(0.2)
        in_flight_at_kill = (await load.delivery_states(engine, farm.integration_id)).get("IN_FLIGHT", 0)
        workers[0].kill()
        workers[0].wait()
        workers.append(load.start_worker(env, log))

        states = await load.wait_delivered(engine, farm.integration_id, PLANTS, within=300)
        print(f"delivered in {time.monotonic() - t0:.1f} s: {states}")
        assert states == {"DELIVERED": PLANTS}, (states, log.read_text()[-3000:])

        async with engine.connect() as conn:
            ids = (
                await conn.scalars(select(models.Plant.id).where(models.Plant.license_id == farm.license_id))
            ).all()
            retried, extra_attempts = (
                await conn.execute(
                    select(
                        func.count().filter(im.Delivery.attempts > 1), func.sum(im.Delivery.attempts - 1)
                    ).where(im.Delivery.integration_id == farm.integration_id)
                )
            ).one()
        expected = {metrc_mapping.label_for(i) for i in ids}
        assert len(expected) == PLANTS

        state = fake.state()
        batches = state["plant_batches"]
        assert set(batches) == expected  # none lost, nothing else
        counts = state["create_counts"]
        doubled = {k: n for k, n in counts.items() if n != 1}
        assert not doubled, list(doubled.items())[:10]  # none doubled
        assert sum(1 for k in counts if k.startswith("batch:")) == PLANTS
        # The faults really happened, and the ambiguous ones were resolved by METRC's refusal of a
        # second batch of the same name (counted by the fake, applied never).
        with fake.client() as admin:
            fired = admin.get("/_fake/faults").json()["fired"]
        assert all(fired[m] > 0 for m in ("error500", "apply_then_500", "apply_then_timeout", "timeout")), (
            fired
        )
        assert sum(fired.values()) >= PLANTS * 0.03
        assert len(state["duplicate_attempts"]) >= fired["apply_then_500"]
        assert extra_attempts >= sum(fired.values())  # every fault cost its delivery an attempt
        print(
            f"\n{PLANTS} plants: faults fired {fired}; {in_flight_at_kill} in flight when a worker was "
            f"SIGKILLed; {retried} deliveries needed more than one attempt ({extra_attempts} extra); "
            f"{len(state['duplicate_attempts'])} re-sends refused by the fake as duplicates"
        )
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                try:
                    w.wait(10)
                except Exception:
                    w.kill()
        fake.stop()
