"""One commit of the ingest pipeline: several batches, one transaction.

In order, inside the transaction: drop as replays the batches whose acknowledgement is stored
(``ingest_batches``, keyed by gateway and sequence: one row per batch, not an index per reading)
or that repeat another batch of the same commit; store the other batches' acknowledgements and
advance the gateways' high-water marks (sorted, so writers never deadlock on them); COPY the
readings (binary, encoded column-wise by numpy); upsert the roll-ups (folded column-wise, see
:mod:`~seedline_server.telemetry.rollup`) and the sensors' ``last_observe_time``. The readings
and the acknowledgement commit together: a batch is either stored and acknowledged, or neither,
so a batch whose commit failed is stored by its resend even after later batches were committed.
Two processes committing the same batch at once: the acknowledgements' primary key lets only
one insert it, and the other's retry (a unique violation is retried) finds it as a replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
from seedline.telemetry.v1 import telemetry_pb2 as pb

from seedline_server.telemetry import rollup

# Records the batches' acknowledgements and advances the gateways' marks (creating missing
# gateways, in (license, gateway) order), in one statement. The acknowledgements' primary key
# is the final word on exactly-once: two processes committing the same batch at once cannot
# both insert it; the second fails with a unique violation, and its retry finds the batch.
_GATEWAYS_ADVANCE = """
WITH advanced AS (
  INSERT INTO ingest_gateways AS g (license_id, gateway_id, last_sequence, update_time)
  SELECT l, gw, s, now() FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(l, gw, s) ORDER BY l, gw
  ON CONFLICT (license_id, gateway_id) DO UPDATE
    SET last_sequence = GREATEST(g.last_sequence, EXCLUDED.last_sequence), update_time = now()
)
INSERT INTO ingest_batches (license_id, gateway_id, sequence, accepted, rejected, commit_time)
SELECT l, gw, s, a, r, now()
FROM unnest($4::text[], $5::text[], $6::bigint[], $7::int[], $8::bytea[]) AS v(l, gw, s, a, r)
"""
_BATCHES_FIND = """
SELECT license_id, gateway_id, sequence, accepted, rejected FROM ingest_batches
WHERE (license_id, gateway_id, sequence) IN
  (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]))
"""


def _rollup_sql(table: str, p: int) -> str:
    """Upsert of per-sensor buckets from parameters ``$p`` .. ``$p+5`` (``table``: a constant)."""
    return f"""
INSERT INTO {table} AS r (sensor_key, bucket_start, min, max, sum, count)
SELECT k, to_timestamp(s), lo, hi, total, n
FROM unnest(${p}::bigint[], ${p + 1}::bigint[], ${p + 2}::float8[], ${p + 3}::float8[],
            ${p + 4}::float8[], ${p + 5}::bigint[]) AS v(k, s, lo, hi, total, n)
ON CONFLICT (sensor_key, bucket_start) DO UPDATE SET
  min = LEAST(r.min, EXCLUDED.min), max = GREATEST(r.max, EXCLUDED.max),
  sum = r.sum + EXCLUDED.sum, count = r.count + EXCLUDED.count"""  # noqa: S608


def _section_rollup_sql(table: str, p: int) -> str:
    """Upsert of per-section buckets from parameters ``$p`` .. ``$p+6`` (``table``: a constant)."""
    return f"""
INSERT INTO {table} AS r (section_id, metric, bucket_start, min, max, sum, count)
SELECT c, m, to_timestamp(s), lo, hi, total, n
FROM unnest(${p}::text[], ${p + 1}::smallint[], ${p + 2}::bigint[], ${p + 3}::float8[],
            ${p + 4}::float8[], ${p + 5}::float8[], ${p + 6}::bigint[]) AS v(c, m, s, lo, hi, total, n)
