"""`seedline dev`'s credentials: a private, persisted secret and an admin token the server accepts."""

from __future__ import annotations

import stat
from pathlib import Path

from seedline_server import dev_auth
from seedline_server.service.identity import JwtVerifier, jwt_grants


def test_the_secret_is_private_and_kept_across_runs(tmp_path: Path) -> None:
    first = dev_auth.jwt_secret(tmp_path)
    assert len(first) >= 64
    assert dev_auth.jwt_secret(tmp_path) == first
    assert stat.S_IMODE((tmp_path / dev_auth.SECRET_FILE).stat().st_mode) == 0o600
    assert dev_auth.jwt_secret(tmp_path / "other") != first


def test_the_token_is_a_platform_admin_for_the_server_trusting_the_secret(tmp_path: Path) -> None:
    secret = dev_auth.jwt_secret(tmp_path)
    path = dev_auth.write_admin_token(tmp_path, secret, issuer="seedline", audience="seedline")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    claims = JwtVerifier(secret, None, "seedline", "seedline").verify(path.read_text().strip())
    assert claims["sub"] == dev_auth.SUBJECT
    grants = jwt_grants(claims)
    assert grants.allows("registry.admin", "any-license")
