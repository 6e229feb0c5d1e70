"""Migrations apply, roll back and re-apply on a fresh database."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from seedline_server.store import db

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_upgrade_downgrade_upgrade(pg_url: str) -> None:
    admin = create_async_engine(pg_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text("DROP DATABASE IF EXISTS seedline_migrations"))
        await conn.execute(text("CREATE DATABASE seedline_migrations"))
    await admin.dispose()
    url = pg_url.replace("/seedline_test?", "/seedline_migrations?")
    await db.migrate(url)
    await asyncio.to_thread(
        __import__("alembic.command", fromlist=["downgrade"]).downgrade, db.alembic_config(url), "base"
    )
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        left = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM pg_tables "
                    "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
            )
        ).scalar()
    assert left == 0
    await db.migrate(url)
    async with engine.connect() as conn:
        tables = {
            r[0]
            for r in await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        }
    await engine.dispose()
    assert {"plants", "licenses", "audit_events", "idempotency_keys"} <= tables


async def test_models_and_migrations_agree(migrated: str) -> None:
    """Every table, column and index of the models exists as migrated (no drift either way)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from seedline_server.store import (  # noqa: F401  (registers their tables)
        alert_models,
        integration_models,
        lab_models,
        telemetry_models,
    )
    from seedline_server.store.models import Base
    from seedline_server.store.telemetry_models import include_name

    engine = create_async_engine(migrated)
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True, "include_name": include_name}),
                Base.metadata,
            )
        )
    await engine.dispose()
    assert diff == []
