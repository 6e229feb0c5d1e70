"""`seedline api-keys create|revoke|list` against the test database, and the keys they make."""

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
from seedline_server.store import db
from tests.integration.conftest import make_farm

pytestmark = pytest.mark.asyncio(loop_scope="session")
SEEDLINE = str(Path(sys.executable).parent / "seedline")


def cli(pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=db.libpq_url(pg_url))
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


async def test_cli_lists_keys_by_license_and_hides_revoked_ones_unless_asked(
    database: Database, migrated: str
) -> None:
    farm = await make_farm(database, f"CLI-{uuid.uuid4().hex[:8]}")
    other = await make_farm(database, f"CLI-{uuid.uuid4().hex[:8]}")

    def create(name: str, license_id: str) -> str:
        args = ("--name", name, "--license", license_id, "--scope", "lab.*")
        made = cli(migrated, "api-keys", "create", *args)
        assert made.returncode == 0, made.stderr
        return made.stdout.split()[0]

    kept = create("scale-kept", farm.license_id)
    gone = create("scale-gone", farm.license_id)
    elsewhere = create("scale-elsewhere", other.license_id)
    assert cli(migrated, "api-keys", "revoke", gone).returncode == 0

    listed = cli(migrated, "api-keys", "list", "--license", f"licenses/{farm.license_id}")
    assert listed.returncode == 0, listed.stderr
    assert kept in listed.stdout
    assert "scale-kept" in listed.stdout
    assert "lab.*" in listed.stdout
    assert gone not in listed.stdout
    assert elsewhere not in listed.stdout
    assert "slk_" not in listed.stdout  # never a secret
    assert "1 key(s)" in listed.stderr

    everything = cli(migrated, "api-keys", "list", "--license", farm.license_id, "--all")
    assert everything.returncode == 0, everything.stderr
    assert kept in everything.stdout
    assert gone in everything.stdout
    assert "REVOKED" in everything.stdout
    assert "2 key(s)" in everything.stderr

    unfiltered = cli(migrated, "api-keys", "list")
    assert kept in unfiltered.stdout
    assert elsewhere in unfiltered.stdout
