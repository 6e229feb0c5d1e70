"""Who is calling: bearer JWTs, API keys, session tokens and partner certificates.

:class:`Authenticator` turns a call's credential into an :class:`Identity` (principal + grants).
Secrets are compared by SHA-256 hash (API keys and session tokens are 256-bit random values, so a
fast hash is enough; nothing reversible is stored). Lookups of keys and sessions are cached for a
couple of seconds per process; revoking in this process drops the cache entry at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from sqlalchemy import update

from seedline_server.domain import access
from seedline_server.domain.errors import CredentialsInvalid
from seedline_server.service.context import ANONYMOUS, CallContext, Principal
from seedline_server.service.uow import Database, UnitOfWork, new_id, now
from seedline_server.store import models

API_KEY_PREFIX = "slk_"
SESSION_PREFIX = "sls_"
_CACHE_SECONDS = 2.0
_LAST_USE_GRANULARITY = timedelta(minutes=1)

# seedline.auth.v1 enum numbers
KIND_USER, KIND_API_KEY, KIND_PARTNER, KIND_SESSION, KIND_ANONYMOUS = 1, 2, 3, 4, 5
METHOD_SESSION, METHOD_API_KEY, METHOD_CERT, METHOD_NONE = 1, 2, 3, 4
CRED_CLIENT_SECRET, CRED_API_KEY, CRED_JWT = 1, 2, 3
METHOD_JWT = METHOD_SESSION  # a bearer JWT authenticates like a token


@dataclass(frozen=True)
class Identity:
    """An authenticated (or anonymous) caller and what it may do."""

    principal: Principal
    grants: access.Grants
    method: int = METHOD_NONE
    session_id: str = ""
    api_key_id: str = ""
    issued_at: float | None = None  # JWT `iat`, for e-signature freshness

    @property
    def anonymous(self) -> bool:
        """No valid credential."""
        return self.principal.kind == "ANONYMOUS"


NOBODY = Identity(ANONYMOUS, access.NONE)


def digest(secret: str) -> str:
    """SHA-256 hex of a secret (what is stored)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key(key_id: str) -> str:
    """A new API key string for ``key_id``: ``slk_<id>_<43 url-safe chars>``."""
    return f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def new_session_token() -> str:
    """A new session token: ``sls_<43 url-safe chars>``."""
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def grants_json(grants: access.Grants) -> dict[str, list[str]]:
    """Grants as stored with a session."""
    return {lic: sorted(perms) for lic, perms in grants.by_license.items()}


def grants_from_json(data: dict[str, Any]) -> access.Grants:
    """Grants stored with a session."""
    return access.Grants({lic: frozenset(perms) for lic, perms in data.items()})


