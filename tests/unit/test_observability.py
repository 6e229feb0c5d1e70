"""The observability pieces on a real in-process gRPC server, with in-memory span and metric readers.

The tracing interceptor sits in front of the real call interceptor, as in server.py; the handlers
behind them answer OK, raise a domain error, crash, or stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
import structlog
from google.protobuf import empty_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from seedline_server import logs
from seedline_server.api.interceptor import CallInterceptor
from seedline_server.api.ratelimit import TokenBuckets
from seedline_server.domain.errors import CredentialsInvalid, NotFound
from seedline_server.observability import hooks, instruments
from seedline_server.observability.rpc import TracingInterceptor, note_refusal

SERVICE = "test.v1.Probe"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@dataclass
class Recorded:
    telemetry: instruments.Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        found = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry = instruments.Telemetry(tracer_provider, MeterProvider(metric_readers=[reader]))
    previous = instruments.install(telemetry)
    try:
        yield Recorded(telemetry, spans, reader)
    finally:
        instruments.install(previous)


async def _ok(request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
    return empty_pb2.Empty()


async def _missing(request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
    raise NotFound("thing", "things/1")


async def _boom(request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
    raise RuntimeError("bug")


async def _stream(request: empty_pb2.Empty, context: Any) -> AsyncIterator[empty_pb2.Empty]:
    for _ in range(3):
        yield empty_pb2.Empty()


def _handlers() -> grpc.GenericRpcHandler:
    codec = {
        "request_deserializer": empty_pb2.Empty.FromString,
        "response_serializer": empty_pb2.Empty.SerializeToString,
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Ok": grpc.unary_unary_rpc_method_handler(_ok, **codec),
            "Missing": grpc.unary_unary_rpc_method_handler(_missing, **codec),
            "Boom": grpc.unary_unary_rpc_method_handler(_boom, **codec),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream, **codec),
        },
    )


class Probe:
    """A server with both interceptors, and a channel to it."""

    def __init__(self, telemetry: instruments.Telemetry | None, limits: TokenBuckets | None = None) -> None:
        self.server = grpc.aio.server(
            interceptors=[
                TracingInterceptor(telemetry),
                CallInterceptor(trust_forwarded=False, limits=limits),
            ]
        )
        self.server.add_generic_rpc_handlers([_handlers()])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> Probe:
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.channel is not None
        await self.channel.close()
        await self.server.stop(0)

    async def call(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
        assert self.channel is not None
        stub = self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        return await stub(empty_pb2.Empty(), metadata=metadata, timeout=10)

    async def stream(self) -> list[Any]:
        assert self.channel is not None
        stub = self.channel.unary_stream(
            f"/{SERVICE}/Stream",
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        return [item async for item in stub(empty_pb2.Empty(), timeout=10)]


async def test_a_call_makes_a_server_span_with_method_request_id_principal_and_status(
    recorded: Recorded,
) -> None:
    async with Probe(recorded.telemetry) as probe:
        await probe.call("Ok", (("x-request-id", "req-123"),))
    (span,) = recorded.finished(f"{SERVICE}/Ok")
    assert span.kind == SpanKind.SERVER
    attrs = dict(span.attributes or {})
    assert attrs["rpc.system"] == "grpc"
    assert attrs["rpc.service"] == SERVICE
    assert attrs["rpc.method"] == "Ok"
    assert attrs["seedline.request_id"] == "req-123"
    assert attrs["enduser.id"] == "anonymous"
    assert attrs["rpc.grpc.status_code"] == "OK"
    assert span.parent is None  # no traceparent: a new trace


async def test_the_callers_traceparent_is_continued(recorded: Recorded) -> None:
    async with Probe(recorded.telemetry) as probe:
        await probe.call("Ok", (("traceparent", PARENT),))
    (span,) = recorded.finished(f"{SERVICE}/Ok")
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"


async def test_latency_histogram_and_error_counts_by_method_and_code(recorded: Recorded) -> None:
    async with Probe(recorded.telemetry) as probe:
        await probe.call("Ok")
        await probe.call("Ok")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await probe.call("Missing")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as boom:
            await probe.call("Boom")
        assert boom.value.code() == grpc.StatusCode.INTERNAL
    durations = {
        (p.attributes["rpc.method"], p.attributes["rpc.grpc.status_code"]): p
        for p in recorded.points("rpc.server.call.duration")
    }
    ok = durations[(f"{SERVICE}/Ok", "OK")]
    assert ok.count == 2
    assert 0 < ok.sum < 5
    assert ok.explicit_bounds[0] == instruments.LATENCY_BUCKETS[0]  # seconds, not milliseconds
    assert durations[(f"{SERVICE}/Missing", "NOT_FOUND")].count == 1
    errors = {
        (p.attributes["rpc.method"], p.attributes["rpc.grpc.status_code"]): p.value
        for p in recorded.points("seedline.rpc.errors")
    }
    assert errors == {(f"{SERVICE}/Missing", "NOT_FOUND"): 1, (f"{SERVICE}/Boom", "INTERNAL"): 1}
    (failed,) = recorded.finished(f"{SERVICE}/Missing")
    assert failed.status.status_code.name == "ERROR"
    assert dict(failed.attributes or {})["rpc.grpc.status_code"] == "NOT_FOUND"


async def test_a_server_stream_is_one_span_for_the_whole_stream(recorded: Recorded) -> None:
    async with Probe(recorded.telemetry) as probe:
        assert len(await probe.stream()) == 3
    (span,) = recorded.finished(f"{SERVICE}/Stream")
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == "OK"
    assert [p.count for p in recorded.points("rpc.server.call.duration")] == [1]


async def test_rate_limit_rejections_are_counted(recorded: Recorded) -> None:
    limits = TokenBuckets(capacity=1, rate=0.001)
    async with Probe(recorded.telemetry, limits) as probe:
        await probe.call("Ok")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await probe.call("Ok")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    (point,) = recorded.points("seedline.rate_limit.rejections")
    assert point.value == 1
    assert point.attributes["rpc.method"] == f"{SERVICE}.Ok"


def test_authentication_failures_are_counted_by_reason(recorded: Recorded) -> None:
    note_refusal(CredentialsInvalid("bad token"), "x.v1.S.M")
    note_refusal(NotFound("thing", "things/1"), "x.v1.S.M")  # not a refusal of the caller
    (point,) = recorded.points("seedline.auth.failures")
    assert point.value == 1
    assert dict(point.attributes) == {"rpc.method": "x.v1.S.M", "reason": CredentialsInvalid.reason}
    assert recorded.points("seedline.rate_limit.rejections") == []


async def test_disabled_telemetry_leaves_the_handler_alone() -> None:
    disabled = instruments.Telemetry()
    assert not disabled.enabled
    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(_ok)

    async def resolve(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return handler

    details = cast(grpc.HandlerCallDetails, SimpleNamespace(method=f"/{SERVICE}/Ok", invocation_metadata=()))
    assert await TracingInterceptor(disabled).intercept_service(resolve, details) is handler
    async with Probe(disabled) as probe:
        assert await probe.call("Ok") == empty_pb2.Empty()
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await probe.call("Missing")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_hooks_make_one_span_per_write_group_and_count_readings(recorded: Recorded) -> None:
    with hooks.write_group(batches=3, readings=1200):
        hooks.readings_committed(1200)
    (span,) = recorded.finished("telemetry.commit")
    assert dict(span.attributes or {}) == {
        "seedline.telemetry.batches": 3,
        "seedline.telemetry.readings": 1200,
    }
    (point,) = recorded.points("seedline.telemetry.readings")
    assert point.value == 1200


def test_mqtt_batch_span_and_message_count(recorded: Recorded) -> None:
    with hooks.mqtt_batch(7):
        pass
    (span,) = recorded.finished("mqtt.batch")
    assert dict(span.attributes or {})["messaging.batch.message_count"] == 7
    (point,) = recorded.points("seedline.mqtt.messages")
    assert point.value == 7
    with pytest.raises(RuntimeError), hooks.mqtt_batch(5):
        raise RuntimeError("not committed")
    (point,) = recorded.points("seedline.mqtt.messages")
    assert point.value == 7  # a failed batch is not counted


def test_outbox_delivery_span_carries_its_traceparent_outbound(recorded: Recorded) -> None:
    headers: dict[str, str] = {}
    with hooks.delivery("01JDDELIVERY", "01JDINTEGRATION", "lot.updated", 2):
        hooks.inject(headers)
        hooks.delivery_outcome("retry", "01JDINTEGRATION")
    (span,) = recorded.finished("outbox.deliver lot.updated")
    assert headers["traceparent"].startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")
    attrs = dict(span.attributes or {})
    assert attrs["seedline.delivery.attempt"] == 2
    assert attrs["seedline.delivery.outcome"] == "retry"
    assert span.status.status_code.name == "ERROR"
    (point,) = recorded.points("seedline.outbox.deliveries")
    assert dict(point.attributes) == {"outcome": "retry", "seedline.integration.id": "01JDINTEGRATION"}


def test_no_span_no_traceparent() -> None:
    headers: dict[str, str] = {}
    hooks.inject(headers)
    assert "traceparent" not in headers


def test_log_lines_carry_trace_span_and_request_id(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    from seedline_server.observability import rpc

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs.configure("json", "info")
    try:
        token = rpc._request_id.set("req-9")
        try:
            with recorded.telemetry.tracer.start_as_current_span("work") as span:
                structlog.get_logger("t").info("inside")
        finally:
            rpc._request_id.reset(token)
        structlog.get_logger("t").info("outside")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    inside = next(line for line in lines if line["event"] == "inside")
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x")
    assert inside["request_id"] == "req-9"
    outside = next(line for line in lines if line["event"] == "outside")
    assert "trace_id" not in outside
    assert "request_id" not in outside


def test_a_callers_sampled_flag_does_not_force_tracing() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from seedline_server.observability.setup import sampler

    def decision(ratio: float, flags: int, remote: bool) -> bool:
        parent = SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0xB7AD6B7169203331,
            is_remote=remote,
            trace_flags=TraceFlags(flags),
        )
        context = trace.set_span_in_context(NonRecordingSpan(parent))
        result = sampler(ratio).should_sample(context, parent.trace_id, "rpc")
        return bool(result.decision.is_sampled())

    assert decision(1.0, TraceFlags.SAMPLED, remote=True)
    assert not decision(0.0, TraceFlags.SAMPLED, remote=True)  # the caller asked; the ratio says no
    assert not decision(1.0, TraceFlags.DEFAULT, remote=True)  # a caller's "not sampled" is kept
    assert decision(0.0, TraceFlags.SAMPLED, remote=False)  # our own sampled parent is followed
