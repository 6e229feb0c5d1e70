"""`seedline api-keys create|revoke` against the test database, and the keys they make."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from seedline_server.domain.errors import CredentialsInvalid
from seedline_server.service.identity import Authenticator, JwtVerifier
from seedline_server.service.uow import Database
from tests.integration.conftest import make_farm

pytestmark = pytest.mark.asyncio(loop_scope="session")
SEEDLINE = str(Path(sys.executable).parent / "seedline")


def cli(pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    return subprocess.run([SEEDLINE, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_cli_creates_a_working_key_and_revokes_it(database: Database, migrated: str) -> None:
    farm = await make_farm(database, f"CLI-{uuid.uuid4().hex[:8]}")
    made = cli(
        migrated,
        "api-keys",
        "create",
        "--name",
        "scale",
        "--license",
        farm.license_id,
        "--scope",
        "inventory.read",
    )
    assert made.returncode == 0, made.stderr
    name, secret = made.stdout.split()
    assert name.startswith("apiKeys/")
    assert secret.startswith("slk_")
    assert "not shown again" in made.stderr
    auth = Authenticator(database, JwtVerifier(None, None, "seedline", "seedline"), {})
    who = await auth.bearer(secret)
    assert who.principal.name == name
    assert who.grants.allows("inventory.read", farm.license_id)
    assert not who.grants.allows("inventory.write", farm.license_id)
    revoked = cli(migrated, "api-keys", "revoke", name)
    assert revoked.returncode == 0, revoked.stderr
    auth.forget_all()
    with pytest.raises(CredentialsInvalid):
        await auth.bearer(secret)
    assert cli(migrated, "api-keys", "revoke", "apiKeys/01JD" + "0" * 22).returncode == 1
