"""The BioTrackTHC connector's planning step: read what the mapping needs, then map.

:func:`plan` asks :func:`biotrack_mapping.needs` which facts a change needs (variety and
section names, product facts, license numbers, the BioTrackTHC barcodes already known for the
resources it references, and for an adjustment or a conversion their details), reads them all
in **one** query (a ``UNION ALL`` of small indexed lookups), and hands them to
:func:`biotrack_mapping.plan`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.integrations import biotrack_mapping as m
from seedline_server.integrations.connector import Job
from seedline_server.integrations.transport import RemoteError

if TYPE_CHECKING:
    from seedline_server.integrations.biotrack import BioTrackConnector

__all__ = ["plan", "read_names"]

# One row per fact: (kind, key, a, b, c, d); every lookup uses a primary key or an index.
# Lineage operation 4 is seedline.inventory.v1.LineageOperation.CONVERSION.
_FACTS: Final = text(
    """
    SELECT 'strain' AS kind, id AS key, display_name AS a, '' AS b, '' AS c, '' AS d
      FROM varieties WHERE id = ANY(CAST(:varieties AS text[]))
    UNION ALL
    SELECT 'room', id, display_name, '', '', '' FROM sections WHERE id = ANY(CAST(:sections AS text[]))
    UNION ALL
    SELECT 'product', id, display_name, product_type, CAST(package_type AS text), CAST(bulk_unit AS text)
      FROM products WHERE id = ANY(CAST(:products AS text[]))
    UNION ALL
    SELECT 'license', id, license_number, '', '', '' FROM licenses WHERE id = ANY(CAST(:licenses AS text[]))
    UNION ALL
    SELECT 'barcode', resource, remote_id, '', '', '' FROM remote_ids
     WHERE integration_id = :integration AND resource = ANY(CAST(:resources AS text[]))
    UNION ALL
    SELECT 'adjustment', CAST(seq AS text), CAST(reason AS text), note, '', '' FROM lot_adjustments
     WHERE lot_id = CAST(:adjusted_lot AS text) AND audit_event_id = CAST(:audit AS text)
    UNION ALL
    SELECT 'input', source, CAST(quantity AS text), CAST(unit AS text), '', '' FROM lineage_edges
     WHERE target = CAST(:converted AS text) AND operation = 4
    UNION ALL
    SELECT 'waste', resource, COALESCE(after->>'waste_g', '0'), '', '', '' FROM audit_events
     WHERE resource = CAST(:converted AS text) AND action = 'CONVERSION_BALANCE'
    """
)


async def read_names(
    engine: AsyncEngine, integration_id: str, want: m.Needs, job: Job, location: str
) -> m.Names:
    """Read the facts ``want`` names for ``job`` in one query.

    Args:
        engine: The database.
        integration_id: Whose remembered barcodes to read.
        want: What to read (from :func:`biotrack_mapping.needs`).
        job: The delivery (its resource, audit event and commit time).
        location: The integration's BioTrackTHC location id.

    Returns:
        The facts found; missing ones are simply absent (the mapping says what it lacks).

    """
    params: dict[str, Any] = {
        "varieties": sorted(want.varieties),
        "sections": sorted(want.sections),
        "products": sorted(want.products),
        "licenses": sorted(want.licenses),
        "integration": integration_id,
        "resources": sorted(want.resources),
        "adjusted_lot": job.resource.rsplit("/", 1)[-1] if want.adjustment else None,
        "audit": job.audit_event_id if want.adjustment else None,
        "converted": job.resource if want.conversion else None,
    }
    async with engine.connect() as conn:
        rows = [tuple(r) for r in (await conn.execute(_FACTS, params)).all()]
    strains: dict[str, str] = {}
    rooms: dict[str, str] = {}
    products: dict[str, m.ProductFacts] = {}
    licenses: dict[str, str] = {}
    barcodes: dict[str, str] = {}
    inputs: list[m.Input] = []
    reason: int | None = None
    note = ""
    waste: Decimal | None = None
    for kind, key, a, b, c, d in rows:
        if kind == "strain":
            strains[key] = a
        elif kind == "room":
            rooms[key] = a
        elif kind == "product":
            products[key] = m.ProductFacts(a, b, int(c), int(d))
        elif kind == "license":
            licenses[key] = a
        elif kind == "barcode":
            barcodes[key] = a
        elif kind == "adjustment":
            reason, note = int(a), b
        elif kind == "input":
            inputs.append(m.Input(key, Decimal(a), int(b)))
        elif kind == "waste":
            waste = Decimal(a)
    return m.Names(
        resource=job.resource,
        location=location,
        event_time=job.create_time,
        strains=strains,
        rooms=rooms,
        barcodes=barcodes,
        products=products,
        license_numbers=licenses,
        adjust_reason=reason,
        adjust_note=note,
        inputs=tuple(sorted(inputs, key=lambda i: i.lot)),
        waste_g=waste,
    )


async def plan(connector: BioTrackConnector, job: Job) -> m.Plan | None:
    """What ``job`` sends to BioTrackTHC; None when its kind of change is not reported.

    Raises:
        RemoteError: the change cannot be expressed yet (retryable: a referenced record is not
            registered at BioTrackTHC yet) or at all (permanent).

    """
    if not m.mapped(job.event_type):
        return None
    want = m.needs(job.event_type, job.payload, job.resource)
    names = await read_names(connector.engine, connector.row.id, want, job, connector.location)
    try:
        return m.plan(job.event_type, job.payload, names)
    except m.MappingError as exc:
        raise RemoteError(
            f"cannot report {job.event_type} to BioTrackTHC: {exc.detail}",
            retryable=exc.waiting,
            maybe_sent=False,
            counts_for_breaker=False,
        ) from exc
