"""A tiny real grpc server for the client's unit tests: scripted replies per method."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# A handler gets the raw request bytes and the context; it returns response bytes or aborts.
Handler = Callable[[bytes, grpc.ServicerContext], bytes]


@dataclass
class Seen:
    """One call the server received."""

    method: str
    request: bytes
    metadata: dict[str, str]


@dataclass
class FakeServer:
    """Serves whatever handlers a test installs, recording every call."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    calls: list[Seen] = field(default_factory=list)
    target: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, method: str) -> list[Seen]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self.handlers.get(method)
        if handler is None:
            return None
        metadata = {k: v for k, v in handler_call_details.invocation_metadata if isinstance(v, str)}

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.calls.append(Seen(method, request, metadata))
            return handler(request, context)

        return grpc.unary_unary_rpc_method_handler(unary)


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, fake: FakeServer) -> None:
        self._fake = fake

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self._fake.service(handler_call_details)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """A running fake server on a free loopback port, stopped after the test."""
    state = FakeServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_Generic(state),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    state.target = f"127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.stop(grace=None).wait()


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    retry_after: float | None = None,
    extra: tuple[Any, ...] = (),
) -> None:
    """Fail the call the way the Seedline server does: a google.rpc.Status in the trailer."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason:
        status.details.append(_pack(error_details_pb2.ErrorInfo(reason=reason, domain="seedline.dev")))
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(round(retry_after * 1000))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    for detail in extra:
        status.details.append(_pack(detail))
    context.abort_with_status(rpc_status.to_status(status))


def failing_then(
    failures: int, fail: Callable[[grpc.ServicerContext], None], reply: bytes
) -> tuple[Handler, list[int]]:
    """A handler that fails ``failures`` times, then answers ``reply``; and its call counter."""
    count = [0]

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        count[0] += 1
        if count[0] <= failures:
            fail(context)
        return reply

    return handler, count
