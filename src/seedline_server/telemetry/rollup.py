"""Pure roll-up arithmetic: fold readings into per-sensor minute and hour buckets.

A bucket is ``[min, max, sum, count]``; merging two buckets of the same key is what the database
upsert does (``LEAST``, ``GREATEST``, ``+``, ``+``), so folding a stream batch by batch gives the
same result as folding it at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

MINUTE = 60
HOUR = 3600

Bucket = list[float]  # [min, max, sum, count]
Key = tuple[int, int]  # (sensor key, bucket start in epoch seconds)


def fold(rows: Iterable[tuple[int, float, float]], width: int) -> dict[Key, Bucket]:
    """Aggregate ``(sensor_key, epoch_seconds, value)`` rows into buckets ``width`` seconds wide."""
    listed = list(rows)
    return fold_rows([([(k, None, v) for k, _, v in listed], [s for _, s, _ in listed])], width)


def fold_rows(
    parts: Iterable[tuple[Sequence[tuple[int, Any, float]], Sequence[float]]], width: int
) -> dict[Key, Bucket]:
    """:func:`fold` over the writer's layout, without copying it.

    Each part is ``(rows, seconds)``: rows ``(sensor_key, _, value)`` and their observe times as
    epoch seconds alongside.
    """
    out: dict[Key, Bucket] = {}
    for rows, seconds in parts:
        for (key, _, value), s in zip(rows, seconds, strict=True):
            k = (key, int(s // width) * width)
            b = out.get(k)
            if b is None:
                out[k] = [value, value, value, 1.0]
            else:
                if value < b[0]:
                    b[0] = value
                if value > b[1]:
                    b[1] = value
                b[2] += value
                b[3] += 1.0
    return out


def coarsen(buckets: dict[Key, Bucket], width: int) -> dict[Key, Bucket]:
    """Buckets ``width`` seconds wide from finer ones (``width`` a multiple of theirs)."""
    out: dict[Key, Bucket] = {}
    for (key, start), b in buckets.items():
        k = (key, start // width * width)
        have = out.get(k)
        out[k] = list(b) if have is None else merge(have, b)
    return out


def merge(a: Bucket, b: Bucket) -> Bucket:
    """The bucket of the readings of both (what ``ON CONFLICT DO UPDATE`` computes)."""
    return [min(a[0], b[0]), max(a[1], b[1]), a[2] + b[2], a[3] + b[3]]


def columns(
    buckets: dict[Key, Bucket],
) -> tuple[list[int], list[datetime], list[float], list[float], list[float], list[int]]:
    """Column arrays for an ``unnest`` upsert, sorted by key (a stable lock order)."""
    keys, starts, mins, maxs, sums, counts = [], [], [], [], [], []
    for (sensor_key, start), (lo, hi, total, count) in sorted(buckets.items()):
        keys.append(sensor_key)
        starts.append(datetime.fromtimestamp(start, UTC))
        mins.append(lo)
        maxs.append(hi)
        sums.append(total)
        counts.append(int(count))
    return keys, starts, mins, maxs, sums, counts
