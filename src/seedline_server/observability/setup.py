"""Providers and exporters from the settings, once per process.

- OTLP over HTTP/protobuf (traces and metrics) when ``SEEDLINE_OTEL_EXPORTER_OTLP_ENDPOINT`` or the
  standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the base URL, e.g. ``http://collector:4318``;
  ``/v1/traces`` and ``/v1/metrics`` are appended; ``OTEL_EXPORTER_OTLP_HEADERS`` is honoured);
- a Prometheus scrape endpoint (``/metrics``) on ``SEEDLINE_METRICS_HOST:SEEDLINE_METRICS_PORT``
  when the port is not 0;
- spans printed to stdout when ``SEEDLINE_OTEL_CONSOLE`` is true (``seedline dev --trace-console``).

Nothing configured: nothing is installed, and every hook takes its no-op path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from seedline_server.config import Settings
from seedline_server.observability.instruments import Telemetry, install

__all__ = ["Configured", "configure", "otlp_endpoint"]

log = structlog.get_logger("seedline.observability")


@dataclass
class Configured:
    """What :func:`configure` installed (tests and shutdown use it)."""

    telemetry: Telemetry
    metrics_port: int = 0
    closers: list[Any] = field(default_factory=list)

    def shutdown(self) -> None:
        """Flush and stop exporters and the scrape endpoint (also done at interpreter exit)."""
        for close in reversed(self.closers):
            close()
        self.closers.clear()


def sampler(ratio: float) -> ParentBased:
    """New traces and callers' sampled traces at ``ratio``; a caller's "not sampled" respected.

    A caller's "sampled" flag does not buy full tracing (and its cost): remote parents are
    sampled at the same ratio, by trace id, so a trace is kept or dropped as a whole. Local
    parents are followed as they are.
    """
    by_id = TraceIdRatioBased(ratio)
    return ParentBased(by_id, remote_parent_sampled=by_id)


def otlp_endpoint(settings: Settings) -> str | None:
    """The OTLP/HTTP base URL: Seedline's setting, else the standard environment variable."""
    value = settings.otel_exporter_otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    return value.rstrip("/") or None


def configure(settings: Settings, *, service: str, console: bool | None = None) -> Configured:
    """Install tracer and meter providers with the configured exporters; returns what was installed.

    Args:
        settings: The process's settings.
        service: ``service.name`` of the resource unless ``SEEDLINE_OTEL_SERVICE_NAME`` or the
            standard ``OTEL_SERVICE_NAME`` is set (``seedline-server``, ``seedline-worker``,
            ``seedline-mqtt-bridge``).
        console: Print spans to stdout; default ``settings.otel_console``.

    """
    endpoint = otlp_endpoint(settings)
    console = settings.otel_console if console is None else console
    name = settings.otel_service_name or os.environ.get("OTEL_SERVICE_NAME") or service
    resource = Resource.create({"service.name": name})
    closers: list[Any] = []
    tracer_provider: TracerProvider | None = None
    if endpoint or console:
        tracer_provider = TracerProvider(
            resource=resource, sampler=sampler(settings.otel_traces_sample_ratio)
        )
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
            )
        if console:
            tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
        closers.append(tracer_provider.shutdown)
    readers: list[MetricReader] = []
    metrics_port = 0
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"),
                export_interval_millis=settings.otel_metric_export_interval_seconds * 1000,
            )
        )
    if settings.metrics_port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        readers.append(PrometheusMetricReader())
        try:
            server, thread = start_http_server(settings.metrics_port, addr=settings.metrics_host)
        except OSError as exc:
            raise RuntimeError(
                f"the metrics port {settings.metrics_host}:{settings.metrics_port} cannot be bound: {exc}"
            ) from exc
        metrics_port = int(server.server_address[1])

        def stop_scrape() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        closers.append(stop_scrape)
    meter_provider: MeterProvider | None = None
    if readers:
        meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        metrics.set_meter_provider(meter_provider)
        closers.append(meter_provider.shutdown)
    configured = Configured(Telemetry(tracer_provider, meter_provider), metrics_port, closers)
    install(configured.telemetry)
    if configured.telemetry.enabled:
        log.info(
            "observability",
            otlp=endpoint or "off",
            metrics=f"{settings.metrics_host}:{configured.metrics_port}" if settings.metrics_port else "off",
            console=console,
        )
    return configured
