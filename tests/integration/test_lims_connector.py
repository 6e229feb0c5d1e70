"""The LIMS connector against the fake LIMS over TLS, with real PostgreSQL behind the outbox.

Samples are created through the lab use cases, so the deliveries are the ones the outbox writes
in the sample's own transaction; the real worker delivers them through the real connector. The
fake's publish endpoint is checked here at unit level (signature and event shape) against a
recording HTTPS endpoint that requires a client certificate, like Seedline's Envoy.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from seedline.integration.v1 import integration_pb2 as pb
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from ulid import ULID

from seedline_server.certs import DevPki, write_dev_pki
from seedline_server.config import Settings
from seedline_server.crypto import KeyRing
from seedline_server.domain import lab as lab_rules
from seedline_server.domain import lims as lims_domain
from seedline_server.domain.quantity import Unit, parse
from seedline_server.integrations import signing
from seedline_server.integrations.connector import Job
from seedline_server.integrations.fakes import _serve
from seedline_server.integrations.fakes import lims as fake_lims
from seedline_server.integrations.limits import SharedLimits
from seedline_server.integrations.lims import LimsConnector
from seedline_server.integrations.registry import Connectors
from seedline_server.integrations.transport import Exchange, Http
from seedline_server.integrations.worker import OutboxWorker, WorkerSettings
from seedline_server.service import inventory, lab, registry
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import db, models
from seedline_server.store import integration_models as im
from tests.integration.conftest import CTX, make_farm
from tests.support.fakes import FakeAdmin, FakeProcess
from tests.support.integrations import insert_integration

pytestmark = pytest.mark.asyncio(loop_scope="session")

GOOD_KEY = "lims-key-good"
OTHER_LAB_KEY = "lims-key-other-lab"
INBOUND_SECRET = "lims-inbound-secret-0123456789abcdef01"
FLOWER_TYPE = "018NY6XC00PTHE7GWB4QTG4JKZ"
# OpenTHC lab metrics (lab-metric-index.json): Moisture, Loss on Drying, Boron.
MOISTURE = "018NY6XC00LM0PXPG4592M8J14"
DRYING = "018NY6XC00110F5RDAY6V23EDP"
BORON = "018NY6XC000WMQVN35HCPYPW8W"
KEYRING = KeyRing({"k1": os.urandom(32)}, "k1")
FAST = WorkerSettings(batch=8, concurrency=8, base_delay=0.01, max_delay=0.05, breaker_threshold=100)


@dataclass(frozen=True)
class Site:
    license_id: str
    license_number: str
    lab_license_id: str
    lab_number: str
    lot_id: str


Lims = FakeAdmin  # the fake LIMS, served in this process


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(tmp_path_factory.mktemp("lims-pki"))


def tls(pki: DevPki, client: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if client:
        ctx.load_cert_chain(str(pki.partner_cert), str(pki.partner_key))
    return ctx


@pytest_asyncio.fixture(loop_scope="session")
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    e = db.make_engine(migrated, pool_size=5)
    yield e
    await e.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def site(database: Database) -> Site:
    farm = await make_farm(database, f"LIMS-{uuid.uuid4().hex[:10]}")
    lab_number = f"LAB-{uuid.uuid4().hex[:10]}"

    async def run(uow: UnitOfWork) -> Site:
        company = await registry.create_company(uow, "Testing Labs")
        lab_license = await registry.create_license(
            uow, registry.NewLicense(company.id, lab_number, "QA Lab", 4, "US-CO", True)
        )
        vault = await registry.create_scoped(
            uow,
            farm.license_id,
            models.Section(display_name="Vault", type=2, active=True, version=1),
            "section",
            "sections",
        )
        flower = models.Product(
            display_name="Flower",
            product_type=FLOWER_TYPE,
            package_type=1,
            bulk_unit=1,
            unit_size_value=None,
            unit_size_unit=0,
            pack_unit_count=0,
            serving_size_value=None,
            serving_size_unit=0,
            servings_per_unit=0,
        )
        flower = await registry.create_scoped(uow, farm.license_id, flower, "product", "products")
        lot = await inventory.create_lot(
            uow,
            farm.license_id,
            inventory.NewLot(
                product_id=flower.id,
                section_id=vault.id,
                quantity=parse("100", Unit.GRAM),
                variety_id=farm.variety_id,
            ),
        )
        me = await uow.session.get(models.License, farm.license_id)
        assert me is not None
        return Site(farm.license_id, me.license_number, lab_license.id, lab_number, lot.id)

    return await database.write(CTX, run)


@pytest_asyncio.fixture(loop_scope="session")
async def lims(pki: DevPki, site: Site) -> AsyncIterator[Lims]:
    app = fake_lims.make_app(
        {
            "api_keys": {
                GOOD_KEY: site.lab_number,
                OTHER_LAB_KEY: {"license": "LAB-ELSEWHERE", "account": "A1"},
            }
        }
    )
    running = await _serve.start(app, host="127.0.0.1", port=0, cert=pki.server_cert, key=pki.server_key)
    url = f"https://127.0.0.1:{running.port}"
    try:
        async with httpx.AsyncClient(base_url=url, verify=tls(pki)) as admin:
            yield Lims(url, admin)
    finally:
        await running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def connectors(engine: AsyncEngine, pki: DevPki) -> AsyncIterator[Connectors]:
    http = Http(ca_file=pki.ca_cert, timeout=5.0)
    try:
        yield Connectors(engine, KEYRING, http, SharedLimits(engine, "lims-test"), settings=Settings())
    finally:
        await http.aclose()


async def add_lims(
    database: Database,
    connectors: Connectors,
    site: Site,
    url: str,
    *,
    key: str = GOOD_KEY,
    lab_number: str | None = None,
    account: str = "",
) -> str:
    """A LIMS integration with sealed credentials, as CreateIntegration stores it."""
    return await insert_integration(
        database,
        CTX,
        site.license_id,
        "LIMS",
        endpoint_uri=url,
        display_name="QA Lab LIMS",
        config={"vendor": "openthc", "labLicenseNumber": lab_number or site.lab_number, "accountId": account},
        credentials=pb.Credentials(
            lims=pb.LimsCredentials(api_key=key, webhook_signing_secret=INBOUND_SECRET)
        ),
        keyring=KEYRING,
    )


async def take_sample(database: Database, site: Site, grams: str = "2.5") -> str:
    async def run(uow: UnitOfWork) -> str:
        row = await lab.create_sample(
            uow,
            site.license_id,
            lab.NewSample(
                site.lot_id,
                parse(grams, Unit.GRAM),
                site.lab_license_id,
                lab_rules.SamplePurpose.COMPLIANCE,
                requested_metrics=(MOISTURE,),
            ),
        )
        return row.id

    return await database.write(CTX, run)


async def jobs(engine: AsyncEngine, iid: str) -> list[Job]:
    """The integration's deliveries as the worker would hand them to the connector."""
    d = im.Delivery
    async with engine.connect() as conn:
        rows = (await conn.execute(select(d).where(d.integration_id == iid).order_by(d.id))).all()
    return [
        Job(
            id=r.id,
            integration_id=r.integration_id,
            license_id=r.license_id,
            event_type=r.event_type,
            resource=r.resource,
            payload=r.payload,
            attempt=1,
            look_first=False,
            create_time=r.create_time,
            audit_event_id=r.audit_event_id,
        )
        for r in rows
    ]


