"""`seedline telemetry simulate` against a real server (in this process) and real PostgreSQL.

The simulated gateways register sensors, stream through IngestReadings and the database must hold
exactly the readings the server acknowledged as accepted, also when a stream is cut mid-way (a
TCP proxy between the gateways and the server drops every connection) and the gateways reconnect
and replay what was not acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from seedline_server import server
from seedline_server.api import convert
from seedline_server.cli import app
from seedline_server.config import Settings
from seedline_server.store import db
from seedline_server.telemetry.simulate import Summary, describe, simulate
from tests.integration.conftest import Farm
from tests.support import auth

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Served:
    target: str
    engine: AsyncEngine


@pytest_asyncio.fixture(loop_scope="session")
async def served(migrated: str, tmp_path: Path) -> AsyncIterator[Served]:
    """The whole gRPC server, started in this event loop on a free port (no integrations worker)."""
    settings = Settings(
        data_dir=tmp_path,
        grpc_port=0,
        edge_port=0,
        jwt_secret=auth.SECRET,
        run_worker=False,
        grpc_rate_burst=1_000_000,
        grpc_rate_per_minute=60_000_000,
        log_level="warning",
    )
    signatures = convert._signatures  # the server installs its verifier process-wide
    running = await server.start(settings, migrated, dev=True)
    engine = db.make_engine(migrated, pool_size=2)
    try:
        yield Served(f"127.0.0.1:{running.grpc_port}", engine)
    finally:
        await engine.dispose()
        await running.stop(grace=1.0)
        convert.use_signatures(signatures)


class CuttingProxy:
    """A TCP proxy that can drop every connection passing through it (a broken network)."""

    def __init__(self, upstream: str) -> None:
        self.host, port = upstream.rsplit(":", 1)
        self.port = int(port)
        self.transports: list[asyncio.WriteTransport] = []
        self.cuts = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Abort every open connection, both sides (RST, no goodbye)."""
        for transport in self.transports:
            transport.abort()
        self.transports.clear()
        self.cuts += 1

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.transports += [writer.transport, up_writer.transport]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def stored(engine: AsyncEngine, sensors: list[str]) -> tuple[int, int]:
    """(readings stored, distinct (sensor, observe_time)) of the sensors."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT (r.sensor_key, r.observe_time)) FROM readings r "
                    "JOIN sensors s ON s.key = r.sensor_key WHERE s.id = ANY(:ids)"
                ),
                {"ids": [name.rsplit("/", 1)[1] for name in sensors]},
            )
        ).one()
    return int(row[0]), int(row[1])


def consistent(summary: Summary, readings: int) -> None:
    """Everything sent was acknowledged, once, and the counts add up."""
    assert summary.errors == []
    assert summary.readings_sent == summary.readings_acknowledged == readings
    assert summary.accepted + summary.rejected_total == readings
    assert summary.batches_acknowledged == summary.batches_sent == len(summary.latencies)


async def test_two_gateways_store_exactly_what_was_acknowledged(served: Served, farm: Farm) -> None:
    acked: list[int] = []
    summary = await simulate(
        served.target,
        farm.license_id,
        sensors=6,
        section=farm.section_id,
        gateways=2,
        batch=250,
        readings=4000,
        token=auth.mint(),
        invalid_fraction=0.01,
        seed=7,
        on_progress=acked.append,
    )
    consistent(summary, 4000)
    assert summary.registered == len(summary.sensors) == 6
    assert summary.reconnects == summary.resent_batches == summary.replayed_batches == 0
    assert 0 < summary.rejected_total < 200  # about 1 % made invalid on purpose
    assert set(summary.rejected) <= {"OUT_OF_RANGE", "WRONG_UNIT", "NON_FINITE"}
    assert sum(acked) == 4000
    assert await stored(served.engine, summary.sensors) == (summary.accepted, summary.accepted)
    # Values drift around plausible set points: temperatures and humidities, spikes included.
    async with served.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT s.metric, min(r.value), max(r.value), avg(r.value) FROM readings r "
                    "JOIN sensors s ON s.key = r.sensor_key WHERE s.id = ANY(:ids) GROUP BY s.metric"
                ),
                {"ids": [name.rsplit("/", 1)[1] for name in summary.sensors]},
            )
        ).all()
    ranges = {int(m): (lo, hi, avg) for m, lo, hi, avg in rows}
    assert 15 < ranges[1][0] < ranges[1][1] < 35  # °C
    assert 19 < ranges[1][2] < 28
    assert 35 < ranges[2][0] < ranges[2][1] < 100  # % RH
    assert 50 < ranges[2][2] < 75
    p50, p99 = summary.latency(0.5), summary.latency(0.99)
    assert p50 is not None
    assert p99 is not None
    assert 0 < p50 <= p99
    assert any(line.startswith("rejected") for line in describe(summary))


async def test_a_cut_stream_reconnects_and_replays_exactly_once(served: Served, farm: Farm) -> None:
    proxy = CuttingProxy(served.target)
    target = await proxy.start()
    acked = [0]

    def cut_midway(n: int) -> None:
        acked[0] += n
        if acked[0] >= 2000 and not proxy.cuts:
            proxy.cut()  # both gateways lose their connection with batches in flight

    try:
        summary = await simulate(
            target,
            f"licenses/{farm.license_id}",
            sensors=4,
            section=f"licenses/{farm.license_id}/sections/{farm.section_id}",
            gateways=2,
            batch=200,
            window=8,
            readings=6000,
            token=auth.mint(),
            on_progress=cut_midway,
        )
    finally:
        await proxy.stop()
    print("\n".join(describe(summary)))  # shown when the test fails, or with -s
    consistent(summary, 6000)
    assert proxy.cuts >= 1
    assert summary.reconnects >= 1
    assert summary.resent_batches >= 1
    assert summary.rejected == {}
    # Batches committed before the cut but not acknowledged come back `replayed` with their
    # original counts: accepted still counts every reading once, and so does the database.
    assert summary.accepted == 6000
    assert await stored(served.engine, summary.sensors) == (6000, 6000)


async def test_the_command_uses_existing_sensors_and_prints_a_summary(served: Served, farm: Farm) -> None:
    first = await simulate(
        served.target,
        farm.license_id,
        sensors=2,
        section=farm.section_id,
        readings=0,
        token=auth.mint(),
    )
    assert (first.readings_sent, first.registered) == (0, 2)

    def run() -> tuple[int, str]:
        result = CliRunner().invoke(
            app,
            [
                *("telemetry", "simulate", "--target", served.target, "--license", farm.license_id),
                *("--readings", "1000", "--batch", "100", "--gateways", "2", "--rate", "5000"),
            ],
            env={"SEEDLINE_TOKEN": auth.mint()},
        )
        return result.exit_code, result.output

    code, output = await asyncio.to_thread(run)  # the command runs its own event loop
    assert code == 0, output
    assert "sent          1,000 readings in 10 batches" in output
    assert "acknowledged  1,000 readings" in output
    assert "ack latency" in output
    assert await stored(served.engine, first.sensors) == (1000, 1000)

    refused = await asyncio.to_thread(
        lambda: CliRunner().invoke(
            app,
            ["telemetry", "simulate", "--target", served.target, "--license", farm.license_id],
            env={"SEEDLINE_TOKEN": None},
        )
    )
    assert (refused.exit_code, "UNAUTHENTICATED" in refused.output) == (2, True)  # no token
