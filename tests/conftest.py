"""Shared fixtures: one embedded PostgreSQL per test session (real server, not a mock)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from seedline_server.store import db


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """asyncpg URL of a migrated test database: DATABASE_URL if set, else an embedded server."""
    if url := os.environ.get("DATABASE_URL"):
        from seedline_server.config import Settings

        yield Settings(database_url=url).sqlalchemy_url()
        return
    data = Path(tmp_path_factory.mktemp("pg")) / "data"
    server = db.start_embedded(data, database="seedline_test")
    try:
        yield server.url("seedline_test")
    finally:
        db.stop_embedded(data)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def migrated(pg_url: str) -> str:
    """The test database, migrated to head."""
    await db.migrate(pg_url)
    return pg_url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database(migrated: str) -> AsyncIterator[object]:
    """A service-layer Database on the test database."""
    from seedline_server.service.uow import Database

    engine = db.make_engine(migrated, pool_size=5)
    yield Database(db.sessionmaker(engine))
    await engine.dispose()
