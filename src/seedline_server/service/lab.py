"""Lab use cases: samples, the lab metric reference, results, attachments, voids, certificates.

Locks are always taken in the same order: a sample or a result first, then lots (in id order,
through :func:`inventory.lock_lots`), so two lab operations, or a lab operation and an inventory
operation (which lock only lots), cannot deadlock. Every rule is checked on the locked rows
before the first write, and each use case is one transaction with its audit events.

A lot's lab status is never set directly: :func:`rederive` recomputes it from the active
compliance results attached to it (plus the result it inherited on a split, while that stays
active) and its compliance samples still at the laboratory (:func:`rules.lot_lab_status`).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from ulid import ULID

from seedline_server.domain import lab as rules
from seedline_server.domain import lot as lot_rules
from seedline_server.domain import paging
from seedline_server.domain.errors import (
    ESignatureRequired,
    FieldViolation,
    InvalidArgument,
    InvalidPageToken,
    InvalidStateTransition,
    NotFound,
    ReferenceInvalid,
)
from seedline_server.domain.quantity import Quantity
from seedline_server.service import inventory, lineage
from seedline_server.service.context import Signature
from seedline_server.service.registry import Page, check_etag, get_license, list_page, snapshot
from seedline_server.service.uow import UnitOfWork, now
from seedline_server.store import lab_models as lab
from seedline_server.store import models

LABORATORY = 4  # seedline.license.v1.LicenseType.LICENSE_TYPE_LABORATORY
_IN_FORCE = (rules.ResultState.ACTIVE.value, rules.ResultState.VOID_PENDING.value)
_COMPLIANCE = tuple(p.value for p in rules.COMPLIANCE_PURPOSES)
PDF = "application/pdf"


def sample_name(license_id: str, sample_id: str) -> str:
    """``licenses/{license}/samples/{sample}``."""
    return f"licenses/{license_id}/samples/{sample_id}"


def result_name(license_id: str, result_id: str) -> str:
    """``licenses/{license}/labResults/{lab_result}``."""
    return f"licenses/{license_id}/labResults/{result_id}"


def _result_id_of(name: str) -> str | None:
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "licenses" and parts[2] == "labResults":
        return parts[3]
    return None


# --- reference data ----------------------------------------------------------------------------


def _info(row: lab.LabMetric) -> rules.MetricInfo:
    return rules.MetricInfo(
        id=row.id,
        name=row.display_name,
        type=rules.MetricType(row.type) if row.type else None,
        default_uom=rules.LabUnit(row.default_uom),
        superseded_by=row.superseded_by,
    )


async def metric_infos(uow: UnitOfWork, ids: Sequence[str]) -> dict[str, rules.MetricInfo]:
    """The reference rows of these metric ids (unknown ids are absent), in one query."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = await uow.session.scalars(select(lab.LabMetric).where(lab.LabMetric.id.in_(wanted)))
    return {r.id: _info(r) for r in rows}


async def check_panels(uow: UnitOfWork, panels: rules.Panels) -> None:
    """Raise PanelError unless every panel metric is in the reference, current, in a fitting unit."""
    rules.check_panels_against(panels, await metric_infos(uow, sorted(panels.metric_ids())))


async def list_metrics(
    uow: UnitOfWork, metric_type: int, size: int, token: str
) -> tuple[list[lab.LabMetric], str]:
    """A page of current metrics in (type order, display name, id) order."""
    limit = paging.page_size(size)
    query = {"type": str(metric_type)}
    after = paging.decode_token(token, query)
    m = lab.LabMetric
    stmt = select(m).where(m.superseded_by == "")
    if metric_type:
        stmt = stmt.where(m.type == metric_type)
    if after is not None:
        try:
            sort, name, mid = json.loads(after)
            key = (int(sort), str(name), str(mid))
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidPageToken("page_token is malformed") from exc
        stmt = stmt.where(tuple_(m.type_sort, m.display_name, m.id) > tuple_(*key))
    rows = list(
        (await uow.session.scalars(stmt.order_by(m.type_sort, m.display_name, m.id).limit(limit + 1))).all()
    )
    next_token = ""
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_token = paging.next_token(json.dumps([last.type_sort, last.display_name, last.id]), query)
    return rows, next_token


