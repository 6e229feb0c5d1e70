"""IntegrationService use cases against real PostgreSQL: CRUD with sealed credentials, update masks,
etags, the one-state-system rule, redaction in audit events and logs, sync runs, dead letters, and
the connection test against a real TLS receiver on a loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from aiohttp import web
from seedline.integration.v1 import integration_pb2 as pb
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from ulid import ULID

from seedline_server.certs import write_dev_pki
from seedline_server.config import Settings
from seedline_server.crypto import KeyRing
from seedline_server.domain.errors import (
    AlreadyExists,
    DependencyUnavailable,
    EtagMismatch,
    FailedPrecondition,
    InvalidArgument,
    InvalidPageToken,
    InvalidStateTransition,
    InvalidUpdateMask,
    NotFound,
)
from seedline_server.integrations import signing
from seedline_server.integrations.fakes import _serve
from seedline_server.integrations.limits import SharedLimits
from seedline_server.integrations.registry import Connectors
from seedline_server.integrations.sync import SYNC_CHANNEL
from seedline_server.integrations.transport import Http
from seedline_server.service import integrations as uc
from seedline_server.service import outbox
from seedline_server.service.registry import etag
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import db, models
from seedline_server.store import integration_models as im
from tests.integration.conftest import CTX, Farm

pytestmark = pytest.mark.asyncio(loop_scope="session")

T = TypeVar("T")
SECRET = "whsec-" + "s3cr3t-webhook-signing-value-0123456789"
VENDOR_KEY = "vendor-key-that-must-never-show-up"
USER_KEY = "user-key-that-must-never-show-up"
KEYRING = KeyRing({"it": os.urandom(32)}, "it")


@pytest_asyncio.fixture(loop_scope="session")
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    e = db.make_engine(migrated, pool_size=5)
    yield e
    await e.dispose()


async def write(database: Database, fn: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    return await database.write(CTX, fn)


async def read(database: Database, fn: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    return await database.read(CTX, fn)


def webhook_spec(url: str = "https://hooks.example.com/seedline", **kw: Any) -> uc.Spec:
    config = pb.WebhookConfig(
        url=url, events=[pb.WEBHOOK_EVENT_TRANSFER_COMMITTED, pb.WEBHOOK_EVENT_LAB_RESULT_UPDATED]
    )
    fields: dict[str, Any] = {
        "kind": "WEBHOOK",
        "display_name": "Hooks",
        "endpoint_uri": "",
        "enabled": True,
        "config": config,
        "credentials": pb.Credentials(webhook=pb.WebhookCredentials(signing_secret=SECRET)),
    }
    fields.update(kw)
    return uc.Spec(**fields)


def metrc_spec(**kw: Any) -> uc.Spec:
    fields: dict[str, Any] = {
        "kind": "METRC",
        "display_name": "Metrc Colorado",
        "endpoint_uri": "https://api-co.metrc.example",
        "enabled": True,
        "config": pb.MetrcConfig(
            state_code="CO", facility_license_number="403-X0001", api_version=pb.METRC_API_VERSION_V2
        ),
        "credentials": pb.Credentials(metrc=pb.MetrcCredentials(vendor_key=VENDOR_KEY, user_key=USER_KEY)),
    }
    fields.update(kw)
    return uc.Spec(**fields)


async def create(database: Database, farm: Farm, spec: uc.Spec) -> uc.View:
    return await write(database, lambda uow: uc.create_integration(uow, KEYRING, farm.license_id, spec))


async def audit_of(engine: AsyncEngine, resource: str) -> list[tuple[str, Any, Any]]:
    ev = models.AuditEvent
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(ev.action, ev.before, ev.after).where(ev.resource == resource).order_by(ev.seq)
            )
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def opened(row: im.Integration) -> pb.Credentials:
    assert row.credentials is not None
    name = uc.integration_name(row.license_id, row.id)
    return pb.Credentials.FromString(KEYRING.open(row.credentials, name.encode()))


async def stored(engine: AsyncEngine, integration_id: str) -> im.Integration | None:
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(engine) as session:
        return await session.get(im.Integration, integration_id)


# --- create, read ------------------------------------------------------------------------------


async def test_create_seals_credentials_and_audits_without_them(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    view = await create(database, farm, webhook_spec())
    row = view.row
    assert row.kind == "WEBHOOK"
    assert row.events == ["transfer.committed", "lab_result.updated"]
    assert row.credentials is not None
    assert SECRET.encode() not in row.credentials
    assert opened(row).webhook.signing_secret == SECRET
    assert row.credentials_update_time is not None
    # Bound to its owner: the envelope does not open under another integration's name.
    with pytest.raises(Exception, match="does not authenticate"):
        KEYRING.open(row.credentials, uc.integration_name(farm.license_id, str(ULID())).encode())

    name = uc.integration_name(farm.license_id, row.id)
    ((action, before, after),) = await audit_of(engine, name)
    assert action == "CREATE"
    assert before is None
    assert after["credentials"] == "***"
    assert after["credentials_set"] is True
    assert SECRET not in json.dumps(after)
    assert after["events"] == ["transfer.committed", "lab_result.updated"]


async def test_every_webhook_event_maps_to_a_delivered_type() -> None:
    values = [v.number for v in pb.WebhookEvent.DESCRIPTOR.values if v.number]
    assert sorted(uc.WEBHOOK_EVENT_TYPES) == values
    assert set(uc.WEBHOOK_EVENT_TYPES.values()) == set(outbox.WEBHOOK_TYPES)


async def test_credentials_are_optional_at_create(database: Database, farm: Farm) -> None:
    view = await create(database, farm, webhook_spec(credentials=None))
    assert view.row.credentials is None
    assert view.row.credentials_update_time is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (metrc_spec(config=pb.BioTrackConfig(ubi="123456789", location="1")), "integration.metrc"),
        (
            metrc_spec(credentials=pb.Credentials(webhook=pb.WebhookCredentials(signing_secret=SECRET))),
            "integration.credentials.metrc",
        ),
        (webhook_spec(endpoint_uri="https://nope.example"), "integration.endpoint_uri"),
        (metrc_spec(endpoint_uri=""), "integration.endpoint_uri"),
        (metrc_spec(display_name="  "), "integration.display_name"),
    ],
)
async def test_fields_must_fit_the_kind(database: Database, farm: Farm, spec: uc.Spec, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await create(database, farm, spec)
    assert field in [v.field for v in err.value.violations]


async def test_one_state_system_per_license(database: Database, farm: Farm) -> None:
    first = await create(database, farm, metrc_spec())
    with pytest.raises(AlreadyExists) as err:
        await create(database, farm, metrc_spec())
    assert "at most one METRC or BioTrackTHC" in err.value.message
    assert first.row.id in err.value.message
    biotrack = uc.Spec(
        kind="BIOTRACKTHC",
        display_name="BT",
        endpoint_uri="https://bt.example/serverjson.asp",
        enabled=True,
        config=pb.BioTrackConfig(ubi="123456789", location="12"),
    )
    with pytest.raises(AlreadyExists):
        await create(database, farm, biotrack)
    # Webhooks and LIMS are not state systems: any number of them.
    await create(database, farm, webhook_spec())
    await create(database, farm, webhook_spec())


async def test_get_and_list_with_kind_filter_and_paging(database: Database, farm: Farm) -> None:
    hooks = [await create(database, farm, webhook_spec(display_name=f"H{n}")) for n in range(3)]
    metrc = await create(database, farm, metrc_spec())

    got = await read(database, lambda uow: uc.get_integration(uow, farm.license_id, metrc.row.id))
    assert got.row.id == metrc.row.id
    assert got.dead_letters == 0
    assert got.latest_run is None

    page1, token = await read(
        database, lambda uow: uc.list_integrations(uow, farm.license_id, "WEBHOOK", 2, "")
    )
    assert [v.row.id for v in page1] == [h.row.id for h in hooks[:2]]
    assert token
    page2, last = await read(
        database, lambda uow: uc.list_integrations(uow, farm.license_id, "WEBHOOK", 2, token)
    )
    assert [v.row.id for v in page2] == [hooks[2].row.id]
    assert last == ""
    everything, _ = await read(database, lambda uow: uc.list_integrations(uow, farm.license_id, "", 0, ""))
    assert {v.row.kind for v in everything} == {"WEBHOOK", "METRC"}
    with pytest.raises(InvalidPageToken):
        await read(database, lambda uow: uc.list_integrations(uow, farm.license_id, "METRC", 2, token))


async def test_unknown_or_other_license_is_not_found(database: Database, farm: Farm) -> None:
    view = await create(database, farm, webhook_spec())
    other = str(ULID())
    with pytest.raises(NotFound):
        await read(database, lambda uow: uc.get_integration(uow, farm.license_id, str(ULID())))
    with pytest.raises(NotFound):
        await read(database, lambda uow: uc.get_integration(uow, other, view.row.id))
    with pytest.raises(NotFound):
        await read(database, lambda uow: uc.list_integrations(uow, other, "", 0, ""))


# --- update ------------------------------------------------------------------------------------


async def test_update_mask_touches_only_named_fields(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    view = await create(database, farm, metrc_spec())
    row = view.row
    tag = etag(row.id, row.version)
    change = metrc_spec(display_name="Renamed", endpoint_uri="https://elsewhere.example", credentials=None)

    updated = await write(
        database,
        lambda uow: uc.update_integration(
            uow, KEYRING, farm.license_id, row.id, change, ["display_name"], tag
        ),
    )
    assert updated.row.display_name == "Renamed"
    assert updated.row.endpoint_uri == "https://api-co.metrc.example"
    assert updated.row.version == row.version + 1
    assert opened(updated.row).metrc.user_key == USER_KEY  # credentials untouched

    # The old etag is stale now.
    with pytest.raises(EtagMismatch):
        await write(
            database,
            lambda uow: uc.update_integration(
                uow, KEYRING, farm.license_id, row.id, change, ["endpoint_uri"], tag
            ),
        )


async def test_credentials_replaced_only_when_in_the_mask(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    view = await create(database, farm, webhook_spec())
    iid = view.row.id
    new_secret = "rotated-" + "n" * 40
    change = webhook_spec(
        display_name="Renamed",
        credentials=pb.Credentials(webhook=pb.WebhookCredentials(signing_secret=new_secret)),
    )

    kept = await write(
        database,
        lambda uow: uc.update_integration(uow, KEYRING, farm.license_id, iid, change, ["display_name"], ""),
    )
    assert opened(kept.row).webhook.signing_secret == SECRET
    first_time = kept.row.credentials_update_time

    replaced = await write(
        database,
        lambda uow: uc.update_integration(uow, KEYRING, farm.license_id, iid, change, ["credentials"], ""),
    )
    assert opened(replaced.row).webhook.signing_secret == new_secret
    assert replaced.row.credentials_update_time is not None
    assert first_time is not None
    assert replaced.row.credentials_update_time > first_time
    assert replaced.row.display_name == "Renamed"

    events = await audit_of(engine, uc.integration_name(farm.license_id, iid))
    assert [e[0] for e in events] == ["CREATE", "UPDATE", "UPDATE"]
    text = json.dumps(events)
    assert SECRET not in text
    assert new_secret not in text
    assert events[2][1]["credentials"] == "***"
    assert events[2][2]["credentials"] == "***"
    assert events[1][2]["credentials_replaced"] is False
    assert events[2][2]["credentials_replaced"] is True


async def test_empty_mask_updates_everything_and_credentials_only_when_given(
    database: Database, farm: Farm
) -> None:
    view = await create(database, farm, webhook_spec())
    iid = view.row.id
    change = webhook_spec(
        url="https://other.example/hook", display_name="All", enabled=False, credentials=None
    )
    changed = await write(
        database, lambda uow: uc.update_integration(uow, KEYRING, farm.license_id, iid, change, [], "")
    )
    assert changed.row.display_name == "All"
    assert changed.row.enabled is False
    assert changed.row.config["url"] == "https://other.example/hook"
    assert opened(changed.row).webhook.signing_secret == SECRET


async def test_config_sub_field_mask_and_events(database: Database, farm: Farm) -> None:
    view = await create(database, farm, webhook_spec())
    iid = view.row.id
    change = webhook_spec(
        url="https://ignored.example/",
        config=pb.WebhookConfig(url="https://ignored.example/", events=[pb.WEBHOOK_EVENT_LOT_QUARANTINED]),
    )
    changed = await write(
        database,
        lambda uow: uc.update_integration(uow, KEYRING, farm.license_id, iid, change, ["webhook.events"], ""),
    )
    assert changed.row.events == ["lot.quarantined"]
    assert changed.row.config["url"] == "https://hooks.example.com/seedline"


@pytest.mark.parametrize("mask", [["kind"], ["metrc"], ["credentials_set"], ["webhook.nope"]])
async def test_immutable_or_unknown_mask_paths_are_refused(
    database: Database, farm: Farm, mask: list[str]
) -> None:
    view = await create(database, farm, webhook_spec())
    with pytest.raises(InvalidUpdateMask):
        await write(
            database,
            lambda uow: uc.update_integration(
                uow, KEYRING, farm.license_id, view.row.id, webhook_spec(), mask, ""
            ),
        )


async def test_kind_is_immutable_and_credentials_in_mask_need_a_value(database: Database, farm: Farm) -> None:
    view = await create(database, farm, webhook_spec())
    with pytest.raises(InvalidArgument) as err:
        await write(
            database,
            lambda uow: uc.update_integration(
                uow, KEYRING, farm.license_id, view.row.id, metrc_spec(), ["display_name"], ""
            ),
        )
    assert [v.field for v in err.value.violations] == ["integration.kind"]
    with pytest.raises(InvalidArgument) as err:
        await write(
            database,
            lambda uow: uc.update_integration(
                uow,
                KEYRING,
                farm.license_id,
                view.row.id,
                webhook_spec(credentials=None),
                ["credentials"],
                "",
            ),
        )
    assert [v.field for v in err.value.violations] == ["integration.credentials"]


# --- sync runs and delete ----------------------------------------------------------------------


async def listen(
    engine: AsyncEngine, channel: str
) -> tuple[asyncio.Queue[str], Callable[[], Awaitable[None]]]:
    """LISTEN on ``channel``; returns the queue of notifications and how to stop."""
    conn = await engine.connect()
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    got: asyncio.Queue[str] = asyncio.Queue()

    def notified(*args: object) -> None:
        got.put_nowait(str(args[2]))

    await driver.add_listener(channel, notified)

    async def stop() -> None:
        await driver.remove_listener(channel, notified)
        await conn.close()

    return got, stop


FULL_PULL = uc.SyncRequest(scopes=("PLANTS", "INVENTORY"), mode="FULL", direction="PULL")


async def refusal(uow: UnitOfWork, attempt: Awaitable[object]) -> Exception:
    """Run ``attempt`` in a savepoint of ``uow``'s transaction and return the error it raised."""
    try:
        async with uow.session.begin_nested():
            await attempt
    except Exception as exc:
        return exc
    raise AssertionError("expected the attempt to be refused")