class JwtVerifier:
    """Checks bearer JWTs.

    Signature (HS256 with a shared secret, RS256/ES256 from a JWKS file by ``kid``), expiry,
    not-before, issuer and audience.
    """

    def __init__(self, secret: str | None, jwks_path: Path | None, issuer: str, audience: str) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._keys: dict[str, Any] = {}
        if jwks_path is not None:
            for jwk in json.loads(jwks_path.read_text())["keys"]:
                parsed = jwt.PyJWK(jwk)
                self._keys[jwk["kid"]] = (parsed.key, parsed.algorithm_name)

    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims; CredentialsInvalid otherwise (never saying which check failed)."""
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg == "HS256" and self._secret:
                key: Any = self._secret
            elif alg in ("RS256", "ES256") and self._keys.get(str(header.get("kid")), (None, ""))[1] == alg:
                # The key named by `kid` must be of the algorithm the token claims.
                key = self._keys[header["kid"]][0]
            else:
                raise CredentialsInvalid("the credential is not valid")
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub"]},
                leeway=30,
            )
            return claims
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise CredentialsInvalid("the credential is not valid") from exc


def jwt_grants(claims: dict[str, Any]) -> access.Grants:
    """Grants carried by a JWT: ``seedline_grants`` = {"<license id or *>": ["role", ...]}."""
    raw = claims.get("seedline_grants") or {}
    if not isinstance(raw, dict):
        return access.NONE
    return access.Grants.from_roles(
        {str(lic): [str(r) for r in roles] for lic, roles in raw.items() if isinstance(roles, list)}
    )


class Authenticator:
    """Resolves credentials to identities (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        verifier: JwtVerifier,
        partner_grants: dict[str, dict[str, list[str]]],
        clock: Any = time.monotonic,
    ) -> None:
        self._db = db
        self._jwt = verifier
        self._partners = {p: access.Grants.from_roles(g) for p, g in partner_grants.items()}
        self._cache: dict[str, tuple[float, Identity]] = {}
        self._clock = clock
        self._ctx = CallContext(principal=Principal("system", "SYSTEM"), method="seedline.auth.Authenticate")

    def partner(self, principal: Principal) -> Identity:
        """A partner identified by its verified client certificate."""
        partner = principal.name.removeprefix("partners/")
        return Identity(principal, self._partners.get(partner, access.NONE), METHOD_CERT)

    async def bearer(self, token: str) -> Identity:
        """The identity of a bearer credential (API key, session token or JWT)."""
        if token.startswith(API_KEY_PREFIX):
            return await self._cached(token, self._api_key)
        if token.startswith(SESSION_PREFIX):
            return await self._cached(token, self._session)
        claims = self._jwt.verify(token)
        sub = str(claims["sub"])
        # A subject may be a full principal name (e.g. partners/acme signing with a JWT).
        name = sub if "/" in sub else f"users/{sub}"
        kind = "PARTNER_CERTIFICATE" if name.startswith("partners/") else "USER"
        principal = Principal(name=name, kind=kind, detail="jwt")
        return Identity(principal, jwt_grants(claims), METHOD_JWT, issued_at=float(claims["iat"]))

    def forget(self, token: str) -> None:
        """Drop a cached credential (after revoking it here)."""
        self._cache.pop(digest(token), None)

    def forget_all(self) -> None:
        """Drop every cached credential (after a revocation that may touch many)."""
        self._cache.clear()

    async def _cached(self, token: str, resolve: Any) -> Identity:
        key = digest(token)
        hit = self._cache.get(key)
        t = self._clock()
        if hit is not None and t - hit[0] < _CACHE_SECONDS:
            return hit[1]
        identity: Identity = await resolve(token)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = (t, identity)
        return identity

    async def _api_key(self, token: str) -> Identity:
        body = token[len(API_KEY_PREFIX) :]
        key_id, _, secret = body.partition("_")
        if len(key_id) != 26 or not secret:
            raise CredentialsInvalid("the credential is not valid")

        async def run(uow: UnitOfWork) -> Identity:
            row = await uow.session.get(models.ApiKey, key_id)
            t = now()
            if (
                row is None
                or not hmac.compare_digest(row.secret_hash, digest(token))
                or row.revoke_time is not None
                or row.expire_time <= t
            ):
                raise CredentialsInvalid("the credential is not valid")
            if row.last_use_time is None or t - row.last_use_time > _LAST_USE_GRANULARITY:
                await uow.session.execute(
                    update(models.ApiKey).where(models.ApiKey.id == row.id).values(last_use_time=t)
                )
            return api_key_identity(row)

        return await self._db.write(self._ctx, run)

    async def _session(self, token: str) -> Identity:
        async def run(uow: UnitOfWork) -> Identity:
            from sqlalchemy import select

            row = (
                await uow.session.scalars(
                    select(models.Session).where(models.Session.token_hash == digest(token))
                )
            ).first()
            if row is None or row.revoke_time is not None or row.expire_time <= now():
                raise CredentialsInvalid("the credential is not valid")
            principal = Principal(name=row.principal, kind=_KIND_NAMES[row.principal_kind], detail="session")
            return Identity(
                principal,
                grants_from_json(row.grants),
                METHOD_SESSION,
                session_id=row.id,
                api_key_id=row.api_key_id or "",
            )

        return await self._db.read(self._ctx, run)


_KIND_NAMES = {
    KIND_USER: "USER",
    KIND_API_KEY: "API_KEY",
    KIND_PARTNER: "PARTNER_CERTIFICATE",
    KIND_SESSION: "SESSION",
}


def api_key_identity(row: models.ApiKey) -> Identity:
    """The identity an API key acts as: its scopes on its licenses."""
    return Identity(
        Principal(name=f"apiKeys/{row.id}", kind="API_KEY", detail="api key"),
        access.Grants.from_scopes(row.licenses, row.scopes),
        METHOD_API_KEY,
        api_key_id=row.id,
    )


async def create_api_key(
    uow: UnitOfWork,
    creator: Identity,
    display_name: str,
    license_ids: list[str],
    scopes: list[str],
    expire_time: datetime,
) -> tuple[models.ApiKey, str]:
    """Create a key (its licenses and scopes within the creator's grants); returns it and its secret."""
    from seedline_server.domain.errors import PermissionDenied

    for lic in license_ids:
        for perm in access.PERMISSIONS:
            if any(access.scope_allows(s, perm) for s in scopes) and not creator.grants.allows(perm, lic):
                raise PermissionDenied(
                    f"the key cannot exceed your grants: you do not hold {perm} on licenses/{lic}",
                    metadata={"permission": perm, "license": f"licenses/{lic}"},
                )
    key_id = new_id()
    key = new_api_key(key_id)
    row = models.ApiKey(
        id=key_id,
        display_name=display_name,
        secret_hash=digest(key),
        licenses=license_ids,
        scopes=scopes,
        creator=creator.principal.name,
        create_time=now(),
        expire_time=expire_time,
        last_use_time=None,
        revoke_time=None,
    )
    uow.session.add(row)
    for lic in license_ids:
        await uow.audit(
            license_id=lic,
            resource=f"apiKeys/{key_id}",
            action="ACCESS_GRANTED",
            before=None,
            after={
                "display_name": display_name,
                "scopes": scopes,
                "licenses": license_ids,
                "creator": row.creator,
            },
        )
    return row, key


def utc(ts: float) -> datetime:
    """A POSIX time as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)
