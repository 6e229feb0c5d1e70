"""Credentials for tests: the HS256 secret test servers trust and a JWT minter."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import grpc
import jwt

SECRET = "seedline-tests-only-hs256-secret-not-for-production"
ISSUER = AUDIENCE = "seedline"
ADMIN = "e2e-admin"  # the principal the e2e `channel` acts as (users/e2e-admin)
PARTNER = "partners/acme"  # the principal of the e2e `rest` client's certificate
# The environment test servers run with: trust SECRET, and make the e2e partner an admin.
SERVER_ENV = {
    "SEEDLINE_JWT_SECRET": SECRET,
    "SEEDLINE_PARTNER_GRANTS": json.dumps({"acme": {"*": ["admin"]}}),
    # Tests build signatures once per module; keep them valid for the whole run.
    "SEEDLINE_SIGNATURE_MAX_AGE_SECONDS": "3600",
    # A fresh secrets key per test session (integration credentials are sealed with it).
    "SEEDLINE_SECRET_KEYS": "test:" + base64.b64encode(os.urandom(32)).decode(),
}


def mint(
    sub: str = ADMIN,
    grants: dict[str, list[str]] | None = None,
    *,
    ttl: float = 3600,
    issued: float | None = None,
    **claims: Any,
) -> str:
    """A signed JWT for ``sub`` with role grants per license id (``*`` for all)."""
    t = time.time() if issued is None else issued
    body = {
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(t),
        "nbf": int(t) - 1,
        "exp": int(t + ttl),
        "seedline_grants": grants if grants is not None else {"*": ["admin"]},
        **claims,
    }
    return jwt.encode(body, SECRET, algorithm="HS256")


def bearer(token: str) -> tuple[tuple[str, str]]:
    """gRPC metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer`` to every call (unless the call sets its own)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or [])
        if not any(k == "authorization" for k, _ in metadata):
            metadata.append(self._header)
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def with_bearer(channel: grpc.Channel, token: str) -> grpc.Channel:
    """``channel`` sending ``token`` as the bearer credential of every call."""
    return grpc.intercept_channel(channel, _Bearer(token))