# --- lot lab status -----------------------------------------------------------------------------


async def rederive(uow: UnitOfWork, lots: Sequence[models.Lot], action: str, t: datetime) -> None:
    """Recompute the lab status of locked lots; record (and audit) only the ones that change."""
    if not lots:
        return
    ids = [lot.id for lot in lots]
    await uow.session.flush()
    attached: dict[str, list[lab.LabResult]] = defaultdict(list)
    rows = await uow.session.execute(
        select(lab.LabResultLot.lot_id, lab.LabResult)
        .join(lab.LabResult, lab.LabResult.id == lab.LabResultLot.result_id)
        .where(lab.LabResultLot.lot_id.in_(ids), lab.LabResult.state.in_(_IN_FORCE), lab.LabResult.counts)
    )
    for lot_id, result in rows:
        attached[lot_id].append(result)
    inherited_ids = {rid for lot in lots if (rid := _result_id_of(lot.lab_result))}
    inherited = {
        r.id: r
        for r in await uow.session.scalars(
            select(lab.LabResult).where(
                lab.LabResult.id.in_(sorted(inherited_ids)),
                lab.LabResult.state.in_(_IN_FORCE),
                lab.LabResult.counts,
            )
        )
    }
    pending = set(
        await uow.session.scalars(
            select(lab.Sample.source_lot_id)
            .where(
                lab.Sample.source_lot_id.in_(ids),
                lab.Sample.status == rules.SampleStatus.ACTIVE.value,
                lab.Sample.purpose.in_(_COMPLIANCE),
            )
            .distinct()
        )
    )
    products = await inventory.products_of(uow, lots)
    for lot in lots:
        results = {r.id: r for r in attached.get(lot.id, [])}
        own = _result_id_of(lot.lab_result)
        if own is not None and own in inherited:
            results.setdefault(own, inherited[own])
        candidates = [
            rules.Candidate(result_name(r.license_id, r.id), rules.ResultStatus(r.status), r.test_time, r.id)
            for r in results.values()
        ]
        base = lot_rules.lab_status_for(products[lot.product_id].product_type)
        status, governing = rules.lot_lab_status(base, candidates, lot.id in pending)
        if (status.value, governing) != (lot.lab_status, lot.lab_result):
            await inventory.set_lab_status(uow, lot, status, governing, action, t)


