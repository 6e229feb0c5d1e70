"""Pure roll-up arithmetic: fold readings into per-sensor minute and hour buckets, column-wise.

A bucket is ``(min, max, sum, count)`` per ``(sensor key, bucket start)``. Merging two buckets of
the same key is what the database upsert does (``LEAST``, ``GREATEST``, ``+``, ``+``), so folding
a stream batch by batch and upserting gives the same result as folding it at once.

The readings arrive as numpy columns (the ingest pipeline's layout), so a fold is a sort and a
few ``reduceat`` calls instead of a Python loop per reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MINUTE = 60
HOUR = 3600
_MICROS = 1_000_000

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Buckets:
    """Buckets column by column, sorted by (sensor key, start): a stable lock order for upserts."""

    keys: Ints
    starts: Ints  # bucket start, epoch seconds
    mins: Floats
    maxs: Floats
    sums: Floats
    counts: Ints

    def __len__(self) -> int:
        return len(self.keys)

    def columns(self) -> tuple[list[int], list[int], list[float], list[float], list[float], list[int]]:
        """Plain lists for an ``unnest`` upsert (asyncpg encodes Python numbers)."""
        return (
            self.keys.tolist(),
            self.starts.tolist(),
            self.mins.tolist(),
            self.maxs.tolist(),
            self.sums.tolist(),
            self.counts.tolist(),
        )


def _group_starts(keys: Ints, buckets: Ints) -> Ints:
    """Offsets where a run of equal (key, bucket) begins in sorted columns."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    change = (keys[1:] != keys[:-1]) | (buckets[1:] != buckets[:-1])
    return np.concatenate(([0], np.flatnonzero(change) + 1)).astype(np.int64)


def fold(keys: Ints, micros: Ints, values: Floats, width: int) -> Buckets:
    """Aggregate readings (sensor key, observe time in epoch microseconds, value) into buckets.

    Args:
        keys: the sensors' keys, one per reading.
        micros: observe times, epoch microseconds.
        values: the values.
        width: bucket width in seconds (:data:`MINUTE`, :data:`HOUR`).

    """
    bucket = np.floor_divide(micros, width * _MICROS)
    order = np.lexsort((bucket, keys))
    k, b, v = keys[order], bucket[order], values[order]
    starts = _group_starts(k, b)
    if len(starts) == 0:
        empty_i, empty_f = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        return Buckets(empty_i, empty_i, empty_f, empty_f, empty_f, empty_i)
    counts = np.diff(np.append(starts, len(k)))
    return Buckets(
        keys=k[starts],
        starts=b[starts] * width,
        mins=np.minimum.reduceat(v, starts),
        maxs=np.maximum.reduceat(v, starts),
        sums=np.add.reduceat(v, starts),
        counts=counts.astype(np.int64),
    )


def coarsen(buckets: Buckets, width: int) -> Buckets:
    """Buckets ``width`` seconds wide from finer ones (``width`` a multiple of theirs)."""
    if len(buckets) == 0:
        return buckets
    coarse = np.floor_divide(buckets.starts, width)
    # Sorted by (key, start) already, so equal (key, coarse start) runs are contiguous.
    starts = _group_starts(buckets.keys, coarse)
    return Buckets(
        keys=buckets.keys[starts],
        starts=coarse[starts] * width,
        mins=np.minimum.reduceat(buckets.mins, starts),
        maxs=np.maximum.reduceat(buckets.maxs, starts),
        sums=np.add.reduceat(buckets.sums, starts),
        counts=np.add.reduceat(buckets.counts, starts),
    )


def newest(keys: Ints, micros: Ints) -> tuple[list[int], list[int]]:
    """Each sensor key once (ascending) with its latest observe time (epoch microseconds)."""
    if len(keys) == 0:
        return [], []
    order = np.lexsort((micros, keys))
    k, t = keys[order], micros[order]
    last = np.append(np.flatnonzero(k[1:] != k[:-1]), len(k) - 1)
    return k[last].tolist(), t[last].tolist()