async def deliveries(engine: AsyncEngine, iid: str) -> list[tuple[str, str, int]]:
    d = im.Delivery
    async with engine.connect() as conn:
        rows = await conn.execute(select(d.event_type, d.state, d.attempts).where(d.integration_id == iid))
        return [(r[0], r[1], r[2]) for r in rows.all()]


async def remote_ids(engine: AsyncEngine, iid: str) -> dict[str, str]:
    r = im.RemoteId
    async with engine.connect() as conn:
        rows = await conn.execute(select(r.resource, r.remote_id).where(r.integration_id == iid))
        return {row[0]: row[1] for row in rows.all()}


# --- connection test -----------------------------------------------------------------------------


async def test_test_with_the_good_key_is_authenticated_and_sees_the_lab(
    database: Database, connectors: Connectors, site: Site, lims: Lims
) -> None:
    iid = await add_lims(database, connectors, site, lims.url)
    log: list[Exchange] = []
    connector = await connectors(iid)
    assert isinstance(connector, LimsConnector)  # what the registry builds for kind LIMS
    report = await connector.test(log)
    assert (report.reachable, report.authenticated, report.license_visible) == (True, True, True)
    assert report.latency is not None
    assert site.lab_number in report.detail
    assert f"account account-{site.lab_number}" in report.detail
    assert [(e.endpoint, e.status) for e in log] == [("GET /api/v1/ping", "SUCCESS")]