async def test_sync_queues_one_run_and_notifies(database: Database, farm: Farm, engine: AsyncEngine) -> None:
    view = await create(database, farm, metrc_spec())
    iid = view.row.id

    # Checked before the commit: a worker of another process could otherwise finish the run first.
    async def queue_twice(uow: UnitOfWork) -> tuple[im.SyncRun, Exception]:
        run = await uc.request_sync(uow, farm.license_id, iid, FULL_PULL)
        return run, await refusal(uow, uc.request_sync(uow, farm.license_id, iid, FULL_PULL))

    got, stop = await listen(engine, SYNC_CHANNEL)
    try:
        run, second = await write(database, queue_twice)
        await asyncio.wait_for(got.get(), timeout=5)
    finally:
        await stop()
    assert run.state == "QUEUED"
    assert run.scopes == ["PLANTS", "INVENTORY"]
    assert (run.mode, run.direction, run.trigger) == ("FULL", "PULL", "API")
    assert isinstance(second, InvalidStateTransition)
    assert run.id in second.message

    again = await read(database, lambda uow: uc.get_integration(uow, farm.license_id, iid))
    assert again.latest_run is not None
    assert again.latest_run.id == run.id
    events = await audit_of(engine, uc.integration_name(farm.license_id, iid))
    assert [e[0] for e in events] == ["CREATE", "SYNC_REQUESTED"]
    assert events[-1][2]["sync_run"]["id"] == run.id