async def _lock_any_lots(uow: UnitOfWork, lot_ids: Sequence[str]) -> list[models.Lot]:
    """Lock lots of any license by id (in id order), e.g. lots that inherited a voided result."""
    if not lot_ids:
        return []
    rows = await uow.session.scalars(
        select(models.Lot)
        .where(models.Lot.id.in_(sorted(set(lot_ids))))
        .order_by(models.Lot.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(rows.all())


async def _lab_license(uow: UnitOfWork, lab_license_id: str) -> models.License:
    row = await uow.session.get(models.License, lab_license_id)
    name = f"licenses/{lab_license_id}"
    if row is None:
        raise NotFound("license", name)
    if row.type != LABORATORY:
        raise ReferenceInvalid(f"{name} is not a LABORATORY license", metadata={"lab_license": name})
    return row


# --- samples ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewSample:
    """A sample to take (ids parsed from resource names)."""

    source_lot_id: str
    quantity: Quantity
    lab_license_id: str
    purpose: rules.SamplePurpose
    requested_metric_types: tuple[int, ...] = ()
    requested_metrics: tuple[str, ...] = ()
    state_tag: str = ""


async def _lock_sample(uow: UnitOfWork, license_id: str, sample_id: str) -> lab.Sample:
    row = await uow.session.get(lab.Sample, sample_id, with_for_update=True, populate_existing=True)
    if row is None or row.license_id != license_id:
        raise NotFound("sample", sample_name(license_id, sample_id))
    return row


async def get_sample(uow: UnitOfWork, license_id: str, sample_id: str) -> lab.Sample:
    """One sample of the license, or NOT_FOUND."""
    row = await uow.session.get(lab.Sample, sample_id)
    if row is None or row.license_id != license_id:
        raise NotFound("sample", sample_name(license_id, sample_id))
    return row


async def _sample_changed(
    uow: UnitOfWork, row: lab.Sample, action: str, before: dict[str, Any], t: datetime
) -> str:
    row.version += 1
    row.update_time = t
    return await uow.audit(
        license_id=row.license_id,
        resource=sample_name(row.license_id, row.id),
        action=action,
        before=before,
        after=snapshot(row),
    )


async def create_sample(uow: UnitOfWork, license_id: str, new: NewSample) -> lab.Sample:
    """Take a sample from a lot: the lot loses the quantity, a lineage edge records where it went."""
    await get_license(uow, license_id)
    await _lab_license(uow, new.lab_license_id)
    if new.requested_metrics:
        known = await metric_infos(uow, new.requested_metrics)
        problems = [
            FieldViolation(
                f"sample.requested_metrics[{i}]", f"unknown or superseded lab metric labMetrics/{mid}"
            )
            for i, mid in enumerate(new.requested_metrics)
            if mid not in known or known[mid].superseded_by
        ]
        if problems:
            raise InvalidArgument("sample.requested_metrics names unknown lab metrics", problems)
    lot = await inventory.lock_lot(uow, license_id, new.source_lot_id)
    product = await inventory.get_product(uow, license_id, lot.product_id)
    inventory.counting(product).check_fits(new.quantity, "sample.quantity")
    lot_rules.positive(new.quantity, "sample.quantity")
    t = now()
    await inventory.consume(uow, lot, new.quantity.amount, "SAMPLE", t)
    row = lab.Sample(
        id=str(ULID.from_datetime(t)),
        license_id=license_id,
        source_lot_id=lot.id,
        quantity=new.quantity.amount,
        unit=new.quantity.unit.value,
        lab_license_id=new.lab_license_id,
        purpose=new.purpose.value,
        requested_metric_types=list(new.requested_metric_types),
        requested_metrics=list(new.requested_metrics),
        state_tag=new.state_tag,
        status=rules.SampleStatus.ACTIVE.value,
        lab_result_id="",
        close_note="",
        close_time=None,
        create_time=t,
        update_time=t,
        version=1,
    )
    uow.session.add(row)
    name = sample_name(license_id, row.id)
    lineage.link(uow, inventory.lot_name(license_id, lot.id), name, lineage.Op.SAMPLE, t, new.quantity)
    await uow.audit(license_id=license_id, resource=name, action="CREATE", before=None, after=snapshot(row))
    if new.purpose in rules.COMPLIANCE_PURPOSES:
        await rederive(uow, [lot], "LAB_STATUS", t)
    await uow.session.flush()
    return row


@dataclass(frozen=True)
class SampleFilter:
    """ListSamples filters; empty values mean "any"."""

    source_lot_id: str = ""
    lab_license_id: str = ""
    status: int = 0


async def list_samples(
    uow: UnitOfWork, license_id: str | None, f: SampleFilter, size: int, token: str
) -> Page[lab.Sample]:
    """A page of samples in id order; ``license_id`` None lists every license (``licenses/-``)."""
    s = lab.Sample
    stmt = select(s)
    if license_id is not None:
        await get_license(uow, license_id)
        stmt = stmt.where(s.license_id == license_id)
    if f.source_lot_id:
        stmt = stmt.where(s.source_lot_id == f.source_lot_id)
    if f.lab_license_id:
        stmt = stmt.where(s.lab_license_id == f.lab_license_id)
    if f.status:
        stmt = stmt.where(s.status == f.status)
    query = {
        "parent": license_id or "-",
        "lot": f.source_lot_id,
        "lab": f.lab_license_id,
        "status": str(f.status),
    }
    return await list_page(uow, stmt, s.id, size, token, query)


async def destroy_sample(
    uow: UnitOfWork, license_id: str, sample_id: str, note: str, given_etag: str
) -> lab.Sample:
    """The laboratory consumed the sample: DESTROYED, locked; the material stays gone."""
    row = await _lock_sample(uow, license_id, sample_id)
    check_etag(given_etag, row.id, row.version)
    status = rules.SampleStatus(row.status)
    rules.check_sample_destroyable(status)
    t = now()
    before = snapshot(row)
    row.status = rules.SampleStatus.DESTROYED.value
    row.close_note = note
    row.close_time = t
    await _sample_changed(uow, row, "DESTROYED", before, t)
    if status is rules.SampleStatus.ACTIVE and rules.SamplePurpose(row.purpose) in rules.COMPLIANCE_PURPOSES:
        # No longer at the laboratory awaiting a result: the lot may stop being SAMPLED.
        await rederive(uow, await _lock_any_lots(uow, [row.source_lot_id]), "LAB_STATUS", t)
    return row


async def void_sample(
    uow: UnitOfWork, license_id: str, sample_id: str, reason: str, given_etag: str
) -> lab.Sample:
    """An untested sample comes back: VOIDED, locked, its quantity returned to the source lot."""
    row = await _lock_sample(uow, license_id, sample_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_sample_active(rules.SampleStatus(row.status), "void")
    lot = await inventory.lock_lot(uow, license_id, row.source_lot_id)
    lot_status = lot_rules.Status(lot.status)
    if lot_status is lot_rules.Status.IN_TRANSIT:
        lot_rules.check_usable(lot_rules.Status.TRANSFERRED, "return a sample to")  # RESOURCE_LOCKED
    t = now()
    await inventory.restore(uow, lot, row.quantity, "SAMPLE_RETURNED", t)
    before = snapshot(row)
    row.status = rules.SampleStatus.VOIDED.value
    row.close_note = reason
    row.close_time = t
    await _sample_changed(uow, row, "VOIDED", before, t)
    if rules.SamplePurpose(row.purpose) in rules.COMPLIANCE_PURPOSES:
        await rederive(uow, [lot], "LAB_STATUS", t)
    return row


# --- results ------------------------------------------------------------------------------------


@dataclass
class ResultView:
    """A result with its reported metrics (in order) and attached lot ids (in order)."""

    result: lab.LabResult
    metrics: list[lab.LabResultMetric] = field(default_factory=list)
    lot_ids: list[str] = field(default_factory=list)


async def views(uow: UnitOfWork, results: Sequence[lab.LabResult]) -> list[ResultView]:
    """Results with their metrics and lots, in two queries whatever their number."""
    ids = [r.id for r in results]
    if not ids:
        return []
    out = {r.id: ResultView(r) for r in results}
    metrics = await uow.session.scalars(
        select(lab.LabResultMetric)
        .where(lab.LabResultMetric.result_id.in_(ids))
        .order_by(lab.LabResultMetric.result_id, lab.LabResultMetric.position)
    )
    for m in metrics:
        out[m.result_id].metrics.append(m)
    lots = await uow.session.execute(
        select(lab.LabResultLot.result_id, lab.LabResultLot.lot_id)
        .where(lab.LabResultLot.result_id.in_(ids))
        .order_by(lab.LabResultLot.result_id, lab.LabResultLot.position)
    )
    for rid, lot_id in lots:
        out[rid].lot_ids.append(lot_id)
    return [out[i] for i in ids]


async def view(uow: UnitOfWork, row: lab.LabResult) -> ResultView:
    """One result with its metrics and lots."""
    await uow.session.flush()
    return (await views(uow, [row]))[0]


async def get_result(uow: UnitOfWork, license_id: str, result_id: str) -> lab.LabResult:
    """One result of the license (any state), or NOT_FOUND."""
    row = await uow.session.get(lab.LabResult, result_id)
    if row is None or row.license_id != license_id:
        raise NotFound("lab result", result_name(license_id, result_id))
    return row


async def _lock_result(uow: UnitOfWork, license_id: str, result_id: str) -> lab.LabResult:
    row = await uow.session.get(lab.LabResult, result_id, with_for_update=True, populate_existing=True)
    if row is None or row.license_id != license_id:
        raise NotFound("lab result", result_name(license_id, result_id))
    return row


async def _result_changed(
    uow: UnitOfWork, row: lab.LabResult, action: str, before: dict[str, Any], t: datetime, **extra: Any
) -> str:
    row.version += 1
    row.update_time = t
    return await uow.audit(
        license_id=row.license_id,
        resource=result_name(row.license_id, row.id),
        action=action,
        before=before,
        after={**snapshot(row), **extra},
    )


@dataclass(frozen=True)
class NewResult:
    """A result to record (ids parsed from resource names)."""

    lab_license_id: str
    metrics: tuple[rules.Reported, ...]
    test_time: datetime
    sample_id: str = ""
    lot_ids: tuple[str, ...] = ()
    claimed: rules.ResultStatus | None = None
    certificate_number: str = ""


def _ordered_unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


async def create_result(uow: UnitOfWork, license_id: str, new: NewResult, panels: rules.Panels) -> ResultView:
    """Record a result: checked metrics, computed status, attached lots, their lab status."""
    lic = await get_license(uow, license_id)
    await _lab_license(uow, new.lab_license_id)
    known = await metric_infos(uow, [m.metric_id for m in new.metrics])
    measured = rules.check_metrics(new.metrics, known)
    sample: lab.Sample | None = None
    lot_ids = list(new.lot_ids)
    if new.sample_id:
        sample = await _lock_sample(uow, license_id, new.sample_id)
        rules.check_sample_active(rules.SampleStatus(sample.status), "record a result for the sample")
        if sample.lab_license_id != new.lab_license_id:
            raise ReferenceInvalid(
                f"sample {sample_name(license_id, sample.id)} was sent to licenses/{sample.lab_license_id}, "
                f"not licenses/{new.lab_license_id}",
                metadata={"lab_license": f"licenses/{sample.lab_license_id}"},
            )
        lot_ids.insert(0, sample.source_lot_id)
    lot_ids = _ordered_unique(lot_ids)
    if not lot_ids:  # the contract's create_lab_result.subject rule, for callers that skip it
        raise InvalidArgument(
            "name the tested sample or at least one lot",
            [FieldViolation("lab_result.lots", "required when lab_result.sample is empty")],
        )
    locked = await inventory.lock_lots(uow, license_id, lot_ids)
    primary = locked[lot_ids[0]]
    product = await inventory.get_product(uow, license_id, primary.product_id)
    panel = panels.select(lic.jurisdiction, product.product_type)
    evaluation = rules.evaluate(measured, panel)
    rules.check_claimed(new.claimed, evaluation)
    t = now()
    counts = sample is None or rules.SamplePurpose(sample.purpose) in rules.COMPLIANCE_PURPOSES
    row = lab.LabResult(
        id=str(ULID.from_datetime(t)),
        license_id=license_id,
        lab_license_id=new.lab_license_id,
        sample_id=sample.id if sample else None,
        status=evaluation.status.value,
        state=rules.ResultState.ACTIVE.value,
        counts=counts,
        jurisdiction=lic.jurisdiction,
        product_type=product.product_type,
        panel=panel.id,
        missing_metrics=list(evaluation.missing),
        test_time=new.test_time,
        certificate_number=new.certificate_number,
        coa_sha256="",
        void_reason="",
        void_confirmation=None,
        void_time=None,
        create_time=t,
        update_time=t,
        version=1,
    )
    uow.session.add(row)
    await uow.session.flush()
    uow.session.add_all(
        lab.LabResultMetric(
            result_id=row.id,
            position=i,
            metric_id=m.metric_id,
            qom=m.qom,
            uom=m.uom.value,
            lod=m.lod,
            loq=m.loq,
            limit=m.limit,
            status=m.status.value,
        )
        for i, m in enumerate(new.metrics)
    )
    uow.session.add_all(
        lab.LabResultLot(result_id=row.id, lot_id=lot_id, position=i, attach_time=t)
        for i, lot_id in enumerate(lot_ids)
    )
    name = result_name(license_id, row.id)
    await uow.audit(
        license_id=license_id,
        resource=name,
        action="CREATE",
        before=None,
        after={
            **snapshot(row),
            "lots": [inventory.lot_name(license_id, i) for i in lot_ids],
            "metrics": [
                {
                    "lab_metric": m.metric_id,
                    "qom": m.qom,
                    "uom": m.uom.value,
                    "limit": m.limit,
                    "status": m.status.value,
                }
                for m in new.metrics
            ],
        },
    )
    if sample is not None:
        before = snapshot(sample)
        sample.status = rules.SampleStatus.TESTED.value
        sample.lab_result_id = row.id
        await _sample_changed(uow, sample, "TESTED", before, t)
    if counts:
        await rederive(uow, [locked[i] for i in lot_ids], "LAB_RESULT", t)
    return await view(uow, row)


@dataclass(frozen=True)
class ResultFilter:
    """ListLabResults filters; empty values mean "any"."""

    lot_id: str = ""
    sample_id: str = ""
    lab_license_id: str = ""
    state: int = 0


async def list_results(
    uow: UnitOfWork, license_id: str | None, f: ResultFilter, size: int, token: str
) -> tuple[list[ResultView], str]:
    """A page of results in id order; ``license_id`` None lists every license (``licenses/-``)."""
    r = lab.LabResult
    stmt = select(r)
    if license_id is not None:
        await get_license(uow, license_id)
        stmt = stmt.where(r.license_id == license_id)
    if f.lot_id:
        stmt = stmt.where(
            r.id.in_(select(lab.LabResultLot.result_id).where(lab.LabResultLot.lot_id == f.lot_id))
        )
    if f.sample_id:
        stmt = stmt.where(r.sample_id == f.sample_id)
    if f.lab_license_id:
        stmt = stmt.where(r.lab_license_id == f.lab_license_id)
    if f.state:
        stmt = stmt.where(r.state == f.state)
    query = {
        "parent": license_id or "-",
        "lot": f.lot_id,
        "sample": f.sample_id,
        "lab": f.lab_license_id,
        "state": str(f.state),
    }
    page: Page[lab.LabResult] = await list_page(uow, stmt, r.id, size, token, query)
    return await views(uow, page.rows), page.next_page_token


async def _attached(uow: UnitOfWork, result_id: str) -> list[str]:
    return list(
        await uow.session.scalars(
            select(lab.LabResultLot.lot_id)
            .where(lab.LabResultLot.result_id == result_id)
            .order_by(lab.LabResultLot.position)
        )
    )


async def attach_result(
    uow: UnitOfWork, license_id: str, result_id: str, lot_ids: Sequence[str], given_etag: str
) -> ResultView:
    """Attach an ACTIVE result to more lots and recompute their lab status."""
    row = await _lock_result(uow, license_id, result_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_result_active(rules.ResultState(row.state), "attach")
    existing = await _attached(uow, row.id)
    locked = await inventory.lock_lots(uow, license_id, lot_ids)
    added = [i for i in _ordered_unique(lot_ids) if i not in set(existing)]
    if not added:
        return await view(uow, row)
    t = now()
    uow.session.add_all(
        lab.LabResultLot(result_id=row.id, lot_id=lot_id, position=len(existing) + n, attach_time=t)
        for n, lot_id in enumerate(added)
    )
    before = snapshot(row)
    await _result_changed(
        uow, row, "ATTACH", before, t, attached_lots=[inventory.lot_name(license_id, i) for i in added]
    )
    if row.counts:
        await rederive(uow, [locked[i] for i in added], "LAB_RESULT", t)
    return await view(uow, row)


async def request_void(
    uow: UnitOfWork, license_id: str, result_id: str, reason: str, given_etag: str
) -> ResultView:
    """Step one: VOID_PENDING with a reason; the result still governs its lots."""
    row = await _lock_result(uow, license_id, result_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_result_active(rules.ResultState(row.state), "void")
    before = snapshot(row)
    row.state = rules.ResultState.VOID_PENDING.value
    row.void_reason = reason
    await _result_changed(uow, row, "VOID_REQUESTED", before, now())
    return await view(uow, row)


async def confirm_void(
    uow: UnitOfWork, license_id: str, result_id: str, signature: Signature | None, given_etag: str
) -> ResultView:
    """Step two: VOIDED with an e-signature; every lot it governed is re-evaluated without it."""
    row = await _lock_result(uow, license_id, result_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_void_confirmable(rules.ResultState(row.state))
    if signature is None:
        raise ESignatureRequired("confirming a lab result void needs an e-signature")
    before = snapshot(row)
    t = now()
    confirmation = {
        "signer": signature.signer,
        "meaning": signature.meaning,
        "reason": signature.reason,
        "sign_time": t.isoformat(),
    }
    row.state = rules.ResultState.VOIDED.value
    row.void_time = t
    row.void_confirmation = confirmation
    audit_id = await _result_changed(uow, row, "VOIDED", before, t)
    row.void_confirmation = {**confirmation, "audit_event_id": audit_id}
    if row.counts:
        name = result_name(license_id, row.id)
        inherited = await uow.session.scalars(select(models.Lot.id).where(models.Lot.lab_result == name))
        affected = _ordered_unique([*await _attached(uow, row.id), *inherited])
        await rederive(uow, await _lock_any_lots(uow, affected), "LAB_RESULT_VOIDED", t)
    return await view(uow, row)


async def cancel_void(uow: UnitOfWork, license_id: str, result_id: str, given_etag: str) -> ResultView:
    """Withdraw a pending void: ACTIVE again."""
    row = await _lock_result(uow, license_id, result_id)
    check_etag(given_etag, row.id, row.version)
    rules.check_void_cancellable(rules.ResultState(row.state))
    before = snapshot(row)
    row.state = rules.ResultState.ACTIVE.value
    row.void_reason = ""
    await _result_changed(uow, row, "VOID_CANCELLED", before, now())
    return await view(uow, row)


# --- certificates of analysis ------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """A certificate to store."""

    data: bytes
    content_type: str = PDF
    source_uri: str = ""

    @property
    def sha256(self) -> str:
        """Lowercase hex SHA-256 of the bytes."""
        return hashlib.sha256(self.data).hexdigest()


async def import_certificate(
    uow: UnitOfWork, license_id: str, result_id: str, doc: Document, expected_sha256: str, given_etag: str
) -> tuple[str, ResultView]:
    """Store a result's certificate of analysis; returns its SHA-256 and the result.

    The same document again changes nothing; a different one is refused (a result holds one).
    """
    digest = doc.sha256
    if expected_sha256 and expected_sha256 != digest:
        raise InvalidArgument(
            "the document's SHA-256 does not match expected_sha256",
            [FieldViolation("expected_sha256", f"the stored document would have SHA-256 {digest}")],
        )
    row = await _lock_result(uow, license_id, result_id)
    rules.check_result_active(rules.ResultState(row.state), "import a certificate for")
    existing = await uow.session.get(lab.LabDocument, row.id)
    if existing is not None:
        if existing.sha256 == digest:
            return digest, await view(uow, row)
        raise InvalidStateTransition(
            f"the lab result already holds a different certificate (SHA-256 {existing.sha256}); void the "
            "result and record a new one",
            metadata={"coa_sha256": existing.sha256},
        )
    check_etag(given_etag, row.id, row.version)
    t = now()
    uow.session.add(
        lab.LabDocument(
            result_id=row.id,
            sha256=digest,
            content_type=doc.content_type,
            size=len(doc.data),
            content=doc.data,
            source_uri=doc.source_uri,
            create_time=t,
        )
    )
    before = snapshot(row)
    row.coa_sha256 = digest
    await _result_changed(
        uow,
        row,
        "CERTIFICATE_IMPORTED",
        before,
        t,
        certificate={
            "sha256": digest,
            "size": len(doc.data),
            "content_type": doc.content_type,
            "uri": doc.source_uri,
        },
    )
    return digest, await view(uow, row)


async def get_certificate(uow: UnitOfWork, license_id: str, result_id: str) -> lab.LabDocument:
    """The stored certificate of a result, or NOT_FOUND (for the result, or for the document)."""
    row = await get_result(uow, license_id, result_id)
    doc = await uow.session.get(lab.LabDocument, row.id)
    if doc is None:
        raise NotFound("certificate of analysis", f"{result_name(license_id, result_id)}:certificate")
    return doc