async def test_test_with_a_bad_key_is_not_authenticated(
    database: Database, connectors: Connectors, site: Site, lims: Lims
) -> None:
    iid = await add_lims(database, connectors, site, lims.url, key="not-a-key")
    report = await (await connectors(iid)).test([])
    assert (report.reachable, report.authenticated, report.license_visible) == (True, False, False)
    assert report.latency is not None
    assert "refused the credentials" in report.detail


async def test_test_with_another_labs_key_does_not_see_the_lab(
    database: Database, connectors: Connectors, site: Site, lims: Lims
) -> None:
    iid = await add_lims(database, connectors, site, lims.url, key=OTHER_LAB_KEY)
    report = await (await connectors(iid)).test([])
    assert (report.reachable, report.authenticated, report.license_visible) == (True, True, False)
    assert "LAB-ELSEWHERE" in report.detail


async def test_test_of_an_unreachable_lims_never_raises(
    database: Database, connectors: Connectors, site: Site
) -> None:
    iid = await add_lims(database, connectors, site, "https://127.0.0.1:1")
    report = await (await connectors(iid)).test([])
    assert (report.reachable, report.authenticated, report.license_visible) == (False, False, False)
    assert report.latency is None


# --- deliveries ----------------------------------------------------------------------------------


async def test_a_new_sample_is_registered_at_the_lims_once(
    database: Database, engine: AsyncEngine, connectors: Connectors, site: Site, lims: Lims
) -> None:
    iid = await add_lims(database, connectors, site, lims.url, account="ACME-7")
    sample_id = await take_sample(database, site)
    worker = OutboxWorker(engine, connectors, FAST, only=[iid])
    await worker.run_until_idle(within=20)
    assert await deliveries(engine, iid) == [("lab_sample.create", "DELIVERED", 1)]
    state = await lims.state()
    assert state["create_counts"] == {sample_id: 1}
    (sample,) = state["samples"]
    assert sample["id"] == sample_id
    assert sample["origin"]["inventory"]["id"] == site.lot_id
    assert sample["license"] == {"id": site.license_id, "code": site.license_number}
    assert sample["laboratory"]["license"]["code"] == site.lab_number
    assert (sample["qty"], sample["uom"]) == ("2.5", "g")
    assert sample["product"]["name"] == "Flower"
    assert sample["variety"]["name"] == "Haze"
    assert sample["lab_metric_list"] == [{"id": MOISTURE}]
    assert sample["account"] == {"id": "ACME-7"}
    assert datetime.fromisoformat(sample["created_at"]).tzinfo is not None
    name = lab.sample_name(site.license_id, sample_id)
    assert await remote_ids(engine, iid) == {name: sample_id}
    r = await lims.admin.get(
        f"/api/v1/lab_sample/{sample_id}", headers={"Authorization": f"Bearer {GOOD_KEY}"}
    )
    assert r.status_code == 200
    assert r.json()["data"]["id"] == sample_id


async def test_a_registration_cut_after_it_applied_is_not_doubled(
    database: Database, engine: AsyncEngine, connectors: Connectors, site: Site, lims: Lims
) -> None:
    iid = await add_lims(database, connectors, site, lims.url)
    await lims.faults(
        {"method": "POST", "path_prefix": "/api/v1/lab_sample", "mode": "apply_then_timeout", "count": 1}
    )
    sample_id = await take_sample(database, site)
    await OutboxWorker(engine, connectors, FAST, only=[iid]).run_until_idle(within=20)
    # The first attempt registered the sample and lost the answer; the retry (same delivery id,
    # same Idempotency-Key) got the first answer back instead of registering it again.
    assert await deliveries(engine, iid) == [("lab_sample.create", "DELIVERED", 2)]
    state = await lims.state()
    assert [s["id"] for s in state["samples"]] == [sample_id]
    assert state["create_counts"] == {sample_id: 1}
    assert state["idempotent_replays"] == 1
    assert state["conflicts"] == 0


