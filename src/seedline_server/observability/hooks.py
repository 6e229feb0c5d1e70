"""One-line hooks for the code paths outside the RPC interceptor.

Each returns at once when its signal is off (no span object, no attribute dictionaries), so the
hot paths (the telemetry write loop, the MQTT bridge) pay a function call and a branch.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from seedline_server.observability.instruments import current

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "delivery",
    "delivery_outcome",
    "inject",
    "instrument_engine",
    "mqtt_batch",
    "readings_committed",
    "write_group",
]


def instrument_engine(engine: AsyncEngine) -> None:
    """Trace the engine's statements (one CLIENT span each) when tracing is on."""
    t = current()
    if not t.tracing:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    connections = t.meter.create_up_down_counter(
        "db.client.connections.usage", unit="{connection}", description="Connections in use / idle."
    )
    EngineTracer(t.tracer, engine.sync_engine, connections)  # type: ignore[no-untyped-call]


def inject(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) of the current span to outbound headers."""
    propagate.inject(headers)


@contextmanager
def _span(name: str, kind: SpanKind, attributes: dict[str, Any]) -> Iterator[Any]:
    t = current()
    with t.tracer.start_as_current_span(name, kind=kind, attributes=attributes) as span:
        yield span


@contextmanager
def delivery(delivery_id: str, integration_id: str, event_type: str, attempt: int) -> Iterator[None]:
    """A span around one outbox delivery attempt (the connector's HTTP calls are its children)."""
    if not current().tracing:
        yield
        return
    attributes = {
        "seedline.delivery.id": delivery_id,
        "seedline.integration.id": integration_id,
        "seedline.event_type": event_type,
        "seedline.delivery.attempt": attempt,
    }
    with _span(f"outbox.deliver {event_type}", SpanKind.PRODUCER, attributes):
        yield


def delivery_outcome(outcome: str, integration_id: str) -> None:
    """Count a delivery attempt's outcome (``delivered``, ``retry``, ``dead_letter``)."""
    t = current()
    if t.metering:
        t.deliveries.add(1, {"outcome": outcome, "seedline.integration.id": integration_id})
    if t.tracing:
        from opentelemetry import trace

        span = trace.get_current_span()
        span.set_attribute("seedline.delivery.outcome", outcome)
        if outcome != "delivered":
            span.set_status(Status(StatusCode.ERROR, outcome))


@contextmanager
def write_group(batches: int, readings: int) -> Iterator[None]:
    """A span around one commit of the ingest pipeline (a group of batches, not each reading)."""
    if not current().tracing:
        yield
        return
    attributes = {"seedline.telemetry.batches": batches, "seedline.telemetry.readings": readings}
    with _span("telemetry.commit", SpanKind.INTERNAL, attributes):
        yield


def readings_committed(readings: int) -> None:
    """Count readings the pipeline committed."""
    t = current()
    if t.metering:
        t.readings.add(readings)


@contextmanager
def mqtt_batch(messages: int) -> Iterator[None]:
    """A span around one MQTT batch handed to the pipeline; counts its messages once committed."""
    t = current()
    if not t.enabled:
        yield
        return
    if t.tracing:
        with _span("mqtt.batch", SpanKind.CONSUMER, {"messaging.batch.message_count": messages}):
            yield
    else:
        yield
    if t.metering:
        t.mqtt_messages.add(messages)
