"""Lab use cases against real PostgreSQL: samples and mass balance, results and lot lab status,
voids, certificates, the metric reference loaded by the migration."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from seedline_server import documents
from seedline_server.api import lab as lab_api
from seedline_server.certs import write_dev_pki
from seedline_server.config import Settings
from seedline_server.domain import lab as rules
from seedline_server.domain import lot as lot_rules
from seedline_server.domain.errors import (
    DestructionPending,
    InsufficientQuantity,
    InvalidArgument,
    InvalidStateTransition,
    NotFound,
    ReferenceInvalid,
    RemoteRejected,
    ResourceLocked,
    UnitMismatch,
)
from seedline_server.domain.quantity import Quantity, Unit, parse
from seedline_server.service import inventory, lab, lineage, registry
from seedline_server.service.context import Signature
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import lab_models, models, reference
from tests.integration.conftest import CTX, Farm, make_farm

pytestmark = pytest.mark.asyncio(loop_scope="session")

FLOWER_TYPE = "018NY6XC00PTHE7GWB4QTG4JKZ"
PANELS = lab_api.load_panels(Settings())
U, S = rules.LabUnit, rules.MetricStatus
MOISTURE = "018NY6XC00LM0PXPG4592M8J14"
BIFENAZATE = "018NY6XC001CR4C8SJEZQE1NYD"
SIGNED = Signature(signer="users/qa", meaning=3, reason="wrong sample id on the certificate")


@dataclass(frozen=True)
class Lab:
    farm: Farm
    lab_license: str
    vault: str
    flower: str
    grower_license: str  # a license that is not a laboratory


def g(value: str) -> Quantity:
    return parse(value, Unit.GRAM)


@pytest_asyncio.fixture(loop_scope="session")
async def world(database: Database) -> Lab:
    farm = await make_farm(database, f"LAB-{uuid.uuid4().hex[:10]}")

    async def run(uow: UnitOfWork) -> Lab:
        company = await registry.create_company(uow, "Testing Labs")
        lab_license = await registry.create_license(
            uow,
            registry.NewLicense(company.id, f"LAB-{uuid.uuid4().hex[:10]}", "QA Lab", 4, "US-CO", True),
        )
        vault = models.Section(display_name="Vault", type=2, active=True, version=1)
        vault = await registry.create_scoped(uow, farm.license_id, vault, "section", "sections")
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
        return Lab(farm, lab_license.id, vault.id, flower.id, farm.license_id)

    return await database.write(CTX, run)


async def new_lot(database: Database, w: Lab, grams: str = "100") -> models.Lot:
    async def run(uow: UnitOfWork) -> models.Lot:
        return await inventory.create_lot(
            uow,
            w.farm.license_id,
            inventory.NewLot(product_id=w.flower, section_id=w.vault, quantity=g(grams)),
        )

    return await database.write(CTX, run)


async def read_lot(database: Database, w: Lab, lot_id: str) -> models.Lot:
    async def run(uow: UnitOfWork) -> models.Lot:
        return await inventory.get_lot(uow, w.farm.license_id, lot_id)

    return await database.read(CTX, run)


async def take_sample(
    database: Database,
    w: Lab,
    lot_id: str,
    grams: str = "2.5",
    purpose: rules.SamplePurpose = rules.SamplePurpose.COMPLIANCE,
) -> lab_models.Sample:
    async def run(uow: UnitOfWork) -> lab_models.Sample:
        return await lab.create_sample(
            uow,
            w.farm.license_id,
            lab.NewSample(lot_id, g(grams), w.lab_license, purpose, requested_metric_types=(1, 2, 4)),
        )

    return await database.write(CTX, run)


def panel_metrics(**override: rules.Reported) -> tuple[rules.Reported, ...]:
    """Every metric of the default panel, passing (``override`` replaces some by metric id)."""
    out = []
    for m in PANELS.select("US-CO", FLOWER_TYPE).metrics:
        if m.limit is None:
            item = rules.Reported(m.metric_id, S.PASS, U.PERCENT, "21.5")
        elif m.uom is U.CFU_PER_GRAM:
            item = rules.Reported(m.metric_id, S.NOT_DETECTED)
        else:
            item = rules.Reported(m.metric_id, S.PASS, m.uom, str(m.limit / 2))
        out.append(override.get(m.metric_id, item))
    return tuple(out)


FAILING_MOISTURE = rules.Reported(MOISTURE, S.FAIL, U.PERCENT, "17.5")


async def record(
    database: Database,
    w: Lab,
    *,
    sample_id: str = "",
    lot_ids: tuple[str, ...] = (),
    metrics: tuple[rules.Reported, ...] | None = None,
    claimed: rules.ResultStatus | None = None,
    days_ago: int = 1,
) -> lab.ResultView:
    new = lab.NewResult(
        lab_license_id=w.lab_license,
        metrics=metrics if metrics is not None else panel_metrics(),
        test_time=datetime.now(UTC) - timedelta(days=days_ago),
        sample_id=sample_id,
        lot_ids=lot_ids,
        claimed=claimed,
        certificate_number="COA-1",
    )

    async def run(uow: UnitOfWork) -> lab.ResultView:
        return await lab.create_result(uow, w.farm.license_id, new, PANELS)

    return await database.write(CTX, run)


async def audit_actions(database: Database, resource: str) -> list[str]:
    async def run(uow: UnitOfWork) -> list[str]:
        rows = await uow.session.scalars(
            select(models.AuditEvent.action)
            .where(models.AuditEvent.resource == resource)
            .order_by(models.AuditEvent.seq)
        )
        return list(rows)

    return await database.read(CTX, run)


# --- reference data ------------------------------------------------------------------------------


async def test_the_migration_loads_every_openthc_metric(database: Database) -> None:
    published = json.loads(reference.LAB_METRIC_INDEX.read_text())["lab_metric"]
    current = [m for m in published if "goto" not in m]

    async def run(uow: UnitOfWork) -> tuple[int, list[lab_models.LabMetric], list[lab_models.LabMetric]]:
        total = await uow.session.scalar(select(func.count()).select_from(lab_models.LabMetric))
        listed: list[lab_models.LabMetric] = []
        token = ""
        while True:
            rows, token = await lab.list_metrics(uow, 0, 100, token)
            listed.extend(rows)
            if not token:
                break
        pesticides, _ = await lab.list_metrics(uow, rules.MetricType.PESTICIDE.value, 100, "")
        return int(total or 0), listed, pesticides

    total, listed, pesticides = await database.read(CTX, run)
    assert total == len(published) == 368
    assert len(listed) == len(current) == 363
    assert len({m.id for m in listed}) == len(listed)
    keys = [(m.type_sort, m.display_name.encode(), m.id) for m in listed]
    assert keys == sorted(keys)
    assert [m.type for m in listed][:1] == [rules.MetricType.GENERAL.value]
    assert {m.type for m in pesticides} == {rules.MetricType.PESTICIDE.value}
    assert len(pesticides) == 100  # a full first page: OpenTHC lists more than 100 pesticides
    by_id = {m.id: m for m in listed}
    assert by_id[BIFENAZATE].cas_number == "149877-41-8"
    assert by_id[BIFENAZATE].default_uom == U.PPM.value
    assert by_id[MOISTURE].metrc_name == "Moisture Content"


# --- samples -------------------------------------------------------------------------------------


async def test_a_sample_is_mass_balanced_and_linked_in_lineage(database: Database, world: Lab) -> None:
    lot = await new_lot(database, world, "100")
    sample = await take_sample(database, world, lot.id, "2.5")
    assert sample.quantity == Decimal("2.5")
    assert sample.status == rules.SampleStatus.ACTIVE.value
    after = await read_lot(database, world, lot.id)
    assert after.quantity == Decimal("97.5")
    assert after.quantity + sample.quantity == Decimal(100)
    assert after.lab_status == lot_rules.LabStatus.SAMPLED.value
    lic = world.farm.license_id
    lot_name, sample_name = inventory.lot_name(lic, lot.id), lab.sample_name(lic, sample.id)

    async def trace(uow: UnitOfWork) -> lineage.Trace:
        return await lineage.trace(uow, lot_name, True, 5, 100)

    found = await database.read(CTX, trace)
    assert [(n.name, n.kind) for n in found.nodes] == [
        (lot_name, lineage.Kind.LOT),
        (sample_name, lineage.Kind.SAMPLE),
    ]
    (edge,) = found.edges
    assert (edge.source, edge.target, edge.operation, edge.quantity) == (
        lot_name,
        sample_name,
        lineage.Op.SAMPLE.value,
        Decimal("2.5"),
    )
    assert await audit_actions(database, sample_name) == ["CREATE"]
    assert await audit_actions(database, lot_name) == ["CREATE", "SAMPLE", "LAB_STATUS"]


async def test_a_refused_sample_changes_nothing(database: Database, world: Lab) -> None:
    lot = await new_lot(database, world, "10")
    with pytest.raises(InsufficientQuantity):
        await take_sample(database, world, lot.id, "10.0001")

    async def litres(uow: UnitOfWork) -> None:
        new = lab.NewSample(lot.id, parse("1", Unit.LITER), world.lab_license, rules.SamplePurpose.COMPLIANCE)
        await lab.create_sample(uow, world.farm.license_id, new)

    async def not_a_lab(uow: UnitOfWork) -> None:
        new = lab.NewSample(lot.id, g("1"), world.grower_license, rules.SamplePurpose.COMPLIANCE)
        await lab.create_sample(uow, world.farm.license_id, new)

    with pytest.raises(UnitMismatch):
        await database.write(CTX, litres)
    with pytest.raises(ReferenceInvalid):
        await database.write(CTX, not_a_lab)
    unchanged = await read_lot(database, world, lot.id)
    assert unchanged.quantity == Decimal(10)
    assert unchanged.version == lot.version
    assert unchanged.lab_status == lot_rules.LabStatus.REQUIRED.value


async def test_concurrent_samples_never_overdraw_a_lot(database: Database, world: Lab) -> None:
    lot = await new_lot(database, world, "100")

    async def one() -> bool:
        try:
            await take_sample(database, world, lot.id, "15")
            return True
        except InsufficientQuantity:
            return False

    taken = await asyncio.gather(*(one() for _ in range(10)))
    assert taken.count(True) == 6  # 6 x 15 g = 90 g; a seventh would need 105 g
    assert (await read_lot(database, world, lot.id)).quantity == Decimal(10)


async def test_voiding_a_sample_returns_its_material(database: Database, world: Lab) -> None:
    lot = await new_lot(database, world, "4")
    sample = await take_sample(database, world, lot.id, "4")
    depleted = await read_lot(database, world, lot.id)
    assert depleted.status == lot_rules.Status.DEPLETED.value
    lic = world.farm.license_id

    async def void(uow: UnitOfWork) -> lab_models.Sample:
        return await lab.void_sample(uow, lic, sample.id, "returned unopened", "")

    voided = await database.write(CTX, void)
    assert voided.status == rules.SampleStatus.VOIDED.value
    assert voided.close_note == "returned unopened"
    assert voided.close_time is not None
    back = await read_lot(database, world, lot.id)
    assert back.quantity == Decimal(4)
    assert back.status == lot_rules.Status.AVAILABLE.value
    assert back.lab_status == lot_rules.LabStatus.REQUIRED.value  # no sample at the lab any more
    with pytest.raises(ResourceLocked):
        await database.write(CTX, void)

    async def destroy(uow: UnitOfWork) -> lab_models.Sample:
        return await lab.destroy_sample(uow, lic, sample.id, "", "")

    with pytest.raises(ResourceLocked):
        await database.write(CTX, destroy)
    assert await audit_actions(database, lab.sample_name(lic, sample.id)) == ["CREATE", "VOIDED"]


async def test_destroying_a_sample_keeps_the_material_gone(database: Database, world: Lab) -> None:
    lot = await new_lot(database, world, "50")
    sample = await take_sample(database, world, lot.id, "5")
    lic = world.farm.license_id

    async def destroy(uow: UnitOfWork) -> lab_models.Sample:
        return await lab.destroy_sample(uow, lic, sample.id, "consumed in testing", "")

    destroyed = await database.write(CTX, destroy)
    assert destroyed.status == rules.SampleStatus.DESTROYED.value
    after = await read_lot(database, world, lot.id)
    assert after.quantity == Decimal(45)
    assert after.lab_status == lot_rules.LabStatus.REQUIRED.value

    async def void(uow: UnitOfWork) -> lab_models.Sample:
        return await lab.void_sample(uow, lic, sample.id, "too late", "")

    with pytest.raises(ResourceLocked):
        await database.write(CTX, void)


# --- results and lot lab status ------------------------------------------------------------------


async def test_fail_quarantines_retest_passes_releases_and_voids_fall_back(
    database: Database, world: Lab
) -> None:
    lic = world.farm.license_id
    lot = await new_lot(database, world, "100")
    sample = await take_sample(database, world, lot.id, "2")

    failing = await record(
        database,
        world,
        sample_id=sample.id,
        metrics=panel_metrics(**{MOISTURE: FAILING_MOISTURE}),
        days_ago=3,
    )
    r1 = failing.result
    assert r1.status == rules.ResultStatus.FAIL.value
    assert r1.panel == "default"
    assert failing.lot_ids == [lot.id]
    held = await read_lot(database, world, lot.id)
    assert held.status == lot_rules.Status.QUARANTINED.value
    assert held.lab_status == lot_rules.LabStatus.FAILED.value
    assert held.lab_result == lab.result_name(lic, r1.id)

    async def get_sample(uow: UnitOfWork) -> lab_models.Sample:
        return await lab.get_sample(uow, lic, sample.id)

    tested = await database.read(CTX, get_sample)
    assert tested.status == rules.SampleStatus.TESTED.value
    assert tested.lab_result_id == r1.id

    # A sample gets one result.
    with pytest.raises(InvalidStateTransition):
        await record(database, world, sample_id=sample.id)

    # A retest sample of a failed lot: still FAILED and held until a passing result.
    retest = await take_sample(database, world, lot.id, "2", rules.SamplePurpose.RETEST)
    still = await read_lot(database, world, lot.id)
    assert (still.lab_status, still.status) == (
        lot_rules.LabStatus.FAILED.value,
        lot_rules.Status.QUARANTINED.value,
    )
    assert still.quantity == Decimal(96)

    passing = await record(database, world, sample_id=retest.id, days_ago=2)
    r2 = passing.result
    assert r2.status == rules.ResultStatus.PASS.value
    assert r2.missing_metrics == []
    released = await read_lot(database, world, lot.id)
    assert released.status == lot_rules.Status.AVAILABLE.value
    assert released.lab_status == lot_rules.LabStatus.PASSED.value
    assert released.lab_result == lab.result_name(lic, r2.id)

    # A sub-lot split off now inherits the passing result.
    async def split(uow: UnitOfWork) -> models.Lot:
        return (await inventory.split_lot(uow, lic, lot.id, inventory.SplitSpec(quantity=g("10")), ""))[1]

    sub = await database.write(CTX, split)
    assert (sub.lab_status, sub.lab_result) == (lot_rules.LabStatus.PASSED.value, lab.result_name(lic, r2.id))

    # Void the passing result: step one keeps it in force, step two re-evaluates both lots.
    async def ask(uow: UnitOfWork) -> lab.ResultView:
        return await lab.request_void(uow, lic, r2.id, "wrong sample id on the certificate", "")

    pending = await database.write(CTX, ask)
    assert pending.result.state == rules.ResultState.VOID_PENDING.value
    assert (await read_lot(database, world, lot.id)).lab_status == lot_rules.LabStatus.PASSED.value
    with pytest.raises(DestructionPending):
        await database.write(CTX, ask)

    async def attach(uow: UnitOfWork) -> lab.ResultView:
        return await lab.attach_result(uow, lic, r2.id, [sub.id], "")

    with pytest.raises(DestructionPending):
        await database.write(CTX, attach)

    async def confirm(uow: UnitOfWork) -> lab.ResultView:
        return await lab.confirm_void(uow, lic, r2.id, SIGNED, "")

    voided = (await database.write(CTX, confirm)).result
    assert voided.state == rules.ResultState.VOIDED.value
    assert voided.void_confirmation is not None
    assert voided.void_confirmation["signer"] == "users/qa"
    assert voided.void_confirmation["audit_event_id"]
    fallback = await read_lot(database, world, lot.id)
    assert fallback.lab_status == lot_rules.LabStatus.FAILED.value  # the older failing result again
    assert fallback.lab_result == lab.result_name(lic, r1.id)
    assert fallback.status == lot_rules.Status.QUARANTINED.value
    orphan = await read_lot(database, world, sub.id)
    assert (orphan.lab_status, orphan.lab_result) == (lot_rules.LabStatus.REQUIRED.value, "")
    with pytest.raises(ResourceLocked):
        await database.write(CTX, confirm)

    # Void the failing one too: nothing in force, no sample at the lab: REQUIRED, released.
    async def void_r1(uow: UnitOfWork) -> None:
        await lab.request_void(uow, lic, r1.id, "lab error", "")
        await lab.confirm_void(uow, lic, r1.id, SIGNED, "")

    await database.write(CTX, void_r1)
    clean = await read_lot(database, world, lot.id)
    assert (clean.lab_status, clean.lab_result, clean.status) == (
        lot_rules.LabStatus.REQUIRED.value,
        "",
        lot_rules.Status.AVAILABLE.value,
    )
    name = lab.result_name(lic, r2.id)
    assert await audit_actions(database, name) == ["CREATE", "VOID_REQUESTED", "VOIDED"]
    lot_actions = await audit_actions(database, inventory.lot_name(lic, lot.id))
    assert lot_actions.count("LAB_RESULT") == 2
    assert lot_actions.count("LAB_RESULT_VOIDED") == 2


async def test_a_pending_void_can_be_cancelled(database: Database, world: Lab) -> None:
    lic = world.farm.license_id
    lot = await new_lot(database, world)
    r = (await record(database, world, lot_ids=(lot.id,))).result

    async def cancel(uow: UnitOfWork) -> lab.ResultView:
        return await lab.cancel_void(uow, lic, r.id, "")

    with pytest.raises(InvalidStateTransition):
        await database.write(CTX, cancel)

    async def ask(uow: UnitOfWork) -> lab.ResultView:
        return await lab.request_void(uow, lic, r.id, "typo", registry.etag(r.id, r.version))

    await database.write(CTX, ask)
    back = (await database.write(CTX, cancel)).result
    assert back.state == rules.ResultState.ACTIVE.value
    assert back.void_reason == ""
    assert (await read_lot(database, world, lot.id)).lab_status == lot_rules.LabStatus.PASSED.value


async def test_attach_applies_a_result_to_more_lots(database: Database, world: Lab) -> None:
    lic = world.farm.license_id
    first, second = await new_lot(database, world), await new_lot(database, world)
    made = await record(
        database, world, lot_ids=(first.id,), metrics=panel_metrics(**{MOISTURE: FAILING_MOISTURE})
    )
    assert made.lot_ids == [first.id]

    async def attach(uow: UnitOfWork) -> lab.ResultView:
        return await lab.attach_result(uow, lic, made.result.id, [first.id, second.id], "")

    attached = await database.write(CTX, attach)
    assert attached.lot_ids == [first.id, second.id]
    assert attached.result.version == made.result.version + 1
    assert (await read_lot(database, world, second.id)).status == lot_rules.Status.QUARANTINED.value
    again = await database.write(CTX, attach)  # already attached: nothing changes
    assert again.result.version == attached.result.version

    async def missing(uow: UnitOfWork) -> lab.ResultView:
        return await lab.attach_result(uow, lic, made.result.id, ["01JD0000000000000000000000"], "")

    with pytest.raises(NotFound):
        await database.write(CTX, missing)


async def test_incomplete_and_research_results_decide_nothing(database: Database, world: Lab) -> None:
    lot = await new_lot(database, world)
    sample = await take_sample(database, world, lot.id, "1")
    partial = panel_metrics()[:-2]
    incomplete = await record(database, world, sample_id=sample.id, metrics=partial)
    assert incomplete.result.status == rules.ResultStatus.INCOMPLETE.value
    assert len(incomplete.result.missing_metrics) == 2
    # The sample is tested, no compliance sample waits at the lab: REQUIRED, not PASSED.
    assert (await read_lot(database, world, lot.id)).lab_status == lot_rules.LabStatus.REQUIRED.value

    research = await take_sample(database, world, lot.id, "1", rules.SamplePurpose.RESEARCH)
    assert (await read_lot(database, world, lot.id)).lab_status == lot_rules.LabStatus.REQUIRED.value
    failing = await record(
        database, world, sample_id=research.id, metrics=panel_metrics(**{MOISTURE: FAILING_MOISTURE})
    )
    assert failing.result.status == rules.ResultStatus.FAIL.value
    assert failing.result.counts is False
    after = await read_lot(database, world, lot.id)
    assert (after.lab_status, after.status) == (
        lot_rules.LabStatus.REQUIRED.value,
        lot_rules.Status.AVAILABLE.value,
    )


async def test_a_contradicting_claim_is_refused_and_nothing_is_written(
    database: Database, world: Lab
) -> None:
    lot = await new_lot(database, world)
    sample = await take_sample(database, world, lot.id, "1")

    async def count(uow: UnitOfWork) -> int:
        return int(await uow.session.scalar(select(func.count()).select_from(lab_models.LabResult)) or 0)

    before = await database.read(CTX, count)
    with pytest.raises(InvalidArgument) as exc:
        await record(
            database,
            world,
            sample_id=sample.id,
            metrics=panel_metrics(**{MOISTURE: FAILING_MOISTURE}),
            claimed=rules.ResultStatus.PASS,
        )
    assert exc.value.violations[0].field == "lab_result.status"
    bad = rules.Reported(BIFENAZATE, S.PASS, U.PERCENT, "0.1")
    with pytest.raises(InvalidArgument) as exc:
        await record(database, world, sample_id=sample.id, metrics=panel_metrics(**{BIFENAZATE: bad}))
    (violation,) = exc.value.violations
    assert violation.field == "lab_result.metrics[4].uom"
    assert BIFENAZATE in violation.description
    assert await database.read(CTX, count) == before
    unchanged = await database.read(CTX, lambda uow: lab.get_sample(uow, world.farm.license_id, sample.id))
    assert unchanged.status == rules.SampleStatus.ACTIVE.value


# --- certificates of analysis --------------------------------------------------------------------

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


async def test_a_certificate_is_stored_with_its_digest(database: Database, world: Lab) -> None:
    lic = world.farm.license_id
    lot = await new_lot(database, world)
    r = (await record(database, world, lot_ids=(lot.id,))).result
    digest = hashlib.sha256(PDF).hexdigest()

    async def missing(uow: UnitOfWork) -> lab_models.LabDocument:
        return await lab.get_certificate(uow, lic, r.id)

    with pytest.raises(NotFound):
        await database.read(CTX, missing)

    async def wrong_digest(uow: UnitOfWork) -> object:
        return await lab.import_certificate(uow, lic, r.id, lab.Document(PDF), "0" * 64, "")

    with pytest.raises(InvalidArgument):
        await database.write(CTX, wrong_digest)

    async def store(uow: UnitOfWork) -> tuple[str, lab.ResultView]:
        return await lab.import_certificate(uow, lic, r.id, lab.Document(PDF), digest, "")

    sha, stored = await database.write(CTX, store)
    assert sha == digest == stored.result.coa_sha256
    doc = await database.read(CTX, missing)
    assert doc.content == PDF
    assert doc.sha256 == digest
    assert doc.content_type == "application/pdf"
    assert doc.size == len(PDF)
    sha_again, same = await database.write(CTX, store)  # the same document: nothing changes
    assert (sha_again, same.result.version) == (digest, stored.result.version)

    async def other(uow: UnitOfWork) -> object:
        return await lab.import_certificate(uow, lic, r.id, lab.Document(PDF + b"%more"), "", "")

    with pytest.raises(InvalidStateTransition):
        await database.write(CTX, other)
    assert await audit_actions(database, lab.result_name(lic, r.id)) == ["CREATE", "CERTIFICATE_IMPORTED"]


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ssl.SSLContext]]:
    """A local HTTPS server (dev PKI certificate for 127.0.0.1) serving a PDF, an HTML page and
    a redirect; yields its base URL and a client context trusting its CA."""
    pki = write_dev_pki(Path(tmp_path_factory.mktemp("pki")))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/coa.pdf")
                self.end_headers()
                return
            body, kind = (PDF, "application/pdf") if self.path == "/coa.pdf" else (b"<html/>", "text/html")
            self.send_response(200 if self.path != "/missing" else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(pki.ca_cert))
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", client
    finally:
        server.shutdown()
        server.server_close()


async def test_a_certificate_is_fetched_from_an_https_url(
    database: Database, world: Lab, https_server: tuple[str, ssl.SSLContext]
) -> None:
    base, context = https_server
    policy = documents.FetchPolicy(max_bytes=1024, timeout=5, allow_private=True, context=context)
    fetched = await documents.fetch(f"{base}/redirect", policy)
    assert fetched.data == PDF
    assert fetched.url == f"{base}/coa.pdf"
    with pytest.raises(RemoteRejected, match="not a PDF"):
        await documents.fetch(f"{base}/page.html", policy)
    with pytest.raises(RemoteRejected, match="404"):
        await documents.fetch(f"{base}/missing", policy)
    with pytest.raises(RemoteRejected, match="more than 10"):
        await documents.fetch(
            f"{base}/coa.pdf",
            documents.FetchPolicy(max_bytes=10, timeout=5, allow_private=True, context=context),
        )
    with pytest.raises(InvalidArgument):  # the default policy refuses a loopback host
        await documents.fetch(f"{base}/coa.pdf", documents.FetchPolicy(max_bytes=1024, context=context))

    lic = world.farm.license_id
    r = (await record(database, world, lot_ids=((await new_lot(database, world)).id,))).result

    async def store(uow: UnitOfWork) -> tuple[str, lab.ResultView]:
        return await lab.import_certificate(
            uow, lic, r.id, lab.Document(fetched.data, source_uri=fetched.url), "", ""
        )

    sha, _ = await database.write(CTX, store)
    assert sha == hashlib.sha256(PDF).hexdigest()
