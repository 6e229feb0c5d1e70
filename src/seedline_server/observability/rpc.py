"""Tracing and metrics for every RPC: a grpc.aio server interceptor of its own.

It sits outside :class:`~seedline_server.api.interceptor.CallInterceptor` (first in the server's
interceptor list), so its span covers authentication, validation and the handler, and the status
it records is the one the caller sees. For each call it:

- continues the caller's trace from the ``traceparent`` metadata (W3C trace context; Envoy
  forwards the header on the REST path) and opens a SERVER span named ``pkg.Service/Method`` with
  ``rpc.system``, ``rpc.service``, ``rpc.method``, ``seedline.request_id`` and, once the call
  interceptor knows it, ``enduser.id`` (the principal; see :func:`note_principal`);
- records ``rpc.server.call.duration`` (seconds) and, for a status other than OK,
  ``seedline.rpc.errors``, both by ``rpc.method`` and ``rpc.grpc.status_code`` (the code's name);
- keeps the call's request id where the log processor finds it (:mod:`.logcontext`).

With telemetry disabled a call without ``x-request-id`` gets the server's handler unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar, Token
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from seedline_server.domain.errors import CredentialsInvalid, CredentialsMissing, DomainError, RateLimited
from seedline_server.observability.instruments import Telemetry, current

__all__ = ["TracingInterceptor", "note_principal", "note_refusal", "request_id"]

_request_id: ContextVar[str] = ContextVar("seedline_request_id", default="")
_SKIPPED = ("/grpc.health.", "/grpc.reflection.")


def request_id() -> str:
    """The ``x-request-id`` of the RPC being served ("" outside a call or when none was sent)."""
    return _request_id.get()


def note_principal(name: str) -> None:
    """Record the authenticated principal on the current RPC's span (no-op when not recording)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("enduser.id", name)


def note_refusal(exc: DomainError, method: str) -> None:
    """Count an authentication failure or a rate-limit rejection (the SOP's APIMetrics)."""
    t = current()
    if not t.metering:
        return
    if isinstance(exc, (CredentialsInvalid, CredentialsMissing)):
        t.auth_failures.add(1, {"rpc.method": method, "reason": exc.reason})
    elif isinstance(exc, RateLimited):
        t.rate_limited.add(1, {"rpc.method": method})


def _code_of(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if exc is None:
        return "OK"
    if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):  # the client went away
        return "CANCELLED"
    return "UNKNOWN"


class _Call:
    """One RPC's span and measurements (shared by the unary and streaming wrappers)."""

    __slots__ = ("attrs", "metadata", "method", "rid", "started", "telemetry")

    def __init__(self, telemetry: Telemetry, method: str, metadata: dict[str, str]) -> None:
        self.telemetry = telemetry
        self.method = method.lstrip("/")  # pkg.Service/Method: the span's name and metric label
        service, _, short = self.method.partition("/")
        self.metadata = metadata
        self.rid = metadata.get("x-request-id", "")
        self.attrs: dict[str, str] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": short,
        }
        if self.rid:
            self.attrs["seedline.request_id"] = self.rid
        self.started = 0.0

    def begin(self) -> tuple[trace.Span | None, Token[Context] | None]:
        """Start the span and make it current (attach/detach by hand: cheaper than a context manager).

        No span at all when tracing is off and the caller sent no ``traceparent``; with one, a
        non-recording span carries the caller's context to logs and outbound calls.
        """
        self.started = time.perf_counter()
        t = self.telemetry
        traced = "traceparent" in self.metadata
        if not t.tracing and not traced:
            return None, None
        parent = propagate.extract(self.metadata) if traced else None
        span = t.tracer.start_span(self.method, context=parent, kind=SpanKind.SERVER, attributes=self.attrs)
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    def end(self, span: trace.Span | None, token: Token[Context] | None, code: str) -> None:
        """Record the status on the span and the metrics; end and detach the span."""
        t = self.telemetry
        if t.metering:
            labels = {"rpc.method": self.method, "rpc.grpc.status_code": code}
            t.rpc_duration.record(time.perf_counter() - self.started, labels)
            if code != "OK":
                t.rpc_errors.add(1, labels)
        if span is None:
            return
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code)
            if code != "OK":
                span.set_status(Status(StatusCode.ERROR, code))
        span.end()
        if token is not None:
            otel_context.detach(token)


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Spans, latency and error metrics for unary, server-streaming and bidi RPCs.

    Args:
        telemetry: The instruments to use; default: the active ones at each call
            (:func:`~seedline_server.observability.instruments.current`).

    """

    def __init__(self, telemetry: Telemetry | None = None) -> None:
        self._telemetry = telemetry

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap the handler the server resolved (health and reflection are left alone)."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_SKIPPED):
            return handler
        telemetry = self._telemetry or current()
        metadata = {k: v for k, v in handler_call_details.invocation_metadata or () if isinstance(v, str)}
        if not telemetry.enabled and "x-request-id" not in metadata and "traceparent" not in metadata:
            return handler
        call = _Call(telemetry, method, metadata)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, call),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, call),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, call),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    @staticmethod
    def _unary(inner: Any, call: _Call) -> Any:
        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            rid = _request_id.set(call.rid)
            span, token = call.begin()
            failure: BaseException | None = None
            try:
                return await inner(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                call.end(span, token, _code_of(context, failure))
                _request_id.reset(rid)

        return behavior

    @staticmethod
    def _stream(inner: Any, call: _Call) -> Any:
        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            rid = _request_id.set(call.rid)
            span, token = call.begin()
            failure: BaseException | None = None
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                failure = exc
                raise
            finally:
                call.end(span, token, _code_of(context, failure))
                _request_id.reset(rid)

        return behavior
