"""audit chains: one hash chain per license, with a gap-free sequence

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 20:10:00.000000

Until now ``audit_events`` formed one global chain (``hash = sha256(prev_hash + json)``). This
revision gives every license its own chain, numbered by ``sequence`` from 1, and hashes the
RFC 8785 canonical JSON of each event's chain document (see ``seedline_server.domain.audit``).

Existing events are re-chained, per license in their insertion (``seq``) order. Re-hashing
would launder a tampered history, so the old global chain is verified first and the migration
stops at its first broken link; ``alembic -x audit_rechain=force`` re-chains anyway (after an
investigation, which should be recorded elsewhere). The append-only trigger is disabled for the
re-chaining only, inside the migration's transaction (table owner; DDL is transactional, so a
failure leaves the trigger enabled). The downgrade re-chains the other way.
"""

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from seedline_server.domain.audit import GENESIS_HASH, chain_document, event_hash

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BATCH = 2000

_audit = sa.table(
    "audit_events",
    sa.column("seq", sa.BigInteger),
    sa.column("id", sa.String),
    sa.column("license_id", sa.String),
    sa.column("sequence", sa.BigInteger),
    sa.column("event_time", sa.DateTime(timezone=True)),
    sa.column("principal", sa.Text),
    sa.column("method", sa.Text),
    sa.column("resource", sa.Text),
    sa.column("action", sa.Text),
    sa.column("before", postgresql.JSONB),
    sa.column("after", postgresql.JSONB),
    sa.column("request_id", sa.Text),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
)


def _legacy_hash(prev_hash: str, row: Any) -> str:
    """The pre-0006 formula, frozen here: sha256(prev_hash + sorted-key compact JSON)."""
    content = {
        "id": row.id,
        "license_id": row.license_id,
        "event_time": row.event_time.isoformat(),
        "principal": row.principal,
        "method": row.method,
        "resource": row.resource,
        "action": row.action,
        "before": row.before,
        "after": row.after,
        "request_id": row.request_id,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _rows(conn: sa.Connection) -> Iterator[Any]:
    """Every event in insertion order, in keyset batches (bounded memory)."""
    last = 0
    while True:
        batch = conn.execute(
            sa.select(_audit).where(_audit.c.seq > last).order_by(_audit.c.seq).limit(_BATCH)
        ).all()
        if not batch:
            return
        yield from batch
        last = batch[-1].seq


def _rewrite(conn: sa.Connection, updates: Callable[[Any], dict[str, Any]]) -> None:
    """Update every row with ``updates(row)`` (append-only trigger off for this statement set)."""
    op.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
    stmt = (
        sa.update(_audit)
        .where(_audit.c.seq == sa.bindparam("k"))
        .values(
            sequence=sa.bindparam("s"),
            prev_hash=sa.bindparam("p"),
            hash=sa.bindparam("h"),
        )
    )
    buffer: list[dict[str, Any]] = []
    for row in _rows(conn):
        buffer.append({"k": row.seq, **updates(row)})
        if len(buffer) >= _BATCH:
            conn.execute(stmt, buffer)
            buffer = []
    if buffer:
        conn.execute(stmt, buffer)
    op.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")


def upgrade() -> None:
    conn = op.get_bind()
    force = context.get_x_argument(as_dictionary=True).get("audit_rechain") == "force"
    # (DDL is transactional: if the check below fails, the column goes too.)
    op.add_column("audit_events", sa.Column("sequence", sa.BigInteger(), nullable=True))
    if not force:
        head = GENESIS_HASH
        for row in _rows(conn):
            if row.prev_hash != head or _legacy_hash(row.prev_hash, row) != row.hash:
                raise RuntimeError(
                    f"audit_events: the existing chain is broken at seq {row.seq} (event {row.id}); "
                    "re-chaining would hide it. Investigate, then run the migration with "
                    "`-x audit_rechain=force` to re-chain anyway."
                )
            head = row.hash

    heads: dict[str | None, tuple[int, str]] = {}

    def rechain(row: Any) -> dict[str, Any]:
        sequence, previous = heads.get(row.license_id, (0, GENESIS_HASH))
        sequence += 1
        digest = event_hash(
            chain_document(
                id=row.id,
                license_id=row.license_id,
                sequence=sequence,
                event_time=row.event_time,
                principal=row.principal,
                request_id=row.request_id,
                method=row.method,
                resource=row.resource,
                action=row.action,
                before=row.before,
                after=row.after,
                previous_hash=previous,
            )
        )
        heads[row.license_id] = (sequence, digest)
        return {"s": sequence, "p": previous, "h": digest}

    _rewrite(conn, rechain)
    op.alter_column("audit_events", "sequence", nullable=False)
    op.create_unique_constraint(
        "uq_audit_events_chain",
        "audit_events",
        ["license_id", "sequence"],
        postgresql_nulls_not_distinct=True,
    )
    # The chain constraint's index serves every lookup by license.
    op.drop_index("ix_audit_events_license_id", table_name="audit_events")


def downgrade() -> None:
    conn = op.get_bind()
    op.create_index("ix_audit_events_license_id", "audit_events", ["license_id"], unique=False)
    op.drop_constraint("uq_audit_events_chain", "audit_events", type_="unique")
    head = [GENESIS_HASH]

    def rechain(row: Any) -> dict[str, Any]:
        digest = _legacy_hash(head[0], row)
        previous, head[0] = head[0], digest
        return {"s": row.sequence, "p": previous, "h": digest}

    _rewrite(conn, rechain)
    op.drop_column("audit_events", "sequence")
