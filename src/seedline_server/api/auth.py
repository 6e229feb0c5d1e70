"""AuthService: for now PingSession ("who am I") on the identity the transport established.

Sessions and API keys land with the identity issue (#5); those RPCs answer UNIMPLEMENTED.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2
from seedline.auth.v1 import auth_pb2 as pb
from seedline.auth.v1 import auth_pb2_grpc

from seedline_server.api.convert import ts
from seedline_server.api.interceptor import current
from seedline_server.domain.errors import NotImplementedYet
from seedline_server.service.uow import now

Ctx = grpc.aio.ServicerContext[Any, Any]
_LATER = "lands with the identity work (issue #5)"

_KIND = {
    "PARTNER_CERTIFICATE": (
        pb.PRINCIPAL_KIND_PARTNER_CERTIFICATE,
        pb.AUTHENTICATION_METHOD_CLIENT_CERTIFICATE,
    ),
    "ANONYMOUS": (pb.PRINCIPAL_KIND_ANONYMOUS, pb.AUTHENTICATION_METHOD_NONE),
}


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Implements seedline.auth.v1.AuthService (PingSession only so far)."""

    async def PingSession(self, request: pb.PingSessionRequest, context: Ctx) -> pb.PingSessionResponse:
        principal = current().principal
        kind, method = _KIND.get(
            principal.kind, (pb.PRINCIPAL_KIND_UNSPECIFIED, pb.AUTHENTICATION_METHOD_UNSPECIFIED)
        )
        return pb.PingSessionResponse(
            principal=principal.name,
            principal_kind=kind,
            authentication_method=method,
            server_time=ts(now()),
        )

    async def OpenSession(self, request: pb.OpenSessionRequest, context: Ctx) -> pb.Session:
        raise NotImplementedYet(f"OpenSession {_LATER}")

    async def ShutSession(self, request: pb.ShutSessionRequest, context: Ctx) -> empty_pb2.Empty:
        raise NotImplementedYet(f"ShutSession {_LATER}")

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Ctx) -> pb.ApiKey:
        raise NotImplementedYet(f"CreateApiKey {_LATER}")

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Ctx) -> pb.ApiKey:
        raise NotImplementedYet(f"GetApiKey {_LATER}")

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Ctx) -> pb.ListApiKeysResponse:
        raise NotImplementedYet(f"ListApiKeys {_LATER}")

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Ctx) -> pb.ApiKey:
        raise NotImplementedYet(f"RevokeApiKey {_LATER}")
