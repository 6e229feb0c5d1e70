"""``seedline api-keys list``: the API keys in the database, read as the platform operator."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from seedline_server.service.uow import UnitOfWork
from seedline_server.store import models


@dataclass(frozen=True)
class KeyLine:
    """One API key as listed (never its secret; only a hash of it is stored)."""

    name: str
    display_name: str
    licenses: list[str]
    scopes: list[str]
    creator: str
    expire_time: datetime
    last_use_time: datetime | None
    revoke_time: datetime | None

    def state(self, at: datetime) -> str:
        """REVOKED, EXPIRED or ACTIVE at ``at``."""
        if self.revoke_time is not None:
            return "REVOKED"
        return "EXPIRED" if self.expire_time <= at else "ACTIVE"


async def list_keys(
    uow: UnitOfWork, license_id: str | None, at: datetime, *, everything: bool
) -> list[KeyLine]:
    """The keys, oldest first.

    Args:
        uow: The unit of work to read in.
        license_id: Only keys acting on this license; all keys when None.
        at: The time that decides which keys are expired.
        everything: Also revoked and expired keys.

    Returns:
        One line per key.

    """
    stmt = select(models.ApiKey).order_by(models.ApiKey.id)
    if license_id is not None:
        stmt = stmt.where(models.ApiKey.licenses.contains([license_id]))
    if not everything:
        stmt = stmt.where(models.ApiKey.revoke_time.is_(None), models.ApiKey.expire_time > at)
    rows = (await uow.session.scalars(stmt)).all()
    return [
        KeyLine(
            f"apiKeys/{r.id}",
            r.display_name,
            list(r.licenses),
            list(r.scopes),
            r.creator,
            r.expire_time,
            r.last_use_time,
            r.revoke_time,
        )
        for r in rows
    ]
