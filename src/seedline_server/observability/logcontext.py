"""A structlog processor that puts the current trace, span and request id on every log line."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from opentelemetry import trace

from seedline_server.observability.rpc import request_id

__all__ = ["add_trace_context"]


def add_trace_context(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add ``trace_id`` and ``span_id`` (hex, as OTLP backends show them) and ``request_id``.

    Only when there is something to add: a valid span context (a recording span, or a caller's
    ``traceparent`` continued without an exporter) and an ``x-request-id`` on the RPC. Keys the
    call already set are kept.
    """
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    rid = request_id()
    if rid:
        event_dict.setdefault("request_id", rid)
    return event_dict
