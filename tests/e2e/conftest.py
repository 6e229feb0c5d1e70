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
def stack(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    """A running server behind a running Envoy."""
    import asyncio

    from seedline_server.store import db

    asyncio.run(db.migrate(pg_url))
    work = Path(tmp_path_factory.mktemp("stack"))
    server = ServerProcess(database_url=pg_url, data_dir=work / "server")
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
