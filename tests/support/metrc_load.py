"""Many plants delivered to the fake METRC by real `seedline worker` processes.

Shared by the exactly-once fault test (tests/e2e/test_metrc_exactly_once.py) and the delivery
benchmark (bench/bench_integrations.py): a license with a METRC integration whose credentials are
sealed like the API seals them, plants created through the use case (so their deliveries come
from the real outbox hook), workers started as processes, and counts read from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from seedline.integration.v1 import integration_pb2 as pb
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.config import Settings
from seedline_server.crypto import KeyRing
from seedline_server.domain import plant as plant_rules
from seedline_server.service import integrations, plants
from seedline_server.service.context import CallContext, Principal
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import integration_models as im
from tests.integration import conftest as integration_fixtures

CTX = CallContext(principal=Principal(name="users/loader", kind="USER"), method="tests.metrc_load")
VENDOR_KEY = "vendor-key-" + "0" * 8
USER_KEY = "user-key-" + "1" * 8
SECRET_KEYS = "load:" + base64.b64encode(os.urandom(32)).decode()


def fake_config(
    facility: str, *, get_rate: int = 50, rate: int = 150, concurrent: int = 10
) -> dict[str, object]:
    """The fake METRC's configuration: one vendor key, one user seeing ``facility``."""
    return {
        "vendor_keys": [VENDOR_KEY],
        "users": {USER_KEY: [facility]},
        "facilities": [{"Number": facility, "Name": "Load Farm", "LicenseType": "Cultivator"}],
        "limits": {"get_per_facility": get_rate, "per_vendor": rate, "concurrent_per_facility": concurrent},
    }


def keyring() -> KeyRing:
    """The ring the workers use (same SEEDLINE_SECRET_KEYS)."""
    return KeyRing.from_settings(Settings(secret_keys=SecretStr(SECRET_KEYS)))


@dataclass(frozen=True)
class Farm:
    """The license everything happens in."""

    license_id: str
    license_number: str
    section_id: str
    variety_id: str
    integration_id: str


async def make_farm(database: Database, metrc_url: str, number: str | None = None) -> Farm:
    """A license (``number``) with a section, a variety and a METRC integration at ``metrc_url``.

    The license comes from the integration tests' fixture; the integration is created through the
    use case CreateIntegration runs (validated, credentials sealed with :func:`keyring`).
    """
    number = number or f"LOAD-{uuid.uuid4().hex[:8].upper()}"
    base = await integration_fixtures.make_farm(database, number)
    spec = integrations.Spec(
        kind="METRC",
        display_name="METRC (fake)",
        endpoint_uri=metrc_url,
        enabled=True,
        config=pb.MetrcConfig(
            state_code="CO", facility_license_number=number, api_version=pb.METRC_API_VERSION_V2
        ),
        credentials=pb.Credentials(metrc=pb.MetrcCredentials(vendor_key=VENDOR_KEY, user_key=USER_KEY)),
    )

    async def run(uow: UnitOfWork) -> str:
        return (await integrations.create_integration(uow, keyring(), base.license_id, spec)).row.id

    iid = await database.write(CTX, run)
    return Farm(base.license_id, number, base.section_id, base.variety_id, iid)


async def create_plants(database: Database, farm: Farm, count: int, *, per_transaction: int = 500) -> float:
    """Create ``count`` CLONE plants (so ``count`` registrations queue); returns seconds taken."""
    t0 = time.perf_counter()
    new = plants.NewPlant(
        display_name="",
        variety_id=farm.variety_id,
        section_id=farm.section_id,
        source_lot="",
        batch="",
        phase=plant_rules.Phase.CLONE,
        plant_time=None,
    )
    left = count
    while left > 0:
        n = min(per_transaction, left)

        async def run(uow: UnitOfWork, n: int = n) -> None:
            await plants.create_plants(uow, farm.license_id, new, n)

        await database.write(CTX, run)
        left -= n
    return time.perf_counter() - t0


async def delivery_states(engine: AsyncEngine, integration_id: str) -> dict[str, int]:
    """How many deliveries of the integration are in each state."""
    d = im.Delivery
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(d.state, func.count()).where(d.integration_id == integration_id).group_by(d.state)
        )
        return {state: n for state, n in rows}


async def wait_delivered(
    engine: AsyncEngine, integration_id: str, total: int, *, within: float, poll: float = 0.5
) -> dict[str, int]:
    """Wait until ``total`` deliveries are DELIVERED (or a dead letter appears, or time runs out)."""
    deadline = time.monotonic() + within
    states: dict[str, int] = {}
    while time.monotonic() < deadline:
        states = await delivery_states(engine, integration_id)
        if states.get("DELIVERED", 0) >= total or states.get("DEAD_LETTER", 0):
            return states
        await asyncio.sleep(poll)
    return states


def worker_env(pg_url: str, ca: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a `seedline worker` process for these tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDLINE_")}
    env |= {
        "DATABASE_URL": pg_url,
        "SEEDLINE_SECRET_KEYS": SECRET_KEYS,
        "SEEDLINE_INTEGRATION_CA_FILE": str(ca),
        "SEEDLINE_SCHEDULE_ENABLED": "false",
        "SEEDLINE_LOG_LEVEL": "warning",
    }
    return env | dict(extra or {})


def start_worker(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`seedline worker` as a child process, its output to ``log``."""
    out = log.open("ab")
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("seedline")), "worker"], env=dict(env), stdout=out, stderr=out
    )
