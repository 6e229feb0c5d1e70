"""AuthService: sessions (open, ping, shut) and API key administration."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import empty_pb2
from seedline.auth.v1 import auth_pb2 as pb
from seedline.auth.v1 import auth_pb2_grpc
from sqlalchemy import select, update

from seedline_server.api import names
from seedline_server.api.convert import call, dt, replay, ts
from seedline_server.api.interceptor import identity
from seedline_server.domain import access
from seedline_server.domain.errors import (
    CredentialsInvalid,
    CredentialsMissing,
    FailedPrecondition,
    NotFound,
    NotImplementedYet,
    PermissionDenied,
)
from seedline_server.domain.paging import decode_token, next_token, page_size
from seedline_server.service import identity as ident
from seedline_server.service.uow import Database, UnitOfWork, new_id, now
from seedline_server.store import models

Ctx = grpc.aio.ServicerContext[Any, Any]
_DEFAULT_TTL = timedelta(hours=1)

_KIND = {
    "USER": pb.PRINCIPAL_KIND_USER,
    "API_KEY": pb.PRINCIPAL_KIND_API_KEY,
    "PARTNER_CERTIFICATE": pb.PRINCIPAL_KIND_PARTNER_CERTIFICATE,
    "SESSION": pb.PRINCIPAL_KIND_SESSION,
    "ANONYMOUS": pb.PRINCIPAL_KIND_ANONYMOUS,
}
_METHOD = {
    ident.METHOD_SESSION: pb.AUTHENTICATION_METHOD_SESSION_TOKEN,
    ident.METHOD_API_KEY: pb.AUTHENTICATION_METHOD_API_KEY,
    ident.METHOD_CERT: pb.AUTHENTICATION_METHOD_CLIENT_CERTIFICATE,
    ident.METHOD_NONE: pb.AUTHENTICATION_METHOD_NONE,
}


def _grants_pb(grants: access.Grants) -> list[pb.LicenseGrant]:
    out = []
    for lic, perms in sorted(grants.by_license.items()):
        roles = [r for r, p in access.ROLES.items() if p <= perms and p]
        out.append(
            pb.LicenseGrant(license="licenses/*" if lic == access.ALL else f"licenses/{lic}", roles=roles)
        )
    return out


def _session_pb(row: models.Session, token: str = "") -> pb.Session:
    t = now()
    state = pb.SESSION_STATE_ACTIVE
    if row.revoke_time is not None:
        state = pb.SESSION_STATE_REVOKED
    elif row.expire_time <= t:
        state = pb.SESSION_STATE_EXPIRED
    return pb.Session(
        name=f"sessions/{row.id}",
        token=token,
        principal=row.principal,
        principal_kind=row.principal_kind,  # type: ignore[arg-type]
        credential_type=row.credential_type,  # type: ignore[arg-type]
        grants=_grants_pb(ident.grants_from_json(row.grants)),
        state=state,
        create_time=ts(row.create_time),
        expire_time=ts(row.expire_time),
        revoke_time=ts(row.revoke_time),
    )


def _key_pb(row: models.ApiKey, secret: str = "") -> pb.ApiKey:
    t = now()
    state = pb.API_KEY_STATE_ACTIVE
    if row.revoke_time is not None:
        state = pb.API_KEY_STATE_REVOKED
    elif row.expire_time <= t:
        state = pb.API_KEY_STATE_EXPIRED
    return pb.ApiKey(
        name=f"apiKeys/{row.id}",
        display_name=row.display_name,
        key=secret,
        scopes=row.scopes,
        licenses=[f"licenses/{lic}" for lic in row.licenses],
        expire_time=ts(row.expire_time),
        last_use_time=ts(row.last_use_time),
        revoke_time=ts(row.revoke_time),
        create_time=ts(row.create_time),
        creator=row.creator,
        state=state,
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Implements seedline.auth.v1.AuthService."""

    def __init__(self, db: Database, authenticator: ident.Authenticator) -> None:
        self._db = db
        self._auth = authenticator

    async def PingSession(self, request: pb.PingSessionRequest, context: Ctx) -> pb.PingSessionResponse:
        who = identity()
        out = pb.PingSessionResponse(
            principal=who.principal.name,
            principal_kind=_KIND.get(who.principal.kind, pb.PRINCIPAL_KIND_UNSPECIFIED),
            authentication_method=_METHOD.get(who.method, pb.AUTHENTICATION_METHOD_UNSPECIFIED),
            grants=_grants_pb(who.grants),
            server_time=ts(now()),
        )
        if who.session_id:

            async def run(uow: UnitOfWork) -> None:
                row = await uow.session.get(models.Session, who.session_id)
                if row is not None:
                    out.session.CopyFrom(_session_pb(row))

            await self._db.read(call(), run)
        return out

    async def OpenSession(self, request: pb.OpenSessionRequest, context: Ctx) -> pb.Session:
        kind = request.WhichOneof("credential")
        if kind == "client_credentials":
            raise NotImplementedYet("client id + secret sessions need the client registry (not built yet)")
        credential = request.api_key if kind == "api_key" else request.jwt_assertion
        try:
            who = await self._auth.bearer(credential)
        except CredentialsInvalid:
            raise
        if kind == "jwt_assertion" and who.method != ident.METHOD_JWT:
            raise CredentialsInvalid("the credential is not valid")
        grants = who.grants
        if request.licenses:
            wanted = {names.license_id(lic, "licenses") for lic in request.licenses}
            grants = access.Grants(
                {lic: perms for lic, perms in grants.by_license.items() if lic in wanted or lic == access.ALL}
            )
        ttl = timedelta(seconds=request.ttl.seconds) if request.HasField("ttl") else _DEFAULT_TTL
        token = ident.new_session_token()
        t = now()
        row = models.Session(
            id=new_id(),
            token_hash=ident.digest(token),
            principal=who.principal.name,
            principal_kind=_KIND.get(who.principal.kind, pb.PRINCIPAL_KIND_SESSION),
            credential_type=ident.CRED_API_KEY if kind == "api_key" else ident.CRED_JWT,
            api_key_id=who.api_key_id or None,
            grants=ident.grants_json(grants),
            create_time=t,
            expire_time=t + ttl,
            revoke_time=None,
        )

        async def run(uow: UnitOfWork) -> pb.Session:
            uow.session.add(row)
            await uow.session.flush()
            return _session_pb(row, token)

        return await self._db.write(call(), run)

    async def ShutSession(self, request: pb.ShutSessionRequest, context: Ctx) -> empty_pb2.Empty:
        who = identity()
        if not who.session_id:
            raise FailedPrecondition(
                "the call is not authenticated with a session token: there is no session to shut",
                metadata={"principal": who.principal.name},
            )

        async def run(uow: UnitOfWork) -> None:
            await uow.session.execute(
                update(models.Session)
                .where(models.Session.id == who.session_id, models.Session.revoke_time.is_(None))
                .values(revoke_time=now())
            )

        await self._db.write(call(), run)
        self._auth.forget_all()
        return empty_pb2.Empty()

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Ctx) -> pb.ApiKey:
        key = request.api_key
        licenses = [names.license_id(lic, "api_key.licenses") for lic in key.licenses]
        expire = dt(key, "expire_time")
        assert expire is not None
        who = identity()

        async def run(uow: UnitOfWork) -> pb.ApiKey:
            row, secret = await ident.create_api_key(
                uow, who, key.display_name, licenses, list(key.scopes), expire
            )
            await uow.session.flush()
            return _key_pb(row, secret)

        return await self._db.write(call(request.request_id), run, replay("CreateApiKey", request, pb.ApiKey))

    async def _administered(self, uow: UnitOfWork, key_id: str) -> models.ApiKey:
        """The key if the caller created it or administers (registry.admin/owner) one of its licenses."""
        who = identity()
        row = await uow.session.get(models.ApiKey, key_id)
        if row is None:
            raise NotFound("API key", f"apiKeys/{key_id}")
        if row.creator != who.principal.name and not any(
            who.grants.allows("auth.keys", lic) for lic in row.licenses
        ):
            raise PermissionDenied(f"{who.principal.name} may not administer apiKeys/{key_id}")
        return row

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Ctx) -> pb.ApiKey:
        key_id = names.parse(request.name, "apiKeys/{}", "name")[0]

        async def run(uow: UnitOfWork) -> pb.ApiKey:
            return _key_pb(await self._administered(uow, key_id))

        return await self._db.read(call(), run)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Ctx) -> pb.ListApiKeysResponse:
        who = identity()
        if who.anonymous:
            raise CredentialsMissing("this call needs credentials")
        query = {"principal": who.principal.name}
        size = page_size(request.page_size)
        after = decode_token(request.page_token, query)

        async def run(uow: UnitOfWork) -> pb.ListApiKeysResponse:
            stmt = select(models.ApiKey).order_by(models.ApiKey.id)
            if after is not None:
                stmt = stmt.where(models.ApiKey.id > after)
            out = pb.ListApiKeysResponse()
            last = ""
            async for row in await uow.session.stream_scalars(stmt.execution_options(yield_per=200)):
                visible = row.creator == who.principal.name or any(
                    who.grants.allows("auth.keys", lic) for lic in row.licenses
                )
                if not visible:
                    continue
                if len(out.api_keys) == size:
                    out.next_page_token = next_token(last, query)
                    break
                out.api_keys.append(_key_pb(row))
                last = row.id
            return out

        return await self._db.read(call(), run)

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Ctx) -> pb.ApiKey:
        key_id = names.parse(request.name, "apiKeys/{}", "name")[0]

        async def run(uow: UnitOfWork) -> pb.ApiKey:
            row = await self._administered(uow, key_id)
            if row.revoke_time is None:
                t = now()
                row.revoke_time = t
                await uow.session.execute(
                    update(models.Session)
                    .where(models.Session.api_key_id == row.id, models.Session.revoke_time.is_(None))
                    .values(revoke_time=t)
                )
                for lic in row.licenses:
                    await uow.audit(
                        license_id=lic,
                        resource=f"apiKeys/{row.id}",
                        action="ACCESS_REVOKED",
                        before=None,
                        after={"revoke_time": t.isoformat()},
                    )
            return _key_pb(row)

        result = await self._db.write(
            call(request.request_id), run, replay("RevokeApiKey", request, pb.ApiKey)
        )
        self._auth.forget_all()
        return result
