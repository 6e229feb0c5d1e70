"""Development credentials for ``seedline dev``: a persisted HS256 secret and an admin token.

Without them a fresh ``make dev`` could not be called at all: creating the first company needs a
platform administrator, and API keys need a license to act on. So, when SEEDLINE_JWT_SECRET is
unset, ``seedline dev`` (never ``seedline serve``) trusts a random secret kept in the data
directory and writes a platform-admin JWT signed with it to ``<data dir>/dev-token``.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import jwt

SECRET_FILE = "dev-jwt-secret"  # noqa: S105 (a file name)
TOKEN_FILE = "dev-token"  # noqa: S105 (a file name)
SUBJECT = "dev-admin"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with a wider mode
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def jwt_secret(data_dir: Path) -> str:
    """The development HS256 secret: ``data_dir/dev-jwt-secret``, created (mode 0600) on first use."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(48))
    else:
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def write_admin_token(data_dir: Path, secret: str, *, issuer: str, audience: str, days: int = 30) -> Path:
    """Sign a platform-admin JWT (``users/dev-admin``, admin on every license) into ``data_dir/dev-token``.

    Args:
        data_dir: The development data directory.
        secret: The HS256 secret the server trusts.
        issuer: The ``iss`` the server requires.
        audience: The ``aud`` the server requires.
        days: How long the token is valid.

    Returns:
        The token file (mode 0600).

    """
    now = int(time.time())
    claims = {
        "sub": SUBJECT,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now - 1,
        "exp": now + days * 86400,
        "seedline_grants": {"*": ["admin"]},
    }
    path = data_dir / TOKEN_FILE
    _write_private(path, jwt.encode(claims, secret, algorithm="HS256"))
    return path
