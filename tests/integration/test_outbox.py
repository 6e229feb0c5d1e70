"""The outbox against real PostgreSQL: enqueue in the change's transaction, claim, order, retry.

The remote is a recording stand-in (a connector object), so these tests pin the worker's own
rules: per-resource order, leases, backoff, dead letters, the circuit breaker, several workers
sharing rows, and the shared limits. The real connectors meet real fake remotes in tests/e2e.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from ulid import ULID

from seedline_server.domain import plant as plant_rules
from seedline_server.integrations import limits
from seedline_server.integrations.connector import Job, Outcome
from seedline_server.integrations.limits import KEEP_SECONDS, Bucket, SharedLimits
from seedline_server.integrations.transport import Exchange, RemoteError
from seedline_server.integrations.worker import OutboxWorker, WorkerSettings, backoff
from seedline_server.service import plants
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import db
from seedline_server.store import integration_models as im
from tests.integration.conftest import CTX, Farm
from tests.support.integrations import insert_integration

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = WorkerSettings(
    batch=16, concurrency=16, base_delay=0.05, max_delay=0.2, breaker_threshold=3, breaker_cooldown=0.3
)


@pytest_asyncio.fixture(loop_scope="session")
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    e = db.make_engine(migrated, pool_size=10)
    yield e
    await e.dispose()


async def add_integration(
    database: Database, farm: Farm, kind: str = "WEBHOOK", events: list[str] | None = None
) -> str:
    return await insert_integration(
        database,
        CTX,
        farm.license_id,
        kind,
        endpoint_uri="" if kind == "WEBHOOK" else "https://remote.invalid",
        events=events if events is not None else ["plant.updated", "lot.updated"],
    )


async def enqueue(engine: AsyncEngine, iid: str, license_id: str, resources: list[str]) -> list[str]:
    """Deliveries straight into the outbox, in list order (ids increase)."""
    ids = []
    t = datetime.now(UTC)
    async with engine.begin() as conn:
        for res in resources:
            did = str(ULID())
            ids.append(did)
            await conn.execute(
                im.Delivery.__table__.insert().values(
                    id=did,
                    integration_id=iid,
                    license_id=license_id,
                    event_type="plant.updated",
                    resource=res,
                    ordering_key=res,
                    payload={"n": len(ids)},
                    state="PENDING",
                    attempts=0,
                    next_attempt_time=t,
                    create_time=t,
                )
            )
            await asyncio.sleep(0.002)  # ULIDs of one millisecond are not ordered
    return ids


@dataclass
class Remote:
    """A recording remote with scripted failures per delivery id (a list of errors to raise)."""

    got: list[tuple[str, str, int, bool]] = field(default_factory=list)
    fail: dict[str, list[RemoteError]] = field(default_factory=lambda: defaultdict(list))
    probe_ok: bool = True
    probes: int = 0
    delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0

    async def deliver(self, job: Job, log: list[Exchange]) -> Outcome:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail.get(job.id):
                raise self.fail[job.id].pop(0)
            self.got.append((job.id, job.resource, job.attempt, job.look_first))
            return Outcome(summary="ok")
        finally:
            self.in_flight -= 1

    async def probe(self, log: list[Exchange]) -> None:
        self.probes += 1
        if not self.probe_ok:
            raise RemoteError("still down", retryable=True, maybe_sent=False)


def new_plant(farm: Farm) -> plants.NewPlant:
    return plants.NewPlant("", farm.variety_id, farm.section_id, "", "", plant_rules.Phase.CLONE, None)


def worker(engine: AsyncEngine, remote: Remote, iid: str, settings: WorkerSettings = FAST) -> OutboxWorker:
    async def source(_: str) -> Remote:
        return remote

    return OutboxWorker(engine, source, settings, only=[iid])  # type: ignore[arg-type]


def transient() -> RemoteError:
    return RemoteError("503 from remote", retryable=True, maybe_sent=True, status=503)


async def states(engine: AsyncEngine, ids: list[str]) -> dict[str, tuple[str, int, str]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(im.Delivery.id, im.Delivery.state, im.Delivery.attempts, im.Delivery.last_error).where(
                    im.Delivery.id.in_(ids)
                )
            )
        ).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_a_change_and_its_delivery_commit_together(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    iid = await add_integration(database, farm, events=["plant.updated"])

    async def create(uow: UnitOfWork) -> str:
        (row,) = await plants.create_plants(uow, farm.license_id, new_plant(farm))
        return row.id

    plant_id = await database.write(CTX, create)

    async def create_then_fail(uow: UnitOfWork) -> None:
        await plants.create_plants(uow, farm.license_id, new_plant(farm))
        await uow.chain_audit()  # the outbox rows are written here...
        raise RuntimeError("...and rolled back with the change")

    with pytest.raises(RuntimeError):
        await database.write(CTX, create_then_fail)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(im.Delivery.resource, im.Delivery.event_type, im.Delivery.payload).where(
                    im.Delivery.integration_id == iid
                )
            )
        ).all()
    assert [(r[0], r[1]) for r in rows] == [
        (f"licenses/{farm.license_id}/plants/{plant_id}", "plant.updated")
    ]
    assert rows[0][2]["verb"] == "CREATE"
    assert rows[0][2]["after"]["id"] == plant_id


async def test_unsubscribed_and_disabled_integrations_get_nothing(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    lots_only = await add_integration(database, farm, events=["lot.updated"])
    off = await add_integration(database, farm, events=["plant.updated"])
    async with engine.begin() as conn:
        await conn.execute(update(im.Integration).where(im.Integration.id == off).values(enabled=False))

    async def create(uow: UnitOfWork) -> None:
        await plants.create_plants(uow, farm.license_id, new_plant(farm))

    await database.write(CTX, create)
    async with engine.connect() as conn:
        n = (
            await conn.execute(
                select(func.count())
                .select_from(im.Delivery)
                .where(im.Delivery.integration_id.in_([lots_only, off]))
            )
        ).scalar_one()
    assert n == 0


async def test_one_resource_in_order_while_others_proceed(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    iid = await add_integration(database, farm)
    a1, a2, a3 = await enqueue(engine, iid, farm.license_id, ["r/a", "r/a", "r/a"])
    (b1,) = await enqueue(engine, iid, farm.license_id, ["r/b"])
    remote = Remote()
    remote.fail[a1] = [transient(), transient()]
    await worker(engine, remote, iid).run_until_idle(within=30)
    order = [d for d, res, _, _ in remote.got if res == "r/a"]
    assert order == [a1, a2, a3]
    # b was not held back by a's failures: it went out before a1 finally succeeded.
    ids = [d for d, *_ in remote.got]
    assert ids.index(b1) < ids.index(a1)
    # a1 needed three attempts; the retries look before resending (503 may have been applied).
    a1_delivery = next(x for x in remote.got if x[0] == a1)
    assert a1_delivery[2] == 3
    assert a1_delivery[3] is True
    s = await states(engine, [a1, a2, a3, b1])
    assert {v[0] for v in s.values()} == {"DELIVERED"}
    async with engine.connect() as conn:
        logged = (
            await conn.execute(
                select(func.count())
                .select_from(im.IntegrationLog)
                .where(im.IntegrationLog.integration_id == iid)
            )
        ).scalar_one()
    assert logged == 0  # the stand-in records no exchanges; real connectors do (tests/e2e)


async def test_dead_letter_holds_back_the_resource_until_retried(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    iid = await add_integration(database, farm)
    d1, d2 = await enqueue(engine, iid, farm.license_id, ["r/x", "r/x"])
    (other,) = await enqueue(engine, iid, farm.license_id, ["r/y"])
    remote = Remote()
    remote.fail[d1] = [RemoteError("400 from remote: bad tag", retryable=False, maybe_sent=False, status=400)]
    await worker(engine, remote, iid).run_until_idle(within=30)
    s = await states(engine, [d1, d2, other])
    assert s[d1][0] == "DEAD_LETTER"
    assert "bad tag" in s[d1][2]
    assert s[d2][0] == "PENDING"  # never sent: it waits behind the dead letter
    assert s[other][0] == "DELIVERED"
    # The operator fixes the cause and retries the dead letter: both go, in order.
    async with engine.begin() as conn:
        await conn.execute(
            update(im.Delivery).where(im.Delivery.id == d1).values(state="PENDING", attempts=0)
        )
    await worker(engine, remote, iid).run_until_idle(within=30)
    assert [d for d, res, *_ in remote.got if res == "r/x"] == [d1, d2]


async def test_attempts_run_out_into_the_dead_letter_queue(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    iid = await add_integration(database, farm)
    (d,) = await enqueue(engine, iid, farm.license_id, ["r/z"])
    remote = Remote()
    remote.fail[d] = [RemoteError("timeout", retryable=True, maybe_sent=True, counts_for_breaker=False)] * 3
    settings = WorkerSettings(max_attempts=3, base_delay=0.01, max_delay=0.02, breaker_threshold=100)
    await worker(engine, remote, iid, settings).run_until_idle(within=30)
    assert (await states(engine, [d]))[d][:2] == ("DEAD_LETTER", 3)


async def test_breaker_opens_probes_and_closes(database: Database, farm: Farm, engine: AsyncEngine) -> None:
    iid = await add_integration(database, farm)
    ids = await enqueue(engine, iid, farm.license_id, [f"r/{i}" for i in range(4)])
    remote = Remote(probe_ok=False)
    for d in ids:
        remote.fail[d] = [transient()]
    w = worker(engine, remote, iid)
    # Three failures open the breaker; then nothing is claimed for it (run_until_idle returns).
    await w.run_until_idle(within=10)
    async with engine.connect() as conn:
        state = (
            await conn.execute(select(im.Integration.breaker_state).where(im.Integration.id == iid))
        ).scalar_one()
    assert state == "OPEN"
    sent_before = len(remote.got)
    await asyncio.sleep(0.4)  # past the cool-down: the probe runs and fails → OPEN again
    w._last_probe = 0.0
    await w._probe_half_open()
    assert remote.probes == 1
    async with engine.connect() as conn:
        assert (
            await conn.execute(select(im.Integration.breaker_state).where(im.Integration.id == iid))
        ).scalar_one() == "OPEN"
    assert len(remote.got) == sent_before
    remote.probe_ok = True
    await asyncio.sleep(0.4)
    w._last_probe = 0.0
    await w.run_until_idle(within=30)
    async with engine.connect() as conn:
        assert (
            await conn.execute(select(im.Integration.breaker_state).where(im.Integration.id == iid))
        ).scalar_one() == "CLOSED"
    assert {v[0] for v in (await states(engine, ids)).values()} == {"DELIVERED"}


async def test_a_dead_workers_claims_are_taken_over_and_looked_up(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    iid = await add_integration(database, farm)
    (d,) = await enqueue(engine, iid, farm.license_id, ["r/lease"])
    dying = worker(engine, Remote(), iid, WorkerSettings(lease_seconds=0.2))
    claimed = await dying._claim(5)  # claims and then "dies": never reports back
    assert [j.id for j in claimed] == [d]
    assert claimed[0].look_first is False
    remote = Remote()
    await asyncio.sleep(0.3)
    await worker(engine, remote, iid).run_until_idle(within=30)
    assert remote.got == [(d, "r/lease", 2, True)]


async def test_two_workers_share_the_work_exactly_once_in_order(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    iid = await add_integration(database, farm)
    resources = [f"r/{i % 20}" for i in range(300)]
    ids = await enqueue_many(engine, iid, farm.license_id, resources)
    remote = Remote(delay=0.002)
    for d in ids[::17]:
        remote.fail[d] = [transient()]
    w1, w2 = worker(engine, remote, iid), worker(engine, remote, iid)
    await asyncio.gather(w1.run_until_idle(within=60), w2.run_until_idle(within=60))
    delivered = [d for d, *_ in remote.got]
    assert sorted(delivered) == sorted(ids)
    assert len(set(delivered)) == len(ids)
    position = {d: i for i, d in enumerate(delivered)}
    for res in set(resources):
        mine = [d for d, r in zip(ids, resources, strict=True) if r == res]
        assert [position[d] for d in mine] == sorted(position[d] for d in mine), res
    assert w1.delivered + w2.delivered == len(ids)


async def enqueue_many(engine: AsyncEngine, iid: str, license_id: str, resources: list[str]) -> list[str]:
    t = datetime.now(UTC)
    base = int(time.time() * 1000)
    rows = [
        {
            "id": str(ULID.from_timestamp((base + i) / 1000)),
            "integration_id": iid,
            "license_id": license_id,
            "event_type": "plant.updated",
            "resource": res,
            "ordering_key": res,
            "payload": {},
            "state": "PENDING",
            "attempts": 0,
            "next_attempt_time": t,
            "create_time": t,
        }
        for i, res in enumerate(resources)
    ]
    async with engine.begin() as conn:
        await conn.execute(im.Delivery.__table__.insert(), rows)
    return [r["id"] for r in rows]


async def test_backoff_grows_is_capped_and_jittered() -> None:
    import random

    rng = random.Random(7)
    delays = [backoff(a, 1.0, 60.0, rng) for a in range(1, 12)]
    for attempt, delay in enumerate(delays, 1):
        top = min(60.0, 2 ** (attempt - 1))
        assert top / 2 <= delay < top
    assert len({round(d, 6) for d in delays}) == len(delays)


async def test_shared_bucket_spaces_callers_at_the_rate(engine: AsyncEngine) -> None:
    key = f"test:{ULID()}"
    limits_a, limits_b = SharedLimits(engine, "a"), SharedLimits(engine, "b")
    bucket = Bucket(key, rate=100.0, burst=1.0)
    t0 = time.perf_counter()
    await asyncio.gather(*(lim.take([bucket]) for lim in [limits_a, limits_b] * 30))
    elapsed = time.perf_counter() - t0
    # 60 tokens at 100/s with a burst of 1: at least 0.59 s, whichever process takes them.
    assert 0.55 <= elapsed < 2.0, elapsed
    # Callers waiting together are served by one statement that takes all their tokens.
    assert limits_a.round_trips + limits_b.round_trips < 20


async def test_concurrency_slots_bound_in_flight_calls(engine: AsyncEngine) -> None:
    key = f"test:{ULID()}"
    now_in, peak = 0, 0

    async def call(lim: SharedLimits) -> None:
        nonlocal now_in, peak
        async with lim.slot(key, 3):
            now_in += 1
            peak = max(peak, now_in)
            await asyncio.sleep(0.05)
            now_in -= 1

    holders = [SharedLimits(engine, f"h{i}") for i in range(4)]
    await asyncio.gather(*(call(holders[i % 4]) for i in range(24)))
    assert peak == 3
    assert sum(h.slot_claims for h in holders) < 24  # a released slot is reused by its process
    await asyncio.sleep(KEEP_SECONDS * 3)  # slots nobody reuses go back to the database
    async with engine.connect() as conn:
        held = (
            await conn.execute(
                text("SELECT count(*) FROM concurrency_slots WHERE key = :k AND holder IS NOT NULL"),
                {"k": key},
            )
        ).scalar_one()
    assert held == 0


async def test_a_slot_kept_again_is_kept_for_its_whole_keep_time(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "KEEP_SECONDS", 1.0)
    key = f"test:{ULID()}"
    lim = SharedLimits(engine, "keeper")
    async with lim.slot(key, 1):
        pass
    await asyncio.sleep(0.6)
    async with lim.slot(key, 1):  # reused, and kept again until 1.6 s
        pass
    await asyncio.sleep(0.6)  # past the first keep's timer (1.0 s), not the second's
    async with lim.slot(key, 1):
        pass
    assert lim.slot_claims == 1
    await lim.close()


async def test_an_expired_slot_lease_is_reclaimed(engine: AsyncEngine) -> None:
    key = f"test:{ULID()}"
    dead = SharedLimits(engine, "dead")
    ctx = dead.slot(key, 1, lease_seconds=0.2)
    await ctx.__aenter__()  # a worker that dies holding the only slot
    t0 = time.perf_counter()
    async with SharedLimits(engine, "alive").slot(key, 1):
        waited = time.perf_counter() - t0
    assert 0.1 <= waited < 2.0
