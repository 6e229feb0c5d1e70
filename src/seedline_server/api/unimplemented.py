"""Every v1 service and method not served yet answers UNIMPLEMENTED with a clear message.

Handlers are built from the contract's descriptors, so reflection lists the whole v1 surface and
a client gets a proper ``google.rpc.Status`` (reason NOT_IMPLEMENTED) instead of a bare error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory

from seedline_server.api import errors as api_errors
from seedline_server.domain.errors import NotImplementedYet

# Which issue brings each service, for the message.
_LANDS_WITH = {
    "seedline.auth.v1.AuthService": "the identity work (issue #5)",
    "seedline.integration.v1.IntegrationService": "the integrations work (issue #6)",
    "seedline.telemetry.v1.TelemetryService": "the telemetry work (issue #7)",
}


def _status(full_method: str, service: str) -> grpc.Status:
    when = _LANDS_WITH.get(service, "a later release")
    exc = NotImplementedYet(
        f"{full_method} is part of the v1 contract but not served yet; it lands with {when}",
        metadata={"method": full_method},
    )
    return api_errors.to_grpc(api_errors.to_status(exc))


def _handler(method: descriptor.MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
    request = message_factory.GetMessageClass(method.input_type)
    response = message_factory.GetMessageClass(method.output_type)
    status = _status(method.full_name, method.containing_service.full_name)
    kw: dict[str, Any] = {
        "request_deserializer": request.FromString,
        "response_serializer": response.SerializeToString,
    }

    async def unary(_req: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort_with_status(status)

    async def streaming(_req: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort_with_status(status)
        yield  # pragma: no cover - makes this an async generator

    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kw)
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


def handlers(services: Iterable[descriptor.ServiceDescriptor]) -> list[grpc.GenericRpcHandler]:
    """Generic handlers answering UNIMPLEMENTED for every method of ``services``."""
    return [
        grpc.method_handlers_generic_handler(s.full_name, {m.name: _handler(m) for m in s.methods})
        for s in services
    ]