async def test_sync_refused_when_disabled_open_unsupported_or_without_credentials(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    view = await create(database, farm, metrc_spec(enabled=False))
    iid = view.row.id
    with pytest.raises(InvalidStateTransition, match="disabled"):
        await write(database, lambda uow: uc.request_sync(uow, farm.license_id, iid, FULL_PULL))
    async with engine.begin() as conn:
        await conn.execute(
            update(im.Integration).where(im.Integration.id == iid).values(enabled=True, breaker_state="OPEN")
        )
    with pytest.raises(DependencyUnavailable):
        await write(database, lambda uow: uc.request_sync(uow, farm.license_id, iid, FULL_PULL))
    lab = uc.SyncRequest(scopes=("LAB_RESULTS",), mode="FULL", direction="PULL")
    with pytest.raises(InvalidArgument) as err:
        await write(database, lambda uow: uc.request_sync(uow, farm.license_id, iid, lab))
    assert [v.field for v in err.value.violations] == ["scopes[0]"]

    hook = await create(database, farm, webhook_spec())
    with pytest.raises(InvalidArgument) as err:
        await write(database, lambda uow: uc.request_sync(uow, farm.license_id, hook.row.id, FULL_PULL))
    assert "direction" in [v.field for v in err.value.violations]

    bare = await create(database, farm, webhook_spec(credentials=None))
    push = uc.SyncRequest(scopes=("TRANSFERS",), mode="INCREMENTAL", direction="PUSH")
    with pytest.raises(FailedPrecondition, match="credentials"):
        await write(database, lambda uow: uc.request_sync(uow, farm.license_id, bare.row.id, push))
    async with engine.connect() as conn:
        runs = (
            await conn.execute(
                select(func.count())
                .select_from(im.SyncRun)
                .where(im.SyncRun.integration_id.in_([iid, hook.row.id, bare.row.id]))
            )
        ).scalar_one()
    assert runs == 0


async def enqueue(engine: AsyncEngine, farm: Farm, iid: str, states: list[str]) -> list[str]:
    ids = []
    t = datetime.now(UTC)
    async with engine.begin() as conn:
        for n, state in enumerate(states):
            did = str(ULID.from_datetime(t + timedelta(milliseconds=n)))
            ids.append(did)
            await conn.execute(
                insert(im.Delivery).values(
                    id=did,
                    integration_id=iid,
                    license_id=farm.license_id,
                    event_type="transfer.committed",
                    resource=f"licenses/{farm.license_id}/transfers/{n}",
                    ordering_key=f"licenses/{farm.license_id}/transfers/{n}",
                    payload={"verb": "TRANSFER_COMMITTED", "before": None, "after": {}},
                    state=state,
                    attempts=8 if state == "DEAD_LETTER" else 0,
                    next_attempt_time=t - timedelta(hours=1),
                    last_error="400 from remote: no" if state == "DEAD_LETTER" else "",
                    create_time=t,
                )
            )
    return ids


async def test_delete_refused_during_a_run_then_takes_everything_with_it(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    view = await create(database, farm, metrc_spec())
    iid = view.row.id
    await enqueue(engine, farm, iid, ["DEAD_LETTER", "DELIVERED"])

    async def refused_while_active(uow: UnitOfWork) -> list[tuple[str, Exception]]:
        run = await uc.request_sync(uow, farm.license_id, iid, FULL_PULL)
        found = []
        for state in ("QUEUED", "RUNNING"):
            run.state = state
            await uow.session.flush()
            found.append((run.id, await refusal(uow, uc.delete_integration(uow, farm.license_id, iid, ""))))
        run.state = "SUCCEEDED"
        return found

    for run_id, err in await write(database, refused_while_active):
        assert isinstance(err, InvalidStateTransition)
        assert err.metadata["sync_run_id"] == run_id
    assert await stored(engine, iid) is not None

    with pytest.raises(EtagMismatch):
        await write(database, lambda uow: uc.delete_integration(uow, farm.license_id, iid, "stale"))
    current = etag(iid, view.row.version)
    await write(database, lambda uow: uc.delete_integration(uow, farm.license_id, iid, current))
    assert await stored(engine, iid) is None
    async with engine.connect() as conn:
        left = (
            await conn.execute(
                select(func.count()).select_from(im.Delivery).where(im.Delivery.integration_id == iid)
            )
        ).scalar_one()
        runs = (
            await conn.execute(
                select(func.count()).select_from(im.SyncRun).where(im.SyncRun.integration_id == iid)
            )
        ).scalar_one()
    assert (left, runs) == (0, 0)
    events = await audit_of(engine, uc.integration_name(farm.license_id, iid))
    action, before, after = events[-1]
    assert action == "DELETE"
    assert after is None
    assert before["credentials"] == "***"
    assert VENDOR_KEY not in json.dumps(events)
    assert USER_KEY not in json.dumps(events)
    with pytest.raises(NotFound):
        await write(database, lambda uow: uc.delete_integration(uow, farm.license_id, iid, ""))


# --- the outbox --------------------------------------------------------------------------------


async def test_retry_dead_letters_named_then_all(database: Database, farm: Farm, engine: AsyncEngine) -> None:
    # Disabled: no worker (of any process sharing the database) delivers what is retried here.
    view = await create(database, farm, webhook_spec(enabled=False))
    iid = view.row.id
    d1, d2, pending, delivered = await enqueue(
        engine, farm, iid, ["DEAD_LETTER", "DEAD_LETTER", "PENDING", "DELIVERED"]
    )
    got = await read(database, lambda uow: uc.get_integration(uow, farm.license_id, iid))
    assert got.dead_letters == 2

    dead, _ = await read(
        database,
        lambda uow: uc.list_deliveries(uow, farm.license_id, iid, uc.DeliveryFilter("DEAD_LETTER"), 0, ""),
    )
    assert [d.id for d in dead] == [d2, d1]  # newest first

    listening, stop = await listen(engine, outbox.CHANNEL)
    try:
        before = datetime.now(UTC)
        n = await write(database, lambda uow: uc.retry_dead_letters(uow, farm.license_id, iid, [d1, pending]))
        await asyncio.wait_for(listening.get(), timeout=5)
    finally:
        await stop()
    assert n == 1  # the pending one is not a dead letter: left alone, not counted
    async with engine.connect() as conn:
        rows = {
            r.id: r
            for r in (
                await conn.execute(
                    select(
                        im.Delivery.id, im.Delivery.state, im.Delivery.attempts, im.Delivery.next_attempt_time
                    ).where(im.Delivery.integration_id == iid)
                )
            ).all()
        }
    assert (rows[d1].state, rows[d1].attempts) == ("PENDING", 0)
    assert rows[d1].next_attempt_time >= before - timedelta(seconds=1)
    assert rows[d2].state == "DEAD_LETTER"
    assert rows[delivered].state == "DELIVERED"

    assert await write(database, lambda uow: uc.retry_dead_letters(uow, farm.license_id, iid, [])) == 1
    assert await write(database, lambda uow: uc.retry_dead_letters(uow, farm.license_id, iid, [])) == 0
    retried = [
        e
        for e in await audit_of(engine, uc.integration_name(farm.license_id, iid))
        if e[0] == "DEAD_LETTERS_RETRIED"
    ]
    assert [e[2]["deliveries"] for e in retried] == [[d1], [d2]]

    page, token = await read(
        database, lambda uow: uc.list_deliveries(uow, farm.license_id, iid, uc.DeliveryFilter(), 3, "")
    )
    assert [d.id for d in page] == [delivered, pending, d2]
    rest, last = await read(
        database, lambda uow: uc.list_deliveries(uow, farm.license_id, iid, uc.DeliveryFilter(), 3, token)
    )
    assert [d.id for d in rest] == [d1]
    assert last == ""


# --- logs and differences ----------------------------------------------------------------------


async def add_logs(engine: AsyncEngine, iid: str, run_id: str | None) -> list[str]:
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    specs = [
        ("OUTBOUND", "SUCCESS", None),
        ("OUTBOUND", "RETRY", None),
        ("INBOUND", "ERROR", None),
        ("OUTBOUND", "SUCCESS", run_id),
    ]
    ids = []
    async with engine.begin() as conn:
        for n, (direction, status, run) in enumerate(specs):
            t = t0 + timedelta(minutes=n)
            lid = str(ULID.from_datetime(t))
            ids.append(lid)
            await conn.execute(
                insert(im.IntegrationLog).values(
                    id=lid,
                    integration_id=iid,
                    direction=direction,
                    endpoint="POST /hook",
                    request_id=f"r{n}",
                    payload_size=10 + n,
                    payload_sha256="0" * 64,
                    summary=f"exchange {n}",
                    status=status,
                    exchange_time=t,
                    response_ms=12.5,
                    retry_count=0,
                    error_detail="",
                    sync_run_id=run,
                )
            )
    return ids


async def test_logs_are_newest_first_and_filtered(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    view = await create(database, farm, metrc_spec())
    iid = view.row.id
    run = await write(database, lambda uow: uc.request_sync(uow, farm.license_id, iid, FULL_PULL))
    l0, l1, l2, l3 = await add_logs(engine, iid, run.id)

    async def logs(f: uc.LogFilter, size: int = 0, token: str = "") -> tuple[list[str], str]:
        rows, nxt = await read(database, lambda uow: uc.list_logs(uow, farm.license_id, iid, f, size, token))
        return [r.id for r in rows], nxt

    assert (await logs(uc.LogFilter()))[0] == [l3, l2, l1, l0]
    assert (await logs(uc.LogFilter(status="SUCCESS")))[0] == [l3, l0]
    assert (await logs(uc.LogFilter(direction="INBOUND")))[0] == [l2]
    assert (await logs(uc.LogFilter(sync_run_id=run.id)))[0] == [l3]
    start = datetime.now(UTC) - timedelta(minutes=9, seconds=30)
    end = start + timedelta(minutes=2)
    assert (await logs(uc.LogFilter(start=start, end=end)))[0] == [l2, l1]
    first, token = await logs(uc.LogFilter(direction="OUTBOUND"), 2)
    assert first == [l3, l1]
    assert token
    assert await logs(uc.LogFilter(direction="OUTBOUND"), 2, token) == ([l0], "")
    with pytest.raises(InvalidPageToken):
        await logs(uc.LogFilter(direction="INBOUND"), 2, token)
    with pytest.raises(InvalidArgument):
        await logs(uc.LogFilter(start=end, end=start))


async def test_differences_of_the_latest_or_a_named_run(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    view = await create(database, farm, metrc_spec())
    iid = view.row.id
    empty = await read(
        database, lambda uow: uc.list_differences(uow, farm.license_id, iid, uc.DifferenceFilter(), 0, "")
    )
    assert empty == ([], "")
    old = await write(database, lambda uow: uc.request_sync(uow, farm.license_id, iid, FULL_PULL))
    async with engine.begin() as conn:
        await conn.execute(update(im.SyncRun).where(im.SyncRun.id == old.id).values(state="SUCCEEDED"))
    new = await write(database, lambda uow: uc.request_sync(uow, farm.license_id, iid, FULL_PULL))
    kinds = ["MISSING_REMOTE", "QUANTITY_MISMATCH", "MISSING_LOCAL"]
    async with engine.begin() as conn:
        for run_id in (old.id, new.id):
            await conn.execute(
                insert(im.SyncDifference),
                [
                    {
                        "sync_run_id": run_id,
                        "seq": n,
                        "scope": "PLANTS",
                        "kind": kind,
                        "resource": "",
                        "remote_id": f"{run_id[-4:]}-{n}",
                        "local_value": "",
                        "remote_value": "",
                    }
                    for n, kind in enumerate(kinds, 1)
                ],
            )

    async def diffs(f: uc.DifferenceFilter, size: int = 0, token: str = "") -> tuple[list[str], str]:
        rows, nxt = await read(
            database, lambda uow: uc.list_differences(uow, farm.license_id, iid, f, size, token)
        )
        return [r.remote_id for r in rows], nxt

    latest, _ = await diffs(uc.DifferenceFilter())
    assert latest == [f"{new.id[-4:]}-{n}" for n in (1, 2, 3)]
    assert (await diffs(uc.DifferenceFilter(sync_run_id=old.id)))[0][0] == f"{old.id[-4:]}-1"
    assert (await diffs(uc.DifferenceFilter(kind="MISSING_LOCAL")))[0] == [f"{new.id[-4:]}-3"]
    first, token = await diffs(uc.DifferenceFilter(), 2)
    assert len(first) == 2
    assert token
    assert await diffs(uc.DifferenceFilter(), 2, token) == ([f"{new.id[-4:]}-3"], "")
    with pytest.raises(NotFound):
        await diffs(uc.DifferenceFilter(sync_run_id=str(ULID())))


# --- the connection test -----------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook receiver over TLS that verifies signatures (or refuses everything)."""

    secret: str
    status: int = 0  # force this status when set
    bodies: list[bytes] | None = None

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            if self.bodies is not None:
                self.bodies.append(body)
            if self.status:
                return web.json_response({"error": "refused"}, status=self.status)
            try:
                signing.verify(
                    self.secret.encode(),
                    body,
                    request.headers.get(signing.SIGNATURE_HEADER),
                    now=datetime.now(UTC).timestamp(),
                )
            except signing.SignatureError:
                return web.json_response({"error": "bad signature"}, status=401)
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app


@pytest_asyncio.fixture(loop_scope="session")
async def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return write_dev_pki(Path(tmp_path_factory.mktemp("it-pki")))


async def connection_test(
    database: Database, engine: AsyncEngine, ca: Path, license_id: str, iid: str
) -> uc.ConnectionTest:
    http = Http(ca_file=ca, timeout=5)
    try:
        connectors = Connectors(engine, KEYRING, http, SharedLimits(engine, "it"), settings=Settings())
        return await uc.run_connection_test(database, CTX, KEYRING, connectors, license_id, iid)
    finally:
        await http.aclose()


async def test_connection_test_logs_the_exchange_without_the_secret(
    database: Database, farm: Farm, engine: AsyncEngine, pki: Any
) -> None:
    bodies: list[bytes] = []
    receiver = Receiver(SECRET, bodies=bodies)
    server = await _serve.start(
        receiver.app(), host="127.0.0.1", port=0, cert=pki.server_cert, key=pki.server_key
    )
    try:
        view = await create(
            database, farm, webhook_spec(url=f"https://127.0.0.1:{server.port}/hook", enabled=False)
        )
        iid = view.row.id
        found = await connection_test(database, engine, pki.ca_cert, farm.license_id, iid)
    finally:
        await server.stop()
    report = found.report
    assert (report.reachable, report.authenticated, report.license_visible) == (True, True, True)
    assert report.latency is not None
    assert report.latency > timedelta(0)
    (body,) = bodies
    rows, _ = await read(database, lambda uow: uc.list_logs(uow, farm.license_id, iid, uc.LogFilter(), 0, ""))
    (log,) = rows
    assert log.id == found.log_id
    assert (log.direction, log.status, log.endpoint) == ("OUTBOUND", "SUCCESS", "POST /hook")
    assert log.payload_size == len(body)
    import hashlib

    assert log.payload_sha256 == hashlib.sha256(body).hexdigest()
    assert log.summary.startswith("connection test")
    assert SECRET not in json.dumps([log.summary, log.error_detail, log.endpoint, log.request_id])
    events = await audit_of(engine, uc.integration_name(farm.license_id, iid))
    assert events[-1][0] == "TESTED"
    assert events[-1][2]["reachable"] is True
    assert SECRET not in json.dumps(events)


async def test_connection_test_reports_refusal_and_unreachable_remote(
    database: Database, farm: Farm, engine: AsyncEngine, pki: Any
) -> None:
    refusing = Receiver(SECRET, status=401)
    server = await _serve.start(
        refusing.app(), host="127.0.0.1", port=0, cert=pki.server_cert, key=pki.server_key
    )
    try:
        view = await create(database, farm, webhook_spec(url=f"https://127.0.0.1:{server.port}/hook"))
        refused = await connection_test(database, engine, pki.ca_cert, farm.license_id, view.row.id)
    finally:
        await server.stop()
    assert (refused.report.reachable, refused.report.authenticated) == (True, False)
    assert "401" in refused.report.detail

    # The receiver is gone now: unreachable is a report too, never an error.
    gone = await connection_test(database, engine, pki.ca_cert, farm.license_id, view.row.id)
    assert gone.report.reachable is False
    assert gone.report.latency is None
    rows, _ = await read(
        database, lambda uow: uc.list_logs(uow, farm.license_id, view.row.id, uc.LogFilter(), 0, "")
    )
    assert [r.status for r in rows] == ["RETRY", "ERROR"]
    assert rows[0].id == gone.log_id


async def test_connection_test_needs_credentials_and_an_integration(
    database: Database, farm: Farm, engine: AsyncEngine, pki: Any
) -> None:
    view = await create(database, farm, webhook_spec(credentials=None))
    with pytest.raises(FailedPrecondition, match="credentials"):
        await connection_test(database, engine, pki.ca_cert, farm.license_id, view.row.id)
    with pytest.raises(NotFound):
        await connection_test(database, engine, pki.ca_cert, farm.license_id, str(ULID()))


async def test_unique_license_numbers_do_not_leak_between_farms(database: Database, farm: Farm) -> None:
    """A second license may have its own METRC integration."""
    from tests.integration.conftest import make_farm

    other = await make_farm(database, f"IT-{uuid.uuid4().hex[:10]}")
    await create(database, farm, metrc_spec())
    await create(database, other, metrc_spec())


class CrashingConnectors(Connectors):
    """Builds a connector whose test chokes, as one might on an answer it cannot parse."""

    def build(self, row: Any) -> Any:
        class Choking:
            async def test(self, log: list[Any]) -> Any:
                raise ValueError("unexpected answer shape")

        return Choking()


async def test_a_crashing_connector_is_reported_not_raised(
    database: Database, farm: Farm, engine: AsyncEngine
) -> None:
    view = await create(database, farm, webhook_spec())
    http = Http(timeout=5)
    try:
        connectors = CrashingConnectors(
            engine, KEYRING, http, SharedLimits(engine, "it"), settings=Settings()
        )
        found = await uc.run_connection_test(database, CTX, KEYRING, connectors, farm.license_id, view.row.id)
    finally:
        await http.aclose()
    assert (found.report.reachable, found.report.authenticated) == (False, False)
    assert "ValueError" in found.report.detail
    assert found.log_id == ""
