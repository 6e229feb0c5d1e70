"""Telemetry ingest: readings/s durably committed from the IngestReadings stream, next to raw
asyncpg binary COPY of the same rows into the same table with the same indexes, in the same run.

Run from the repository root: ``.venv/bin/python bench/bench_telemetry.py``. It starts its own
embedded PostgreSQL and ``seedline serve`` on free loopback ports, registers sensors, streams,
prints figures and stops everything. It asserts nothing about speed.

* gRPC: ``--gateways`` concurrent streams (one per simulated gateway, its own sensors), each
  sending ``--batches`` batches of 1,000 readings with at most 16 unacknowledged (the contract's
  rule). The client pre-serializes every message, so its CPU cost is the framing only. The rate
  is readings acknowledged (that is, committed) per second of wall time; ack latency is from
  handing a batch to gRPC to reading its acknowledgement.
* raw COPY: the same rows (same sensor keys, same times shifted by a day so nothing collides),
  ``copy_records_to_table`` into ``readings`` over 2 connections (the server's writer count),
  one 1,000-row COPY per transaction, committed as the server commits: durably.
* indexes: COPY of the same rows into two unpartitioned scratch tables, BRIN(observe_time) only
  and BRIN + btree(sensor_key, observe_time), and a one-sensor/one-hour query on each.
* ack latency also at light load: one stream with one batch in flight (the commit itself).
* peak RSS of the server: VmHWM from /proc after the sustained run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import machine
import numpy as np
from google.protobuf import duration_pb2
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.telemetry.v1 import telemetry_pb2 as pb
from seedline.telemetry.v1 import telemetry_pb2_grpc

from seedline_server.store import db
from seedline_server.telemetry import partitions, writer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support import auth  # noqa: E402
from tests.support.stack import ServerProcess  # noqa: E402

WINDOW = 16
PER_BATCH = 1000
SENSORS_PER_GATEWAY = 100
DAY_US = 86_400 * 1_000_000


def server_pids(parent: int) -> list[int]:
    """The server processes: the parent's children with --workers N > 1, else the parent."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == parent:
                children.append(int(entry.name))
    return children or [parent]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def setup(target: str, gateways: int) -> tuple[str, list[list[str]]]:
    """A license, a section and SENSORS_PER_GATEWAY sensors per gateway: (license, ids per gateway)."""
    md = auth.bearer(auth.mint())
    with grpc.insecure_channel(target) as ch:
        reg = license_pb2_grpc.LicenseServiceStub(ch)
        company = reg.CreateCompany(
            lic.CreateCompanyRequest(company=lic.Company(display_name="Bench")), metadata=md
        )
        license_ = reg.CreateLicense(
            lic.CreateLicenseRequest(
                license=lic.License(
                    company=company.name,
                    license_number=f"B-{uuid.uuid4().hex[:8]}",
                    display_name="Bench",
                    type=lic.LICENSE_TYPE_GROWER_PROCESSOR,
                    jurisdiction="US-CO",
                    active=True,
                )
            ),
            metadata=md,
        ).name
        section = reg.CreateSection(
            lic.CreateSectionRequest(
                parent=license_, section=lic.Section(display_name="Room", type=lic.SECTION_TYPE_CROP)
            ),
            metadata=md,
        ).name
        tel = telemetry_pb2_grpc.TelemetryServiceStub(ch)
        ids = [
            [
                tel.CreateSensor(
                    pb.CreateSensorRequest(
                        parent=license_,
                        sensor=pb.Sensor(
                            display_name=f"g{g} s{s}",
                            section=section,
                            metric=pb.METRIC_TEMPERATURE,
                            unit=pb.MEASUREMENT_UNIT_CELSIUS,
                            reporting_interval=duration_pb2.Duration(seconds=10),
                        ),
                    ),
                    metadata=md,
                ).name.rsplit("/", 1)[1]
                for s in range(SENSORS_PER_GATEWAY)
            ]
            for g in range(gateways)
        ]
    return license_, ids


