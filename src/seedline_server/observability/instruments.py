"""The process's tracer and metric instruments, in one object every hook reads.

:func:`current` returns the active :class:`Telemetry`. Until :func:`install` is called (by
:func:`seedline_server.observability.setup.configure`, or by a test with in-memory providers) it
is the disabled one: hooks check :attr:`Telemetry.enabled` / :attr:`Telemetry.tracing` and take
no-op paths, so a process without exporters pays (almost) nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider, NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider, Tracer, TracerProvider

__all__ = ["SCOPE", "Telemetry", "current", "install"]

SCOPE = "seedline"
# Seconds: sub-millisecond unary calls up to long server streams.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass
class Telemetry:
    """A tracer and every counter and histogram Seedline records.

    Args:
        tracer_provider: Where spans go; ``None`` = tracing off (non-recording spans).
        meter_provider: Where metric points go; ``None`` = metrics off.

    """

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    tracer: Tracer = field(init=False)
    meter: Meter = field(init=False)

    def __post_init__(self) -> None:
        self.tracer = (self.tracer_provider or NoOpTracerProvider()).get_tracer(SCOPE)
        self.meter = (self.meter_provider or NoOpMeterProvider()).get_meter(SCOPE)
        m = self.meter
        self.rpc_duration: Histogram = m.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of server RPCs (unary: the call; streams: the whole stream).",
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
        )
        self.rpc_errors: Counter = m.create_counter(
            "seedline.rpc.errors", unit="{call}", description="RPCs that ended with a status other than OK."
        )
        self.auth_failures: Counter = m.create_counter(
            "seedline.auth.failures",
            unit="{call}",
            description="Calls refused as UNAUTHENTICATED (missing or invalid credentials).",
        )
        self.rate_limited: Counter = m.create_counter(
            "seedline.rate_limit.rejections",
            unit="{call}",
            description="Calls refused by the per-principal rate limit of the direct listener.",
        )
        self.readings: Counter = m.create_counter(
            "seedline.telemetry.readings",
            unit="{reading}",
            description="Sensor readings committed by the ingest pipeline.",
        )
        self.mqtt_messages: Counter = m.create_counter(
            "seedline.mqtt.messages",
            unit="{message}",
            description="MQTT messages the bridge handed to the pipeline in committed batches.",
        )
        self.deliveries: Counter = m.create_counter(
            "seedline.outbox.deliveries",
            unit="{delivery}",
            description="Outbox delivery attempts by outcome (delivered, retry, dead_letter).",
        )

    @property
    def tracing(self) -> bool:
        """True when spans are recorded and exported."""
        return self.tracer_provider is not None

    @property
    def metering(self) -> bool:
        """True when metric points are recorded."""
        return self.meter_provider is not None

    @property
    def enabled(self) -> bool:
        """True when traces or metrics are on."""
        return self.tracing or self.metering


_DISABLED = Telemetry()
_current: Telemetry = _DISABLED


def current() -> Telemetry:
    """The active telemetry (disabled until :func:`install`)."""
    return _current


def install(telemetry: Telemetry | None) -> Telemetry:
    """Make ``telemetry`` the active one (``None`` = disabled); returns the previous one.

    Does not touch OpenTelemetry's global providers; :func:`setup.configure` sets those too.
    """
    global _current
    previous = _current
    _current = telemetry if telemetry is not None else _DISABLED
    return previous
