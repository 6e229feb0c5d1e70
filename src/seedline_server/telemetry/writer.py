"""One commit of the ingest pipeline: several batches, one transaction.

In order, inside the transaction: lock the gateways' high-water marks (sorted, so writers never
deadlock on them) and drop the batches at or below them as replays; COPY the readings (binary);
upsert the 1-minute and 1-hour roll-ups aggregated in Python; advance the sensors'
``last_observe_time``; advance the high-water marks and store each batch's acknowledgement.
The readings and the marks commit together: a batch is either stored and marked, or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from seedline.telemetry.v1 import telemetry_pb2 as pb

from seedline_server.telemetry import rollup

_GATEWAYS_INSERT = """
INSERT INTO ingest_gateways (license_id, gateway_id, last_sequence, update_time)
SELECT l, g, 0, now() FROM unnest($1::text[], $2::text[]) AS v(l, g) ORDER BY l, g
ON CONFLICT DO NOTHING
"""
_GATEWAYS_LOCK = """
SELECT license_id, gateway_id, last_sequence FROM ingest_gateways
WHERE (license_id, gateway_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY license_id, gateway_id FOR UPDATE
"""
_GATEWAYS_ADVANCE = """
UPDATE ingest_gateways AS g SET last_sequence = v.s, update_time = now()
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(l, gw, s)
WHERE g.license_id = v.l AND g.gateway_id = v.gw
"""
_BATCHES_INSERT = """
INSERT INTO ingest_batches (license_id, gateway_id, sequence, accepted, rejected, commit_time)
SELECT l, g, s, a, r, now() FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::bytea[])
AS v(l, g, s, a, r)
"""
_BATCHES_FIND = """
SELECT license_id, gateway_id, sequence, accepted, rejected FROM ingest_batches
WHERE (license_id, gateway_id, sequence) IN
  (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]))
"""
_ROLLUP = """
INSERT INTO {table} AS r (sensor_key, bucket_start, min, max, sum, count)
SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[], $6::bigint[])
ON CONFLICT (sensor_key, bucket_start) DO UPDATE SET
  min = LEAST(r.min, EXCLUDED.min), max = GREATEST(r.max, EXCLUDED.max),
  sum = r.sum + EXCLUDED.sum, count = r.count + EXCLUDED.count
"""
_LAST_OBSERVED = """
UPDATE sensors AS s SET last_observe_time = v.t
FROM unnest($1::bigint[], $2::timestamptz[]) AS v(k, t)
WHERE s.key = v.k AND (s.last_observe_time IS NULL OR s.last_observe_time < v.t)
"""


@dataclass
class Batch:
    """A validated batch waiting for its commit.

    ``rows`` are ``(sensor_key, observe_time, value)`` in the sensor's unit; ``seconds`` the
    observe times as epoch seconds (for the roll-ups).
    """

    license_id: str
    gateway_id: str
    sequence: int | None
    rows: list[tuple[int, datetime, float]]
    seconds: list[float]
    rejected: tuple[Any, ...]
    # Set by :func:`commit`: whether the batch was a replay, and the original acknowledgement.
    replayed: bool = False
    original: tuple[int, bytes] | None = None
    extra: Any = field(default=None)


def encode_rejections(rejected: Sequence[Any]) -> bytes:
    """The rejections of a batch, stored to repeat them on a replay."""
    return pb.IngestReadingsResponse(
        rejected_readings=[
            pb.RejectedReading(index=r.index, sensor=r.sensor, reason=r.reason, message=r.message)
            for r in rejected
        ]
    ).SerializeToString()


def decode_rejections(data: bytes) -> list[pb.RejectedReading]:
    """The stored rejections of a batch."""
    return list(pb.IngestReadingsResponse.FromString(data).rejected_readings)


async def _mark_replays(conn: Any, batches: Sequence[Batch]) -> None:
    """Lock the marks of the sequenced batches' gateways and flag the replays among them."""
    sequenced = [b for b in batches if b.sequence is not None]
    if not sequenced:
        return
    pairs = sorted({(b.license_id, b.gateway_id) for b in sequenced})
    lics, gws = [p[0] for p in pairs], [p[1] for p in pairs]
    await conn.execute(_GATEWAYS_INSERT, lics, gws)
    marks = {(r[0], r[1]): int(r[2]) for r in await conn.fetch(_GATEWAYS_LOCK, lics, gws)}
    replays: list[Batch] = []
    for b in sequenced:  # queue order: a gateway's batches arrive here in sequence order
        pair = (b.license_id, b.gateway_id)
        assert b.sequence is not None
        if b.sequence <= marks[pair]:
            b.replayed = True
            replays.append(b)
        else:
            marks[pair] = b.sequence
    if replays:
        found = await conn.fetch(
            _BATCHES_FIND,
            [b.license_id for b in replays],
            [b.gateway_id for b in replays],
            [b.sequence for b in replays],
        )
        stored = {(r[0], r[1], int(r[2])): (int(r[3]), bytes(r[4])) for r in found}
        for b in replays:
            b.original = stored.get((b.license_id, b.gateway_id, b.sequence or 0))
    fresh = [b for b in sequenced if not b.replayed]
    if fresh:
        last = {(b.license_id, b.gateway_id): b.sequence for b in fresh}
        await conn.execute(_GATEWAYS_ADVANCE, [k[0] for k in last], [k[1] for k in last], list(last.values()))
        await conn.execute(
            _BATCHES_INSERT,
            [b.license_id for b in fresh],
            [b.gateway_id for b in fresh],
            [b.sequence for b in fresh],
            [len(b.rows) for b in fresh],
            [encode_rejections(b.rejected) for b in fresh],
        )


def days_of(batches: Sequence[Batch]) -> set[date]:
    """The UTC days the readings of ``batches`` fall on."""
    epoch = date(1970, 1, 1).toordinal()
    days: set[date] = set()
    for b in batches:
        if b.seconds:
            first, last = int(min(b.seconds) // 86400), int(max(b.seconds) // 86400)
            days.update(date.fromordinal(epoch + d) for d in range(first, last + 1))
    return days


async def commit(conn: Any, batches: Sequence[Batch]) -> None:
    """Write ``batches`` in one transaction on an asyncpg connection (see the module docstring)."""
    async with conn.transaction():
        await _mark_replays(conn, batches)
        stored = [b for b in batches if not b.replayed and b.rows]
        if not stored:
            return
        records = [r for b in stored for r in b.rows]
        await conn.copy_records_to_table(
            "readings", records=records, columns=["sensor_key", "observe_time", "value"]
        )
        minutes = rollup.fold_rows([(b.rows, b.seconds) for b in stored], rollup.MINUTE)
        await conn.execute(_ROLLUP.format(table="readings_1m"), *rollup.columns(minutes))
        hours = rollup.coarsen(minutes, rollup.HOUR)
        await conn.execute(_ROLLUP.format(table="readings_1h"), *rollup.columns(hours))
        newest: dict[int, tuple[float, datetime]] = {}
        for b in stored:
            for r, s in zip(b.rows, b.seconds, strict=True):
                seen = newest.get(r[0])
                if seen is None or s > seen[0]:
                    newest[r[0]] = (s, r[1])
        keys = sorted(newest)
        await conn.execute(_LAST_OBSERVED, keys, [newest[k][1] for k in keys])
