"""Every RPC crossed with {no credentials, expired token, wrong license, insufficient role, allowed}.

The matrix is built from the contract itself, so a new RPC is covered the moment it exists. Each
call goes over the real server's direct listener with a real JWT; authorization happens before
validation and before any lookup, so the requests carry little more than the license they name.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from seedline.type.v1 import access_pb2

from seedline_server import contract
from seedline_server.domain import access
from tests.support import auth
from tests.support.stack import EdgeProcess

LICENSE = "01JD" + "0" * 22  # the license the requests name
OTHER = "01JE" + "0" * 22
METHODS = [m for s in contract.load_services() for m in s.methods]
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def rule(method: descriptor.MethodDescriptor) -> access_pb2.AccessRule:
    return method.GetOptions().Extensions[access_pb2.access]


def request_for(method: descriptor.MethodDescriptor) -> Any:
    """A request naming LICENSE in the rule's license field (nothing else is needed to authorize)."""
    req = message_factory.GetMessageClass(method.input_type)()
    r = rule(method)
    if r.scope == access_pb2.ACCESS_SCOPE_LICENSE:
        field = r.license_field or ("parent" if "parent" in method.input_type.fields_by_name else "name")
        target: Any = req
        parts = field.split(".")
        for part in parts[:-1]:
            target = getattr(target, part)
        value = f"licenses/{LICENSE}" if parts[-1] == "parent" else f"licenses/{LICENSE}/things/{LICENSE}"
        setattr(target, parts[-1], value)
    return req


def lacking_role(permission: str) -> str:
    """A role that does not carry ``permission`` (every role reads the registry: then a grant
    naming no known role, which carries no permission at all)."""
    return next((r for r, perms in sorted(access.ROLES.items()) if permission not in perms), "no-such-role")


@pytest.fixture(scope="module")
def raw(stack: EdgeProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.server.target) as ch:
        yield ch


def call(channel: grpc.Channel, method: descriptor.MethodDescriptor, token: str | None) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = auth.bearer(token) if token else None
    response_class = message_factory.GetMessageClass(method.output_type)
    try:
        if method.client_streaming:  # bidirectional: authorized on the stream's first message
            stream = channel.stream_stream(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )(iter([request_for(method)]), metadata=metadata, timeout=10)
            next(iter(stream), None)
        elif method.server_streaming:
            stream = channel.unary_stream(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )(request_for(method), metadata=metadata, timeout=2)
            next(iter(stream), None)
        else:
            channel.unary_unary(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )(request_for(method), metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


CASES = ["no credentials", "expired token", "wrong license", "insufficient role", "allowed"]
# "insufficient role" exists only for RPCs that need a permission.
MATRIX = [(m, c) for m in METHODS for c in CASES if c != "insufficient role" or rule(m).permission]


@pytest.mark.parametrize(
    ("method", "case"), MATRIX, ids=[f"{m.full_name.removeprefix('seedline.')}-{c}" for m, c in MATRIX]
)
def test_access(raw: grpc.Channel, method: descriptor.MethodDescriptor, case: str) -> None:
    r = rule(method)
    public = r.scope == access_pb2.ACCESS_SCOPE_PUBLIC
    where = access.ALL if r.scope == access_pb2.ACCESS_SCOPE_GLOBAL else LICENSE
    if case == "no credentials":
        code = call(raw, method, None)
        assert (code != UNAUTHENTICATED) if public else (code == UNAUTHENTICATED), code
    elif case == "expired token":
        expired = auth.mint(grants={"*": ["admin"]}, issued=time.time() - 7200, ttl=600)
        code = call(raw, method, expired)
        # Public RPCs treat a bad credential as no credential (PingSession says "anonymous").
        assert (code != UNAUTHENTICATED) if public else (code == UNAUTHENTICATED), code
    elif case == "wrong license":
        token = auth.mint(f"matrix-{uuid.uuid4().hex[:6]}", {OTHER: ["admin"]})
        code = call(raw, method, token)
        if r.scope in (access_pb2.ACCESS_SCOPE_LICENSE, access_pb2.ACCESS_SCOPE_GLOBAL):
            assert code == DENIED, code
        elif r.permission:
            # The handler checks the caller is a party (e.g. a transfer's target; not one here) or
            # narrows its answer to the caller's grants (ListApiKeys: an empty page).
            ok = (DENIED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK)
            assert code in ok, code
        else:
            assert code not in (DENIED, UNAUTHENTICATED), code
    elif case == "insufficient role":
        token = auth.mint(f"matrix-{uuid.uuid4().hex[:6]}", {where: [lacking_role(r.permission)]})
        code = call(raw, method, token)
        assert code == DENIED, code
    else:
        token = auth.mint(f"matrix-{uuid.uuid4().hex[:6]}", {where: ["admin"]})
        code = call(raw, method, token)
        assert code not in (DENIED, UNAUTHENTICATED), code