async def test_the_same_job_twice_replays_and_another_job_finds_it_registered(
    database: Database, engine: AsyncEngine, connectors: Connectors, site: Site, lims: Lims
) -> None:
    iid = await add_lims(database, connectors, site, lims.url)
    sample_id = await take_sample(database, site)
    (job,) = await jobs(engine, iid)
    connector = await connectors(iid)
    first = await connector.deliver(job, [])
    again = await connector.deliver(job, [])
    assert first.remote_ids == again.remote_ids == {job.resource: sample_id}
    assert not again.found_existing  # the LIMS replayed its first answer
    other = Job(**{**job.__dict__, "id": str(ULID())})  # e.g. re-sent by a PUSH sync
    log: list[Exchange] = []
    found = await connector.deliver(other, log)
    assert found.found_existing
    assert [(e.endpoint, e.status) for e in log] == [("POST /api/v1/lab_sample", "SUCCESS")]
    state = await lims.state()
    assert len(state["samples"]) == 1
    assert state["idempotent_replays"] == 1
    assert state["conflicts"] == 1


async def test_a_voided_sample_is_voided_at_the_lims(
    database: Database, engine: AsyncEngine, connectors: Connectors, site: Site, lims: Lims
) -> None:
    iid = await add_lims(database, connectors, site, lims.url)
    sample_id = await take_sample(database, site)

    async def void(uow: UnitOfWork) -> None:
        await lab.void_sample(uow, site.license_id, sample_id, "wrong lot", "")

    await database.write(CTX, void)
    await OutboxWorker(engine, connectors, FAST, only=[iid]).run_until_idle(within=20)
    assert sorted(await deliveries(engine, iid)) == [
        ("lab_sample.create", "DELIVERED", 1),
        ("lab_sample.voided", "DELIVERED", 1),
    ]
    (sample,) = (await lims.state())["samples"]
    assert sample["stat"] == 410
    assert sample["deleted_at"]


async def test_samples_for_another_laboratory_and_other_events_are_not_reported(
    database: Database, engine: AsyncEngine, connectors: Connectors, site: Site, lims: Lims
) -> None:
    iid = await add_lims(database, connectors, site, lims.url, lab_number="LAB-ELSEWHERE")
    await take_sample(database, site)
    (job,) = await jobs(engine, iid)
    connector = await connectors(iid)
    log: list[Exchange] = []
    outcome = await connector.deliver(job, log)
    assert "not reported to the LIMS" in outcome.summary
    assert site.lab_number in outcome.summary
    tested = Job(**{**job.__dict__, "event_type": "lab_sample.tested"})
    assert (await connector.deliver(tested, log)).summary == "lab_sample.tested: not reported to the LIMS"
    assert log == []
    assert (await lims.state())["samples"] == []


async def test_a_refusal_is_permanent_and_an_error500_retryable(
    database: Database, engine: AsyncEngine, connectors: Connectors, site: Site, lims: Lims
) -> None:
    from seedline_server.integrations.transport import RemoteError

    iid = await add_lims(database, connectors, site, lims.url, key="not-a-key")
    await take_sample(database, site)
    (job,) = await jobs(engine, iid)
    with pytest.raises(RemoteError) as refused:
        await (await connectors(iid)).deliver(job, [])
    assert refused.value.status == 401
    assert not refused.value.retryable
    good = await add_lims(database, connectors, site, lims.url)
    await lims.faults({"path_prefix": "/api/v1/", "mode": "error500", "count": 1})
    with pytest.raises(RemoteError) as failed:
        await (await connectors(good)).deliver(job, [])
    assert failed.value.status == 500
    assert failed.value.retryable
    assert (await lims.state())["samples"] == []


async def test_lab_sample_document_shape() -> None:
    from seedline_server.integrations.lims import SampleFacts, lab_sample_document

    snap = {
        "id": "01J0000000000000000000000A",
        "license_id": "01J0000000000000000000000B",
        "source_lot_id": "01J0000000000000000000000C",
        "quantity": "1.5",
        "unit": 6,
        "create_time": "2024-05-01 12:00:00.5+00:00",
        "state_tag": "",
        "requested_metrics": [],
    }
    doc = lab_sample_document(snap, SampleFacts("GROW-1", "LAB-1"), datetime.now(UTC))
    assert doc["created_at"] == "2024-05-01T12:00:00.500000+00:00"
    assert (doc["qty"], doc["uom"]) == ("1.5", "l")
    assert "product" not in doc
    assert "lab_metric_list" not in doc
    fake_lims.check_lab_sample(doc)  # what the connector sends, the fake accepts


