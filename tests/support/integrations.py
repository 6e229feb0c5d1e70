"""Integration rows written straight into the database, as CreateIntegration stores them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from seedline.integration.v1 import integration_pb2 as pb
from ulid import ULID

from seedline_server.crypto import KeyRing
from seedline_server.service.context import CallContext
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import integration_models as im


async def insert_integration(
    database: Database,
    ctx: CallContext,
    license_id: str,
    kind: str,
    *,
    endpoint_uri: str,
    display_name: str = "test",
    config: dict[str, Any] | None = None,
    events: list[str] | None = None,
    credentials: pb.Credentials | None = None,
    keyring: KeyRing | None = None,
) -> str:
    """An enabled integration with a closed breaker; ``credentials`` are sealed with ``keyring``."""
    iid = str(ULID())
    t = datetime.now(UTC)
    sealed = None
    if credentials is not None:
        assert keyring is not None, "sealing credentials needs a keyring"
        name = f"licenses/{license_id}/integrations/{iid}"
        sealed = keyring.seal(credentials.SerializeToString(), name.encode())

    async def run(uow: UnitOfWork) -> None:
        uow.session.add(
            im.Integration(
                id=iid,
                license_id=license_id,
                kind=kind,
                display_name=display_name,
                endpoint_uri=endpoint_uri,
                enabled=True,
                config=config or {},
                events=events or [],
                credentials=sealed,
                credentials_update_time=t if sealed is not None else None,
                breaker_state="CLOSED",
                breaker_failures=0,
                create_time=t,
                update_time=t,
                version=1,
            )
        )

    await database.write(ctx, run)
    return iid
