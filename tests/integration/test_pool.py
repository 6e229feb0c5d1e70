"""The pool survives dead connections (a PostgreSQL restart, a killed backend): idle connections
are pinged and replaced before use."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from seedline_server.store import db

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT pg_backend_pid()")) or 0)


async def test_idle_connections_are_pinged_and_replaced_when_dead(pg_url: str) -> None:
    pinging = db.make_engine(pg_url, pool_size=1, ping_after_idle=0.0)
    trusting = db.make_engine(pg_url, pool_size=1, ping_after_idle=3600.0)
    admin = create_async_engine(pg_url)
    try:
        dead = [await _backend_pid(pinging), await _backend_pid(trusting)]
        async with admin.connect() as conn:
            for pid in dead:
                assert await conn.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        # Idle past the threshold: the dead pooled connection is pinged, dropped and replaced.
        assert await _backend_pid(pinging) not in dead
        # Without the ping the dead connection is handed out and the first statement fails
        # (a caller would see DEPENDENCY_UNAVAILABLE); this is what the ping prevents.
        with pytest.raises(DBAPIError):
            await _backend_pid(trusting)
    finally:
        for engine in (pinging, trusting, admin):
            await engine.dispose()