# --- the fake's own contract ---------------------------------------------------------------------


async def test_the_fake_refuses_bad_lab_samples_naming_the_field(lims: Lims) -> None:
    auth = {"Authorization": f"Bearer {GOOD_KEY}"}
    good = {
        "id": str(ULID()),
        "license": {"id": "L"},
        "origin": {"inventory": {"id": "LOT"}},
        "qty": 1,
        "uom": "g",
        "created_at": datetime.now(UTC).isoformat(),
    }
    for field, value in (("qty", -1), ("uom", "bushel"), ("id", "nope"), ("created_at", "yesterday")):
        r = await lims.admin.post("/api/v1/lab_sample", json={**good, field: value}, headers=auth)
        assert r.status_code == 400
        assert r.json() == {"data": None, "meta": {"note": r.json()["meta"]["note"], "field": field}}
    r = await lims.admin.post("/api/v1/lab_sample", json={**good, "origin": {}}, headers=auth)
    assert r.json()["meta"]["field"] == "origin.inventory.id"
    r = await lims.admin.post("/api/v1/lab_sample", content=b"id=1", headers=auth)
    assert r.status_code == 415
    assert (await lims.admin.post("/api/v1/lab_sample", json=good)).status_code == 401
    key = {**auth, "Idempotency-Key": "k-1"}
    assert (await lims.admin.post("/api/v1/lab_sample", json=good, headers=key)).status_code == 201
    again = await lims.admin.post("/api/v1/lab_sample", json=good, headers=key)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    changed = await lims.admin.post("/api/v1/lab_sample", json={**good, "qty": 2}, headers=key)
    assert changed.status_code == 422
    assert (await lims.state())["create_counts"] == {good["id"]: 1}
    assert (await lims.admin.post("/_fake/reset")).status_code == 200
    assert (await lims.state())["samples"] == []


@dataclass
class Captured:
    body: bytes
    headers: dict[str, str]
    peer: str


@pytest_asyncio.fixture(loop_scope="session")
async def receiver(pki: DevPki) -> AsyncIterator[tuple[str, list[Captured]]]:
    """An HTTPS endpoint that requires a client certificate and records what it receives."""
    seen: list[Captured] = []

    async def receive(request: web.Request) -> web.Response:
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        peer = json.dumps(cert.get("subjectAltName", [])) if isinstance(cert, dict) else ""
        seen.append(Captured(await request.read(), dict(request.headers), peer))
        status = 409 if len(seen) > 1 and seen[-1].body == seen[-2].body else 200
        return web.json_response({"eventId": request.headers.get("Seedline-Event-Id")}, status=status)

    app = web.Application()
    app.router.add_post("/v1/licenses/{lic}/integrations/{name}", receive)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/v1/licenses/L/integrations/I:receive", seen
    finally:
        await runner.cleanup()


async def test_publish_sends_a_signed_event_seedline_can_parse(
    pki: DevPki, site: Site, lims: Lims, receiver: tuple[str, list[Captured]]
) -> None:
    url, seen = receiver
    r = await lims.admin.post("/_fake/publish", json={"sample_id": str(ULID()), "metrics": []})
    assert r.status_code == 409  # the Seedline side is not configured yet
    seedline = {
        "receive_url": url,
        "signing_secret": INBOUND_SECRET,
        "ca": str(pki.ca_cert),
        "client_cert": str(pki.partner_cert),
        "client_key": str(pki.partner_key),
    }
    assert (await lims.admin.post("/_fake/configure", json={"seedline": seedline})).status_code == 200
    sample_id, lot_id = str(ULID()), str(ULID())
    metrics = [
        {"id": DRYING, "qom": 11.5, "uom": "pct", "status": "pass"},
        {"id": BORON, "qom": "0.1200", "uom": "ppm", "status": "pass", "lod": 0.01, "limit": 0.5},
    ]
    r = await lims.admin.post(
        "/_fake/publish",
        json={
            "sample_id": sample_id,
            "lots": [lot_id],
            "metrics": metrics,
            "coa": "https://lab.test/coa.pdf",
        },
    )
    assert r.status_code == 200
    answer = r.json()
    (got,) = seen
    assert answer["status"] == 200
    assert answer["body"] == {"eventId": answer["event_id"]}
    assert json.loads(got.peer) != []  # the partner certificate was presented
    assert got.headers["Content-Type"] == "application/json"
    event_id = got.headers[signing.EVENT_ID_HEADER]
    assert event_id == answer["event_id"]
    signed_at = signing.verify(
        INBOUND_SECRET.encode(), got.body, got.headers[signing.SIGNATURE_HEADER], now=time.time()
    )
    assert abs(signed_at - time.time()) < 60
    result = lims_domain.parse_event(json.loads(got.body), event_id=event_id, now=datetime.now(UTC))
    assert (result.sample_id, result.lot_ids, result.coa_url) == (
        sample_id,
        (lot_id,),
        "https://lab.test/coa.pdf",
    )
    assert [(m.metric_id, m.qom, m.uom) for m in result.metrics] == [
        (DRYING, "11.5000", lab_rules.LabUnit.PERCENT),
        (BORON, "0.1200", lab_rules.LabUnit.PPM),
    ]
    assert json.loads(got.body)["data"]["license"] == {"code": site.lab_number}  # the first key's lab
    published = (await lims.state())["published"]
    assert [p["event_id"] for p in published] == [event_id]
    assert published[0]["status"] == 200


