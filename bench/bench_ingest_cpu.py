"""Server CPU per 1,000-reading IngestReadings batch, stage by stage, columnar form next to rows.

Run from the repository root: ``.venv/bin/python bench/bench_ingest_cpu.py [--rounds 300]``. It
times, in this process and without a database, what the server does with one batch before and
around the commit: protobuf parsing, the contract checks, turning the batch into columns, the
pipeline's validation (against a filled sensor cache), the binary COPY encoding and the roll-up
folding. The same 1,000 readings (100 sensors x 10 time steps) are timed as ``columns`` and as
``readings``; the rows form is the baseline of the same run. It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import machine  # bench/ is on sys.path when a script of it runs
from seedline.telemetry.v1 import telemetry_pb2 as pb

from seedline_server.api.telemetry import ingest_violations, parse_columns, parse_readings
from seedline_server.telemetry import ingest, rollup, writer

SENSORS, STEPS = 100, 10
IDS = [f"01JS{i:022d}" for i in range(SENSORS)]


def message(columnar: bool, now: int) -> bytes:
    """One serialized batch of SENSORS x STEPS readings in the given form."""
    req = pb.IngestReadingsRequest(sequence=1, parent="licenses/X", gateway_id="g")
    if columnar:
        req.columns.sensor_ids.extend(IDS)
        req.columns.units.extend([pb.MEASUREMENT_UNIT_CELSIUS] * SENSORS)
    for step in range(STEPS):
        for s, sid in enumerate(IDS):
            value = 20.0 + (s % 10) * 0.1
            if columnar:
                req.columns.sensor_indexes.append(s)
                req.columns.observe_unix_micros.append((now + step) * 1_000_000)
                req.columns.values.append(value)
            else:
                r = req.readings.add(sensor_id=sid, value=value, unit=pb.MEASUREMENT_UNIT_CELSIUS)
                r.observe_time.seconds = now + step
    return req.SerializeToString()


def timed(rounds: int, fn: Callable[[], Any]) -> float:
    """Microseconds per call (best of three runs of ``rounds`` calls)."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - t) / rounds * 1e6)
    return best


async def stages(columnar: bool, rounds: int) -> dict[str, float]:
    data = message(columnar, int(time.time()) - 60)
    req = pb.IngestReadingsRequest.FromString(data)
    pipeline = ingest.IngestPipeline(None, writers=1)  # type: ignore[arg-type]  # no database here
    pipeline._closed = False  # validation only: nothing is queued or committed
    forever = time.monotonic() + 1e9
    for key, sid in enumerate(IDS):
        info = ingest.SensorInfo(sid, key, "X", "S", 1, pb.MEASUREMENT_UNIT_CELSIUS)
        pipeline.sensors._entries[sid] = (forever, info)

    def to_columns() -> tuple[ingest.Columns, list[int], list[ingest.Rejected]]:
        return parse_columns(req.columns, 0) if columnar else parse_readings("X", req.readings)

    cols, where, refused = to_columns()
    t = time.perf_counter()
    for _ in range(rounds):
        job = await pipeline._prepare("X", "g", 1, cols, where, refused)
    validate = (time.perf_counter() - t) / rounds * 1e6
    b = job.batch

    def fold() -> None:
        minutes = rollup.fold(b.keys, b.micros, b.values, rollup.MINUTE)
        rollup.coarsen(minutes, rollup.HOUR).columns()
        minutes.columns()
        _pairs, index, normalized = writer.section_columns([b])
        rollup.coarsen(rollup.fold(index, b.micros, normalized, rollup.MINUTE), rollup.HOUR)
        rollup.newest(b.keys, b.micros)

    return {
        "parse": timed(rounds, lambda: pb.IngestReadingsRequest.FromString(data)),
        "contract checks": timed(rounds, lambda: ingest_violations(req)),
        "to columns": timed(rounds, to_columns),
        "validation": validate,
        "COPY encoding": timed(rounds, lambda: writer.copy_data(b.keys, b.micros, b.values)),
        "roll-ups": timed(rounds, fold),
        "message bytes": float(len(data)),
    }


async def main(rounds: int) -> None:
    machine.describe()
    columns, rows = await stages(True, rounds), await stages(False, rounds)
    print(f"\nper batch of {SENSORS * STEPS:,} readings, µs of CPU (best of 3 x {rounds})")
    print(f"{'stage':20} {'columns':>10} {'rows':>10}")
    for stage in columns:
        if stage != "message bytes":
            print(f"{stage:20} {columns[stage]:10.0f} {rows[stage]:10.0f}")
    total_c = sum(v for k, v in columns.items() if k != "message bytes")
    total_r = sum(v for k, v in rows.items() if k != "message bytes")
    print(f"{'total':20} {total_c:10.0f} {total_r:10.0f}")
    print(f"{'message bytes':20} {columns['message bytes']:10.0f} {rows['message bytes']:10.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    asyncio.run(main(parser.parse_args().rounds))