def batches(
    license_: str, gateway: int | str, ids: list[str], n: int, t0: dt.datetime, columnar: bool = False
) -> list[bytes]:
    """Pre-serialized IngestReadingsRequest messages of one gateway (10 time steps x 100 sensors).

    ``columnar``: the readings in ``columns`` (ReadingColumns) instead of one ``Reading`` each.
    """
    steps = PER_BATCH // len(ids)
    out = []
    for b in range(n):
        req = pb.IngestReadingsRequest(sequence=b + 1)
        if b == 0:
            req.parent, req.gateway_id = license_, f"bench-{gateway}"
        if columnar:
            req.columns.sensor_ids.extend(ids)
            req.columns.units.extend([pb.MEASUREMENT_UNIT_CELSIUS] * len(ids))
        for i in range(steps):
            seconds = int(t0.timestamp()) + b * steps + i
            for s, sid in enumerate(ids):
                value = 20.0 + (s % 10) * 0.1
                if columnar:
                    req.columns.sensor_indexes.append(s)
                    req.columns.observe_unix_micros.append(seconds * 1_000_000)
                    req.columns.values.append(value)
                else:
                    r = req.readings.add(sensor_id=sid, value=value, unit=pb.MEASUREMENT_UNIT_CELSIUS)
                    r.observe_time.seconds = seconds
        out.append(req.SerializeToString())
    return out


async def stream(target: str, messages: list[bytes], latencies: list[float], window: int = WINDOW) -> int:
    """Send one gateway's batches on one stream; returns the readings acknowledged."""
    md = auth.bearer(auth.mint())
    slots = asyncio.Semaphore(window)
    sent: dict[int, float] = {}
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.stream_stream(
            "/seedline.telemetry.v1.TelemetryService/IngestReadings",
            request_serializer=lambda b: b,
            response_deserializer=pb.IngestReadingsResponse.FromString,
        )

        async def requests() -> Any:
            for i, m in enumerate(messages):
                await slots.acquire()
                sent[i + 1] = time.perf_counter()
                yield m

        accepted = 0
        async for ack in call(requests(), metadata=md):
            latencies.append(time.perf_counter() - sent[ack.sequence])
            accepted += ack.accepted_count
            slots.release()
    return accepted


_COLUMNS = ["sensor_key", "observe_time", "value"]


async def timed_copies(url: str, batches: list[Any], copy: Any, conns: int = 2) -> float:
    """Seconds for ``copy(conn, batch)`` of every batch (one transaction each) over ``conns`` connections."""
    dsn = db.libpq_url(url)
    pool = [await asyncpg.connect(dsn) for _ in range(conns)]
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)

    async def work(conn: asyncpg.Connection) -> None:
        while not queue.empty():
            await copy(conn, queue.get_nowait())

    t = time.perf_counter()
    await asyncio.gather(*(work(c) for c in pool))
    took = time.perf_counter() - t
    for c in pool:
        await c.close()
    return took


async def raw_copy(url: str, table: str, rows: list[list[tuple[int, dt.datetime, float]]]) -> float:
    """Seconds to COPY every 1,000-row batch of records (asyncpg encodes them)."""

    async def copy(conn: asyncpg.Connection, batch: list[tuple[int, dt.datetime, float]]) -> None:
        await conn.copy_records_to_table(table, records=batch, columns=_COLUMNS)

    return await timed_copies(url, rows, copy)


async def raw_binary_copy(url: str, table: str, buffers: list[bytes]) -> float:
    """Seconds to COPY pre-encoded binary batches: PostgreSQL's own cost."""

    async def copy(conn: asyncpg.Connection, data: bytes) -> None:
        await conn.copy_to_table(table, source=memoryview(data), columns=_COLUMNS, format="binary")

    return await timed_copies(url, buffers, copy)


async def grpc_run(target: str, msgs: list[list[bytes]]) -> tuple[float, list[float]]:
    """Readings/s acknowledged over one stream per gateway, and the ack latencies."""
    latencies: list[float] = []
    t = time.perf_counter()
    acked = await asyncio.gather(*(stream(target, m, latencies) for m in msgs))
    return sum(acked) / (time.perf_counter() - t), sorted(latencies)


