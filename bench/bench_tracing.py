"""What the tracing interceptor costs a trivial unary RPC (in-process gRPC server, loopback).

Run: ``.venv/bin/python bench/bench_tracing.py [--calls 3000] [--rounds 5]``. One process serves
``Empty -> Empty`` behind the real CallInterceptor, with:

* ``none``: no tracing interceptor (the server before observability);
* ``disabled``: the tracing interceptor with no exporter configured (the default), calls
  without ``x-request-id`` (the handler is passed through);
* ``disabled+rid``: the same, calls with ``x-request-id`` (wrapped to keep it for the logs);
* ``traces+metrics``: spans recorded by the SDK and batched to an exporter that drops them, and
  the RPC histogram and error counter recorded (what an OTLP or Prometheus setup pays);

and times sequential calls from a client in the same process. Configurations alternate within
each round so a neighbour's load hits all alike; the figure is the median over rounds of each
round's mean, plus p50/p99 over all calls. It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import empty_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from seedline_server import logs
from seedline_server.api.interceptor import CallInterceptor
from seedline_server.observability.instruments import Telemetry
from seedline_server.observability.rpc import TracingInterceptor


class Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _ok(request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
    return empty_pb2.Empty()


def _server(tracing: TracingInterceptor | None) -> tuple[grpc.aio.Server, int]:
    interceptors: list[Any] = [CallInterceptor(trust_forwarded=False)]
    if tracing is not None:
        interceptors.insert(0, tracing)
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.v1.B",
                {
                    "Ok": grpc.unary_unary_rpc_method_handler(
                        _ok,
                        request_deserializer=empty_pb2.Empty.FromString,
                        response_serializer=empty_pb2.Empty.SerializeToString,
                    )
                },
            )
        ]
    )
    return server, server.add_insecure_port("127.0.0.1:0")


async def _time(port: int, calls: int, metadata: tuple[tuple[str, str], ...]) -> list[float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_unary(
            "/bench.v1.B/Ok",
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        for _ in range(200):  # warm up
            await stub(empty_pb2.Empty())
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await stub(empty_pb2.Empty(), metadata=metadata)
            out.append(time.perf_counter() - t0)
        return out


async def main(calls: int, rounds: int) -> None:
    logs.configure("json", "warning")  # the call interceptor's per-call debug line would dominate
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    enabled = Telemetry(tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()]))
    rid = (("x-request-id", "bench"),)
    configs = {
        "none": (None, rid),
        "disabled": (TracingInterceptor(Telemetry()), ()),
        "disabled+rid": (TracingInterceptor(Telemetry()), rid),
        "traces+metrics": (TracingInterceptor(enabled), rid),
    }
    servers = {}
    for name, (tracing, metadata) in configs.items():
        server, port = _server(tracing)
        await server.start()
        servers[name] = (server, port, metadata)
    means: dict[str, list[float]] = {n: [] for n in configs}
    every: dict[str, list[float]] = {n: [] for n in configs}
    for _ in range(rounds):
        for name, (_srv, port, metadata) in servers.items():
            samples = await _time(port, calls, metadata)
            means[name].append(statistics.fmean(samples))
            every[name].extend(samples)
    for server, _port, _metadata in servers.values():
        await server.stop(0)
    tracer_provider.shutdown()
    base = statistics.median(means["none"])
    print(f"{calls} sequential unary calls x {rounds} rounds, in-process client and server")
    print(f"{'config':<16}{'mean µs':>10}{'p50 µs':>10}{'p99 µs':>10}{'vs none':>10}")
    for name in configs:
        mean = statistics.median(means[name])
        q = statistics.quantiles(every[name], n=100)
        change = (mean / base - 1) * 100
        print(f"{name:<16}{mean * 1e6:>10.0f}{q[49] * 1e6:>10.0f}{q[98] * 1e6:>10.0f}{change:>+9.1f}%")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
