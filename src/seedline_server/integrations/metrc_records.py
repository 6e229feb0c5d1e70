"""Gathers from PostgreSQL what the METRC mapping needs, and our side of a reconciliation.

A delivery carries the audit snapshots of its change; the mapping also needs names (strain,
location, item, harvest) and the labels of related records. This module reads them with a few
small queries per delivery and hands plain facts to :mod:`metrc_mapping`.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from seedline_server.domain import lot as lot_rules
from seedline_server.domain.lab import MetricStatus
from seedline_server.integrations import metrc_mapping as m
from seedline_server.integrations.connector import Job
from seedline_server.service import outbox
from seedline_server.service.registry import snapshot
from seedline_server.store import integration_models as im
from seedline_server.store import lab_models as lab
from seedline_server.store import models

__all__ = ["RecordReader"]

NAME_TTL = 30.0  # seconds a display name read from the database is reused
_PLANT_PHASE_NAMES = {1: "CLONE", 2: "SEEDLING", 3: "VEGETATIVE", 4: "FLOWERING", 5: "HARVESTED"}
_ACTIVE_PLANT = 1  # PlantState ACTIVE
_DEPLETED_OR_GONE = frozenset({"DEPLETED", "DESTROYED"})


def _id(resource: str) -> str:
    """The last segment of a resource name (or the id itself)."""
    return resource.rsplit("/", 1)[-1]


class RecordReader:
    """Reads records of one license for one METRC integration."""

    def __init__(self, engine: AsyncEngine, license_id: str, integration_id: str) -> None:
        self._engine = engine
        self.license_id = license_id
        self.integration_id = integration_id
        # Display names of varieties, sections, products and collections rarely change; each is
        # read at most every NAME_TTL seconds, which spares most deliveries a query.
        self._names_cache: dict[tuple[str, str], tuple[float, str]] = {}

    # -- deliveries ----------------------------------------------------------------------------

    async def plan(self, job: Job) -> m.Plan | None:
        """The METRC calls for ``job`` (None or an empty plan: nothing to tell METRC)."""
        noun = job.event_type.split(".", 1)[0]
        verb = str(job.payload.get("verb", ""))
        before = job.payload.get("before") or {}
        after = job.payload.get("after") or {}
        async with AsyncSession(self._engine) as session:
            if noun == "plant":
                return await self._plant(session, verb, before, after)
            if noun == "lot":
                return await self._lot(session, job, verb, before, after)
            if noun == "lab_result" and verb in ("CREATE", "ATTACH"):
                return await self._lab(session, verb, after)
            if noun == "transfer" and verb == "TRANSFER_COMMITTED":
                return await self._transfer(session, after)
        return None

    async def _names(self, session: AsyncSession, model: Any, ids: list[str]) -> dict[str, str]:
        now = time.monotonic()
        table = model.__tablename__
        out: dict[str, str] = {}
        missing: list[str] = []
        for i in dict.fromkeys(i for i in ids if i):
            hit = self._names_cache.get((table, i))
            if hit is not None and hit[0] > now:
                out[i] = hit[1]
            else:
                missing.append(i)
        if missing:
            rows = await session.execute(select(model.id, model.display_name).where(model.id.in_(missing)))
            for rid, name in rows:
                out[rid] = name
                self._names_cache[(table, rid)] = (now + NAME_TTL, name)
        return out

    async def _plant(
        self, session: AsyncSession, verb: str, before: dict[str, Any], after: dict[str, Any]
    ) -> m.Plan | None:
        strain = await self._names(session, models.Variety, [str(after.get("variety_id", ""))])
        sections = await self._names(
            session, models.Section, [str(after.get("section_id", "")), str(before.get("section_id", ""))]
        )
        facts = m.PlantFacts(
            label=m.label_for(str(after["id"]), str(after.get("display_name", ""))),
            strain=strain.get(str(after.get("variety_id", "")), ""),
            location=sections.get(str(after.get("section_id", "")), ""),
            previous_location=sections.get(str(before.get("section_id", "")), ""),
        )
        if verb == "CREATE":
            return m.plant_created(after, facts)
        if verb == "RAW_COLLECTED" and after.get("collection"):
            cid = _id(str(after["collection"]))
            names = await self._names(session, models.Collection, [cid])
            after = after | {"collection_name": names.get(cid) or cid}  # METRC needs a harvest name
        return m.plant_changed(verb, before, after, facts)

    async def _lot_facts(self, session: AsyncSession, job: Job, after: dict[str, Any]) -> m.LotFacts:
        lot_id = str(after["id"])
        product = await session.get(models.Product, str(after.get("product_id", "")))
        section = await self._names(session, models.Section, [str(after.get("section_id", ""))])
        unit = "Grams"
        if product is not None:
            counting = lot_rules.Counting.of(
                product.package_type,
                product.bulk_unit,
                product.unit_size_value,
                product.unit_size_unit,
                product.pack_unit_count,
            )
            unit = m.UNIT_NAMES.get(counting.dimension.name, "Grams")
        harvest = ""
        if after.get("source_collection"):
            cid = _id(str(after["source_collection"]))
            names = await self._names(session, models.Collection, [cid])
            harvest = names.get(cid) or cid  # the same name the plants were harvested under
        ingredients: list[tuple[str, Decimal]] = []
        if after.get("source_lots") and not harvest:
            resource = f"licenses/{self.license_id}/lots/{lot_id}"
            edges = (
                await session.execute(
                    select(models.LineageEdge.source, models.LineageEdge.quantity).where(
                        models.LineageEdge.target == resource
                    )
                )
            ).all()
            sources = {_id(src): q for src, q in edges if "/lots/" in src}
            labels = await self._lot_labels(session, list(sources))
            ingredients = [(labels[i], sources[i] or Decimal(0)) for i in sources if i in labels]
        reason, note = 0, ""
        if job.audit_event_id:
            adj = (
                await session.execute(
                    select(models.LotAdjustment.reason, models.LotAdjustment.note).where(
                        models.LotAdjustment.audit_event_id == job.audit_event_id
                    )
                )
            ).first()
            if adj is not None:
                reason, note = int(adj[0]), str(adj[1] or "")
        return m.LotFacts(
            label=m.label_for(lot_id, str(after.get("display_name", "")), str(after.get("state_tag", ""))),
            item=product.display_name if product is not None else "",
            location=section.get(str(after.get("section_id", "")), ""),
            unit=unit,
            harvest_name=harvest,
            ingredients=ingredients,
            reason=reason,
            note=note,
        )

    async def _lot_labels(self, session: AsyncSession, lot_ids: list[str]) -> dict[str, str]:
        if not lot_ids:
            return {}
        lot = models.Lot
        rows = await session.execute(
            select(lot.id, lot.display_name, lot.state_tag).where(lot.id.in_(lot_ids))
        )
        return {r[0]: m.label_for(r[0], r[1], r[2]) for r in rows}

    async def _lot(
        self, session: AsyncSession, job: Job, verb: str, before: dict[str, Any], after: dict[str, Any]
    ) -> m.Plan | None:
        if not after.get("id"):
            return None
        facts = await self._lot_facts(session, job, after)
        if verb.startswith("CREATE"):
            return m.lot_created(verb, after, facts)
        return m.lot_changed(verb, before, after, facts)

    async def _lab(self, session: AsyncSession, verb: str, after: dict[str, Any]) -> m.Plan | None:
        result_id = str(after.get("id", ""))
        lots = after.get("attached_lots") if verb == "ATTACH" else after.get("lots")
        lot_ids = [_id(str(x)) for x in lots or []]
        labels = await self._lot_labels(session, lot_ids)
        rows = (
            await session.execute(
                select(lab.LabMetric.metrc_name, lab.LabResultMetric.qom, lab.LabResultMetric.status)
                .join(lab.LabMetric, lab.LabMetric.id == lab.LabResultMetric.metric_id)
                .where(lab.LabResultMetric.result_id == result_id)
                .order_by(lab.LabResultMetric.position)
            )
        ).all()
        results: list[tuple[str, Decimal, bool]] = []
        for name, qom, status in rows:
            if not name or status in (MetricStatus.NOT_TESTED.value, MetricStatus.NOT_APPLICABLE.value):
                continue  # no METRC test type for this metric, or nothing measured
            try:
                value = Decimal(qom) if qom else Decimal(0)
            except ArithmeticError:
                value = Decimal(0)
            results.append((name, value, status != MetricStatus.FAIL.value))
        when = m.day(after.get("test_time") or after.get("create_time"))
        return m.lab_recorded(m.LabFacts([labels[i] for i in lot_ids if i in labels], results, when))

    async def _transfer(self, session: AsyncSession, after: dict[str, Any]) -> m.Plan | None:
        licenses = (
            await session.execute(
                select(models.License.id, models.License.license_number, models.License.display_name).where(
                    models.License.id.in_(
                        [str(after.get("source_license_id", "")), str(after.get("target_license_id", ""))]
                    )
                )
            )
        ).all()
        by_id = {r[0]: (r[1], r[2]) for r in licenses}
        source = by_id.get(str(after.get("source_license_id", "")), ("", ""))
        target = by_id.get(str(after.get("target_license_id", "")), ("", ""))
        items = after.get("items") or []
        labels = await self._lot_labels(session, [str(i.get("lot_id", "")) for i in items])
        packages = [
            (labels[str(i.get("lot_id"))], str(i.get("unit_price") or ""))
            for i in items
            if str(i.get("lot_id")) in labels
        ]
        transfer_id = str(after.get("id", ""))
        return m.transfer_committed(
            m.TransferFacts(
                name=str(after.get("external_id") or f"SEEDLINE-{transfer_id}"),
                shipper_license=source[0],
                shipper_name=source[1],
                recipient_license=target[0],
                depart=str(after.get("planned_depart_time") or ""),
                arrive=str(after.get("planned_arrive_time") or ""),
                packages=packages,
                transporter_license=str(after.get("transporter_license_id") or ""),
                driver=after.get("driver") or {},
                vehicle=after.get("vehicle") or {},
            )
        )

    # -- reconciliation ------------------------------------------------------------------------

    async def local_plants(self, since: datetime | None) -> dict[str, m.LocalRecord]:
        """Our tagged plants (vegetative and later) by METRC label, changed since ``since``."""
        p = models.Plant
        stmt = select(p.id, p.display_name, p.phase, p.state).where(
            p.license_id == self.license_id, p.phase.in_([*m.TAGGED, m.HARVESTED])
        )
        if since is not None:
            stmt = stmt.where(p.update_time >= since)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        out: dict[str, m.LocalRecord] = {}
        for pid, name, phase, state in rows:
            label = m.label_for(pid, name)
            active = state == _ACTIVE_PLANT and phase != m.HARVESTED
            resource = f"licenses/{self.license_id}/plants/{pid}"
            out[label] = m.LocalRecord(resource, label, _PLANT_PHASE_NAMES.get(phase, str(phase)), active)
        return out

    async def local_lots(self, since: datetime | None) -> dict[str, m.LocalRecord]:
        """Our lots by METRC label, changed since ``since`` (with their quantity in METRC's unit)."""
        lot, product = models.Lot, models.Product
        stmt = (
            select(
                lot.id,
                lot.display_name,
                lot.state_tag,
                lot.quantity,
                lot.status,
                product.package_type,
                product.bulk_unit,
                product.unit_size_value,
                product.unit_size_unit,
                product.pack_unit_count,
            )
            .join(product, product.id == lot.product_id)
            .where(lot.license_id == self.license_id)
        )
        if since is not None:
            stmt = stmt.where(lot.update_time >= since)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        out: dict[str, m.LocalRecord] = {}
        for r in rows:
            counting = lot_rules.Counting.of(r[5], r[6], r[7], r[8], r[9])
            unit = m.UNIT_NAMES.get(counting.dimension.name, "Grams")
            label = m.label_for(r[0], r[1], r[2])
            active = lot_rules.Status(r[4]).name not in _DEPLETED_OR_GONE
            value = f"{m.amount(r[3])} {unit}"
            out[label] = m.LocalRecord(f"licenses/{self.license_id}/lots/{r[0]}", label, value, active)
        return out

    async def remember(self, matched: dict[str, str]) -> None:
        """Remember METRC's label of each matched resource (``remote_ids``)."""
        if not matched:
            return
        rows = [
            {"integration_id": self.integration_id, "resource": k, "remote_id": v} for k, v in matched.items()
        ]
        stmt = pg_insert(im.RemoteId).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[im.RemoteId.integration_id, im.RemoteId.resource],
            set_={"remote_id": stmt.excluded.remote_id},
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def resend(self, resources: list[str], scope: str) -> int:
        """Queue a creation delivery for each resource METRC lacks (a PUSH); returns how many."""
        if not resources:
            return 0
        model: Any = models.Plant if scope == "PLANTS" else models.Lot
        ids = [_id(r) for r in resources]
        async with AsyncSession(self._engine) as session, session.begin():
            rows = (await session.scalars(select(model).where(model.id.in_(ids)))).all()
            changes = [
                outbox.AuditedChange(
                    "",
                    self.license_id,
                    f"licenses/{self.license_id}/{'plants' if scope == 'PLANTS' else 'lots'}/{row.id}",
                    "CREATE",
                    None,
                    json.loads(json.dumps(snapshot(row), default=str)),
                )
                for row in rows
            ]
            return await outbox.enqueue_resend(
                session,
                integration_id=self.integration_id,
                kind="METRC",
                changes=changes,
                now=datetime.now(UTC),
            )