def rows_of(keys: dict[str, int], ids: list[list[str]], n: int, start: dt.datetime) -> list[list[Any]]:
    """The bench's readings as COPY records, one list per 1,000-reading batch."""
    steps = PER_BATCH // SENSORS_PER_GATEWAY
    return [
        [
            (keys[sid], start + dt.timedelta(seconds=b * steps + i), 20.0 + (s % 10) * 0.1)
            for i in range(steps)
            for s, sid in enumerate(gateway)
        ]
        for gateway in ids
        for b in range(n)
    ]


async def main(args: argparse.Namespace) -> None:
    machine.describe()
    with tempfile.TemporaryDirectory(prefix="seedline-bench-tel-") as tmp:
        root = Path(tmp)
        pg = db.start_embedded(root / "pg", database="bench")
        url = pg.url("bench")
        server = ServerProcess(
            database_url=url, data_dir=root / "server", args=["--workers", str(args.server_workers)]
        )
        try:
            server.start()
            license_, ids = setup(server.target, args.gateways)
            t0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2)
            total = args.gateways * args.batches * PER_BATCH
            shape = f"{args.gateways} streams x {args.batches} batches x {PER_BATCH} readings"
            print(f"load      {shape} = {total:,} per run; server processes {args.server_workers}")

            # Baselines first (into the smaller table, so they are not slowed by what gRPC wrote):
            # the same rows straight into the same table (same indexes), a few days apart.
            dsn = db.libpq_url(url)
            shift = dt.timedelta(days=1)
            conn = await asyncpg.connect(dsn)
            keys = {r[0]: r[1] for r in await conn.fetch("SELECT id, key FROM sensors")}
            await partitions.ensure(conn, {(t0 + d).date() for d in (shift, -4 * shift, -3 * shift)})
            await conn.close()
            rows = rows_of(keys, ids, args.batches, t0 + shift)
            copy_rate = total / await raw_copy(url, "readings", rows)
            encoded = [
                writer.copy_data(
                    np.array([r[0] for r in b], dtype=np.int64),
                    np.array([int(r[1].timestamp()) * 1_000_000 for r in b], dtype=np.int64) - 4 * DAY_US,
                    np.array([r[2] for r in b], dtype=np.float64),
                )
                for b in rows
            ]
            binary_rate = total / await raw_binary_copy(url, "readings", encoded)

            runs: dict[str, tuple[float, list[float]]] = {}
            for label, columnar, start in (("columns", True, t0), ("rows", False, t0 - dt.timedelta(days=3))):
                msgs = [
                    batches(license_, f"{label}-{g}", ids[g], args.batches, start, columnar)
                    for g in range(args.gateways)
                ]
                runs[label] = await grpc_run(server.target, msgs)
            assert server.proc is not None
            rss = sum(peak_rss_mb(pid) for pid in server_pids(server.proc.pid))

            def pct(lat: list[float], q: float) -> float:
                return lat[min(len(lat) - 1, int(len(lat) * q))] * 1e3

            # Light load: one stream, one batch at a time: the latency of a commit itself.
            light_msgs = batches(license_, "light", ids[0], 50, t0 - dt.timedelta(days=1), True)
            light: list[float] = []
            await stream(server.target, light_msgs, light, window=1)
            light.sort()

            # Index choice: the same rows into scratch tables with BRIN only and BRIN + btree.
            conn = await asyncpg.connect(dsn)
            await conn.execute(
                "CREATE TABLE bench_brin (sensor_key bigint, observe_time timestamptz, value float8);"
                "CREATE INDEX ON bench_brin USING brin (observe_time);"
                "CREATE TABLE bench_both (sensor_key bigint, observe_time timestamptz, value float8);"
                "CREATE INDEX ON bench_both USING brin (observe_time);"
                "CREATE INDEX ON bench_both (sensor_key, observe_time);"
            )
            brin_s = await raw_copy(url, "bench_brin", rows)
            both_s = await raw_copy(url, "bench_both", rows)
            await conn.execute("ANALYZE bench_brin; ANALYZE bench_both")
            key = rows[0][0][0]
            query = (
                "SELECT count(*), avg(value) FROM {t} WHERE sensor_key = $1 "
                "AND observe_time >= $2 AND observe_time < $3"
            )
            q_ms = {}
            for table in ("bench_brin", "bench_both"):
                times = []
                for _ in range(5):
                    t = time.perf_counter()
                    await conn.fetch(
                        query.format(t=table), key, t0 + shift, t0 + shift + dt.timedelta(hours=1)
                    )
                    times.append((time.perf_counter() - t) * 1e3)
                q_ms[table] = statistics.median(times)
            await conn.close()

            # MQTT: real mosquitto, `seedline mqtt-bridge` processes, JSON batches of 100, QoS 1.
            mqtt: dict[str, float] | None = None
            if args.mqtt_readings:
                from tests.support.mosquitto import mqtt_ingest_rate, start_broker

                broker = start_broker(root / "mqtt")
                try:
                    conn = await asyncpg.connect(dsn)
                    section = await conn.fetchval("SELECT section_id FROM sensors WHERE id = $1", ids[0][0])
                    await conn.close()
                    mqtt = await mqtt_ingest_rate(
                        broker,
                        url,
                        license_id=license_.split("/")[1],
                        section_id=str(section),
                        sensor_ids=ids[0],
                        readings=args.mqtt_readings,
                        bridges=args.bridges,
                    )
                finally:
                    broker.stop()

            print()
            print(f"{'target':52} {'readings/s':>12} {'vs raw COPY':>12}")
            for label, (rate, _lat) in runs.items():
                name = f"IngestReadings (gRPC, {label}, acked = committed)"
                print(f"{name:52} {rate:12,.0f} {rate / copy_rate:12.0%}")
            print(f"{'raw asyncpg COPY of the records (2 conns)':52} {copy_rate:12,.0f} {1:12.0%}")
            name = "raw COPY of pre-encoded binary (2 conns)"
            print(f"{name:52} {binary_rate:12,.0f} {binary_rate / copy_rate:12.0%}")
            if mqtt is not None:
                label = f"MQTT, {args.bridges} bridge(s), 100 readings/message"
                print(
                    f"{label:52} {mqtt['readings_per_s']:12,.0f} {mqtt['readings_per_s'] / copy_rate:12.0%}"
                )
            print()
            for label, (_rate, lat) in runs.items():
                busy = f"{label}: {len(lat)} batches, 16 in flight per stream"
                print(f"ack latency  p50 {pct(lat, 0.5):.1f} ms   p99 {pct(lat, 0.99):.1f} ms   ({busy})")
            idle = "1 stream, 1 batch in flight"
            print(f"ack latency  p50 {pct(light, 0.5):.1f} ms   p99 {pct(light, 0.99):.1f} ms   ({idle})")
            print(f"server peak RSS  {rss:.0f} MiB ({args.server_workers} process(es) together)")
            print()
            print(
                f"{'index choice (unpartitioned scratch)':46} {'COPY rows/s':>12} {'1-sensor 1-h query':>20}"
            )
            print(f"{'BRIN(observe_time) only':46} {total / brin_s:12,.0f} {q_ms['bench_brin']:17.1f} ms")
            both = "BRIN + btree(sensor_key, observe_time)"
            print(f"{both:46} {total / both_s:12,.0f} {q_ms['bench_both']:17.1f} ms")
        finally:
            server.stop()
            db.stop_embedded(root / "pg")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--batches", type=int, default=400, help="per stream and run (1,000 readings each)")
    parser.add_argument("--mqtt-readings", type=int, default=200_000, help="0 skips the MQTT part")
    parser.add_argument("--bridges", type=int, default=2)
    parser.add_argument("--server-workers", type=int, default=1, help="`seedline serve --workers N`")
    asyncio.run(main(parser.parse_args()))
