"""E2E fixtures: the server and Envoy as processes, once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.support import auth
from tests.support.stack import EdgeProcess, ServerProcess


@pytest.fixture(scope="session")
def e2e_pg_url(pg_url: str) -> str:
    """A database of its own for the e2e servers, on the same PostgreSQL.

    The servers run the integrations worker in-process; in the tests' shared database they would
    claim the deliveries that integration tests create for their own workers.
    """
    import asyncio

    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from seedline_server.store import db

    url = make_url(pg_url)
    name = f"{url.database}_e2e"

    async def create() -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                exists = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
                if not exists:
                    await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await engine.dispose()
        await db.migrate(own)

    own = url.set(database=name).render_as_string(hide_password=False)
    asyncio.run(create())
    return own


@pytest.fixture(scope="session")
def stack(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    """A running server behind a running Envoy."""
    work = Path(tmp_path_factory.mktemp("stack"))
    server = ServerProcess(database_url=e2e_pg_url, data_dir=work / "server")
    edge: EdgeProcess | None = None
    try:  # whatever fails during setup, nothing is left running
        server.start()
        edge = EdgeProcess(server=server, workdir=work)
        edge.start()
        yield edge
    finally:
        if edge is not None:
            edge.stop()
        server.stop()


@pytest.fixture(scope="session")
def channel(stack: EdgeProcess) -> Iterator[grpc.Channel]:
    """A gRPC channel to the direct listener."""
    with grpc.insecure_channel(stack.server.target) as raw:
        yield auth.with_bearer(raw, auth.mint())


@pytest.fixture(scope="session")
def rest(stack: EdgeProcess) -> Iterator[httpx.Client]:
    """An httpx client presenting the partner certificate to Envoy."""
    assert stack.pki is not None
    import ssl

    ctx = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    ctx.load_cert_chain(str(stack.pki.partner_cert), str(stack.pki.partner_key))
    with httpx.Client(base_url=stack.base_url, verify=ctx, timeout=10) as client:
        yield client
