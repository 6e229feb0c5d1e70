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


def test_files_that_exist_with_a_wider_mode_are_made_private(tmp_path: Path) -> None:
    secret = dev_auth.jwt_secret(tmp_path)
    for name in (dev_auth.SECRET_FILE, dev_auth.TOKEN_FILE):
        (tmp_path / name).touch()
        (tmp_path / name).chmod(0o644)
    (tmp_path / dev_auth.SECRET_FILE).write_text(secret)
    assert dev_auth.jwt_secret(tmp_path) == secret
    token = dev_auth.write_admin_token(tmp_path, secret, issuer="seedline", audience="seedline")
    for path in (tmp_path / dev_auth.SECRET_FILE, token):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_dev_admin_with_a_real_identity_provider_or_database(tmp_path: Path) -> None:
    from seedline_server.cli import _dev_credentials
    from seedline_server.config import Settings

    plain = Settings(data_dir=tmp_path / "a")
    trusted, token = _dev_credentials(plain)
    assert token is not None
    assert trusted.jwt_secret is not None
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    for settings in (
        Settings(data_dir=tmp_path / "b", jwt_jwks_path=jwks),
        Settings(data_dir=tmp_path / "c", database_url="postgresql://db.example/seedline"),
    ):
        same, none = _dev_credentials(settings)
        assert (same, none) == (settings, None)
        assert not (settings.data_dir / dev_auth.TOKEN_FILE).exists()
