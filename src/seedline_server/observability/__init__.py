"""Observability: OpenTelemetry traces and metrics, their exporters, trace ids in the logs.

- :mod:`.instruments`: the tracer and metric instruments every hook reads (disabled by default);
- :mod:`.setup`: providers and exporters from the settings (OTLP, Prometheus, console);
- :mod:`.rpc`: the server interceptor (a span and metrics per RPC);
- :mod:`.hooks`: one-line hooks for the database, the outbox, telemetry and outbound HTTP;
- :mod:`.outbox_gauges`: outbox lag, dead letters and circuit breakers read from the database;
- :mod:`.logcontext`: the structlog processor adding trace_id, span_id and request_id.

See docs/observability.md.
"""
