"""The one server interceptor every RPC passes through.

For each call it (1) establishes the principal, trusting Envoy's ``x-forwarded-client-cert``
only on the edge listener that Envoy alone reaches, (2) validates the request against the
contract's ``buf.validate`` rules, (3) maps domain errors to rich statuses and anything
unexpected to a logged INTERNAL. New RPCs cannot bypass it: it wraps whatever handler the server
resolves.
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import protovalidate
import structlog
from google.protobuf.message import Message

from seedline_server.api import errors as api_errors
from seedline_server.domain.errors import DomainError, FieldViolation, InvalidArgument
from seedline_server.service.context import ANONYMOUS, CallContext, Principal

log = structlog.get_logger("seedline.rpc")

_current: contextvars.ContextVar[CallContext] = contextvars.ContextVar("seedline_call")
_validator = protovalidate.Validator()  # type: ignore[no-untyped-call]
_PARTNER_URI = re.compile(r"^spiffe://seedline\.dev/partner/([A-Za-z0-9._-]{1,64})$")
XFCC = "x-forwarded-client-cert"


def current() -> CallContext:
    """The context of the RPC being served."""
    return _current.get()


def _split_unquoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes; XFCC quotes values that contain , ; = or quotes."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _xfcc_uri(value: str) -> str:
    """The ``URI=`` of the last element Envoy appended (the verified peer)."""
    element = _split_unquoted(value, ",")[-1]
    for part in _split_unquoted(element, ";"):
        key, _, val = part.partition("=")
        if key.strip().lower() == "uri":
            return val.strip().strip('"')
    return ""


def principal_from(metadata: dict[str, str], *, trust_forwarded: bool) -> Principal:
    """Who is calling, from the call's metadata.

    Args:
        metadata: the invocation metadata.
        trust_forwarded: True only on the edge listener behind Envoy; on the direct listener a
            forwarded client certificate header is ignored.

    """
    if trust_forwarded and (value := metadata.get(XFCC)):
        uri = _xfcc_uri(value)
        if match := _PARTNER_URI.match(uri):
            return Principal(name=f"partners/{match.group(1)}", kind="PARTNER_CERTIFICATE", detail=uri)
    return ANONYMOUS


def violations_of(request: Message) -> list[FieldViolation]:
    """The contract's validation violations of ``request`` as dotted field paths."""
    found = _validator.collect_violations(request)
    out = []
    for violation in found:
        proto = violation.proto
        parts = []
        for element in proto.field.elements:
            part = element.field_name
            if element.HasField("index"):
                part += f"[{element.index}]"
            elif element.HasField("string_key"):
                part += f"[{element.string_key!r}]"
            parts.append(part)
        path = ".".join(parts)
        rule = proto.rule_id
        out.append(
            FieldViolation(path or "(request)", f"{proto.message} [{rule}]" if rule else proto.message)
        )
    return out


# Request message full name -> a function that adds context to the contract's violations of such
# a request (e.g. the lab metric behind ``lab_result.metrics[3].qom``); registered by servicers.
Annotator = Callable[[Message, list[FieldViolation]], list[FieldViolation]]
_annotators: dict[str, Annotator] = {}


def annotate_violations(message_type: type[Message], annotator: Annotator) -> None:
    """Have :func:`validate` pass violations of ``message_type`` requests through ``annotator``."""
    _annotators[message_type.DESCRIPTOR.full_name] = annotator


def validate(request: Message) -> None:
    """Raise INVALID_ARGUMENT with every field violation, or return."""
    found = violations_of(request)
    if found and (annotator := _annotators.get(request.DESCRIPTOR.full_name)) is not None:
        found = annotator(request, found)
    if found:
        fields = ", ".join(sorted({v.field for v in found}))
        raise InvalidArgument(f"invalid request: {fields}", found)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Identity, validation and error mapping for every unary and server-streaming RPC."""

    def __init__(self, *, trust_forwarded: bool) -> None:
        self._trust_forwarded = trust_forwarded

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        metadata = {k: v for k, v in handler_call_details.invocation_metadata or () if isinstance(v, str)}
        ctx = CallContext(
            principal=principal_from(metadata, trust_forwarded=self._trust_forwarded),
            method=method.lstrip("/").replace("/", "."),
            request_id=metadata.get("x-request-id", ""),
        )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, ctx),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._server_stream(handler.unary_stream, ctx),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _fail(
        self, context: grpc.aio.ServicerContext[Any, Any], ctx: CallContext, exc: Exception
    ) -> None:
        if isinstance(exc, DomainError):
            status = api_errors.to_status(exc)
            log.info("rpc refused", method=ctx.method, reason=exc.reason, message=exc.message)
        else:
            log.exception("rpc failed", method=ctx.method, request_id=ctx.request_id)
            status = api_errors.internal_status(ctx.request_id)
        await context.abort_with_status(api_errors.to_grpc(status))

    def _unary(self, inner: Any, ctx: CallContext) -> Any:
        async def behavior(request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = _current.set(ctx)
            started = time.perf_counter()
            try:
                validate(request)
                return await inner(request, context)
            except Exception as exc:
                if isinstance(exc, (grpc.aio.AbortError, grpc.RpcError)):
                    raise
                await self._fail(context, ctx, exc)
            finally:
                _current.reset(token)
                log.debug("rpc", method=ctx.method, ms=round((time.perf_counter() - started) * 1000, 2))

        return behavior

    def _server_stream(self, inner: Any, ctx: CallContext) -> Any:
        async def behavior(
            request: Message, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            token = _current.set(ctx)
            try:
                validate(request)
                async for item in inner(request, context):
                    yield item
            except Exception as exc:
                if isinstance(exc, (grpc.aio.AbortError, grpc.RpcError)):
                    raise
                await self._fail(context, ctx, exc)
            finally:
                _current.reset(token)

        return behavior