ON CONFLICT (section_id, metric, bucket_start) DO UPDATE SET
  min = LEAST(r.min, EXCLUDED.min), max = GREATEST(r.max, EXCLUDED.max),
  sum = r.sum + EXCLUDED.sum, count = r.count + EXCLUDED.count"""  # noqa: S608


# Everything but the readings, in one round trip: the four roll-ups and the sensors' last
# observation time (data-modifying CTEs all run, each in its own sorted order).
_SUMMARIES = f"""
WITH m AS ({_rollup_sql("readings_1m", 1)}),
h AS ({_rollup_sql("readings_1h", 7)}),
sm AS ({_section_rollup_sql("section_readings_1m", 13)}),
sh AS ({_section_rollup_sql("section_readings_1h", 20)}),
lo AS (
  UPDATE sensors AS s SET last_observe_time = v.t
  FROM (SELECT k, timestamptz 'epoch' + us * interval '1 microsecond' AS t
        FROM unnest($27::bigint[], $28::bigint[]) AS u(k, us)) AS v
  WHERE s.key = v.k AND (s.last_observe_time IS NULL OR s.last_observe_time < v.t)
)
SELECT 1
"""  # noqa: S608
# PostgreSQL's binary COPY: signature, flags, header extension length; then rows; then -1.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
# One row of ``readings``: 3 fields, each a length and a big-endian value. Timestamps are
# microseconds since 2000-01-01 UTC.
_COPY_ROW = np.dtype(
    [("n", ">i2"), ("lk", ">i4"), ("k", ">i8"), ("lt", ">i4"), ("t", ">i8"), ("lv", ">i4"), ("v", ">f8")]
)
_PG_EPOCH_MICROS = 946_684_800 * 1_000_000


@dataclass
class Batch:
    """A validated batch waiting for its commit: its good readings column by column.

    ``keys`` are the sensors' keys, ``micros`` the observe times (epoch microseconds) and
    ``values`` the values in the sensor's unit.
    """

    license_id: str
    gateway_id: str
    sequence: int | None
    keys: rollup.Ints
    micros: rollup.Ints
    values: rollup.Floats
    rejected: tuple[Any, ...]
    # The (section id, metric) pairs of the batch's sensors, and per reading: the index of its
    # pair and its value in the metric's first unit (for the section roll-ups).
    sections: list[tuple[str, int]]
    section_index: rollup.Ints
    normalized: rollup.Floats
    # Set by :func:`commit`: whether the batch was a replay, and the original acknowledgement.
    replayed: bool = False
    original: tuple[int, bytes] | None = None

    def __len__(self) -> int:
        return len(self.keys)


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
    """Flag the replays among the sequenced batches, store the others' acks, advance the marks.

    A replay is a (license, gateway, sequence) whose acknowledgement is stored, or one already
    in ``batches``; it gets the stored (or that batch's) acknowledgement as ``original``.
    """
    sequenced = [b for b in batches if b.sequence is not None]
    if not sequenced:
        return
    found = await conn.fetch(
        _BATCHES_FIND,
        [b.license_id for b in sequenced],
        [b.gateway_id for b in sequenced],
        [b.sequence for b in sequenced],
    )
    acks = {(r[0], r[1], int(r[2])): (int(r[3]), bytes(r[4])) for r in found}
    fresh: list[Batch] = []
    for b in sequenced:
        key = (b.license_id, b.gateway_id, b.sequence or 0)
        if key in acks:
            b.replayed, b.original = True, acks[key]
        else:
            acks[key] = (len(b), encode_rejections(b.rejected))  # a resend later in this commit
            fresh.append(b)
    if fresh:
        last: dict[tuple[str, str], int] = {}
        for b in fresh:
            pair = (b.license_id, b.gateway_id)
            last[pair] = max(last.get(pair, 0), b.sequence or 0)
        pairs = sorted(last)
        await conn.execute(
            _GATEWAYS_ADVANCE,
            [k[0] for k in pairs],
            [k[1] for k in pairs],
            [last[k] for k in pairs],
            [b.license_id for b in fresh],
            [b.gateway_id for b in fresh],
            [b.sequence for b in fresh],
            [len(b) for b in fresh],
            [acks[(b.license_id, b.gateway_id, b.sequence or 0)][1] for b in fresh],
        )


def days_of(batches: Sequence[Batch]) -> set[date]:
    """The UTC days the readings of ``batches`` fall on."""
    epoch = date(1970, 1, 1).toordinal()
    day = 86_400 * 1_000_000
    days: set[date] = set()
    for b in batches:
        if len(b):
            first, last = int(b.micros.min()) // day, int(b.micros.max()) // day
            days.update(date.fromordinal(epoch + d) for d in range(first, last + 1))
    return days


def section_columns(batches: Sequence[Batch]) -> tuple[list[tuple[str, int]], rollup.Ints, rollup.Floats]:
    """The batches' (section, metric) pairs with each reading's index into them and its value.

    The pairs are sorted (a stable lock order for the upserts); the values are in the metric's
    first listed unit.
    """
    pairs = sorted({p for b in batches for p in b.sections})
    where = {p: i for i, p in enumerate(pairs)}
    index = [
        np.array([where[p] for p in b.sections], dtype=np.int64)[b.section_index]
        if b.sections
        else b.section_index
        for b in batches
    ]
    return pairs, np.concatenate(index), np.concatenate([b.normalized for b in batches])


def _section_buckets(batches: Sequence[Batch], micros: rollup.Ints) -> list[list[Any]]:
    """The section roll-ups' upsert columns: minutes, then hours."""
    pairs, index, normalized = section_columns(batches)
    minutes = rollup.fold(index, micros, normalized, rollup.MINUTE)
    out: list[list[Any]] = []
    for buckets in (minutes, rollup.coarsen(minutes, rollup.HOUR)):
        keys, starts, mins, maxs, sums, counts = buckets.columns()
        out += [[pairs[k][0] for k in keys], [pairs[k][1] for k in keys], starts, mins, maxs, sums, counts]
    return out


def copy_data(keys: rollup.Ints, micros: rollup.Ints, values: rollup.Floats) -> bytes:
    """The readings as a binary COPY stream for ``readings (sensor_key, observe_time, value)``."""
    rows = np.empty(len(keys), dtype=_COPY_ROW)
    rows["n"] = 3
    rows["lk"] = rows["lt"] = rows["lv"] = 8
    rows["k"] = keys
    rows["t"] = micros - _PG_EPOCH_MICROS
    rows["v"] = values
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


async def commit(conn: Any, batches: Sequence[Batch]) -> None:
    """Write ``batches`` in one transaction on an asyncpg connection (see the module docstring)."""
    async with conn.transaction():
        await _mark_replays(conn, batches)
        stored = [b for b in batches if not b.replayed and len(b)]
        if not stored:
            return
        keys = np.concatenate([b.keys for b in stored])
        micros = np.concatenate([b.micros for b in stored])
        values = np.concatenate([b.values for b in stored])
        await conn.copy_to_table(
            "readings",
            # A memoryview: asyncpg would take plain bytes for a file path (os.fspath accepts bytes).
            source=memoryview(copy_data(keys, micros, values)),
            columns=["sensor_key", "observe_time", "value"],
            format="binary",
        )
        minutes = rollup.fold(keys, micros, values, rollup.MINUTE)
        await conn.execute(
            _SUMMARIES,
            *minutes.columns(),
            *rollup.coarsen(minutes, rollup.HOUR).columns(),
            *_section_buckets(stored, micros),
            *rollup.newest(keys, micros),
        )