async def test_publish_bad_signature_stale_timestamp_and_replay(
    pki: DevPki, lims: Lims, receiver: tuple[str, list[Captured]]
) -> None:
    url, seen = receiver
    seedline = {"receive_url": url, "signing_secret": INBOUND_SECRET, "ca": str(pki.ca_cert)}
    seedline |= {"client_cert": str(pki.partner_cert), "client_key": str(pki.partner_key)}
    await lims.admin.post("/_fake/configure", json={"seedline": seedline})
    metrics = [{"id": DRYING, "qom": 9, "uom": "pct", "status": "pass"}]
    base = {"sample_id": str(ULID()), "metrics": metrics}
    await lims.admin.post("/_fake/publish", json={**base, "bad_signature": True})
    await lims.admin.post("/_fake/publish", json={**base, "timestamp": int(time.time()) - 3600})
    r = await lims.admin.post("/_fake/publish", json={**base, "event_id": "evt-1", "replay": True})
    answer = r.json()
    assert (answer["status"], answer["replay"]["status"]) == (200, 409)
    bad, stale, first, repeat = seen
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify(
            INBOUND_SECRET.encode(), bad.body, bad.headers[signing.SIGNATURE_HEADER], now=time.time()
        )
    with pytest.raises(signing.SignatureError, match="more than"):
        signing.verify(
            INBOUND_SECRET.encode(), stale.body, stale.headers[signing.SIGNATURE_HEADER], now=time.time()
        )
    assert first.body == repeat.body
    assert first.headers[signing.EVENT_ID_HEADER] == repeat.headers[signing.EVENT_ID_HEADER] == "evt-1"
    lims_domain.parse_event(json.loads(first.body), event_id="evt-1", now=datetime.now(UTC))


async def test_publish_to_an_unreachable_seedline_is_a_502(lims: Lims, pki: DevPki) -> None:
    seedline = {
        "receive_url": "https://127.0.0.1:1/x",
        "signing_secret": INBOUND_SECRET,
        "ca": str(pki.ca_cert),
    }
    await lims.admin.post("/_fake/configure", json={"seedline": seedline})
    r = await lims.admin.post("/_fake/publish", json={"sample_id": str(ULID()), "metrics": []})
    assert r.status_code == 502
    assert r.json()["status"] is None
    assert "ConnectError" in r.json()["error"]


async def test_the_module_runs_as_a_process(pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> None:
    fake = FakeProcess(
        "lims",
        pki.server_cert,
        pki.server_key,
        pki.ca_cert,
        config={"api_keys": {GOOD_KEY: "LAB-9"}},
        workdir=tmp_path_factory.mktemp("lims-process"),
    )
    fake.start()
    try:
        with fake.client() as client:
            ping = client.get("/api/v1/ping", headers={"Authorization": f"Bearer {GOOD_KEY}"})
            assert ping.json()["data"]["license"]["code"] == "LAB-9"
            assert client.get("/api/v1/ping").status_code == 401
        assert fake.state()["samples"] == []
    finally:
        fake.stop()
