"""Outbound HTTP for every connector: one client, one way to classify failures, one exchange log.

Each call returns (or raises with) an :class:`Exchange`, the integration-log record of SOP-API-001
§10.1.2: direction, endpoint, request id, payload size and SHA-256, summary, status, response
time, retry count and error detail. Payloads themselves are never kept, and the endpoint is the
path without the query string, so no credential or query secret reaches the log.

Failures are sorted once, here (:class:`RemoteError`):

- ``retry``: the remote may succeed later: 429 (with its Retry-After), 408, 5xx, connection
  errors and timeouts;
- ``permanent``: the remote refused the request itself (other 4xx): retrying cannot help;
- ``maybe_sent`` says whether the remote may have applied the request anyway (a timeout after
  the request was written, a 5xx): the next attempt must look before it resends.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from ulid import ULID

from seedline_server.observability import hooks

__all__ = ["Exchange", "Http", "RemoteError", "Response", "retry_after_seconds"]


@dataclass
class Exchange:
    """One request and its answer, as the integration log records it."""

    direction: str
    endpoint: str
    request_id: str
    payload_size: int
    payload_sha256: str
    summary: str
    status: str  # SUCCESS | ERROR | TIMEOUT | RETRY
    exchange_time: datetime
    response_ms: float | None
    retry_count: int = 0
    error_detail: str = ""
    sync_run_id: str | None = None


class RemoteError(Exception):
    """A failed exchange, classified for the outbox."""

    def __init__(
        self,
        detail: str,
        *,
        retryable: bool,
        maybe_sent: bool,
        status: int | None = None,
        retry_after: float | None = None,
        exchange: Exchange | None = None,
        counts_for_breaker: bool = True,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.maybe_sent = maybe_sent
        self.status = status
        self.retry_after = retry_after
        self.exchange = exchange
        # A 429 or a refusal of our request says nothing about the remote's health.
        self.counts_for_breaker = counts_for_breaker


@dataclass
class Response:
    """A successful answer."""

    status: int
    body: Any
    headers: httpx.Headers
    exchange: Exchange
    extra: dict[str, Any] = field(default_factory=dict)


def retry_after_seconds(value: str | None, *, cap: float = 3600.0) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, min(seconds, cap))


def _tls(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class Http:
    """An httpx client with the project's TLS trust, timeouts and exchange records."""

    def __init__(
        self, *, ca_file: Path | None = None, timeout: float = 30.0, max_connections: int = 100
    ) -> None:
        self._client = httpx.AsyncClient(
            verify=_tls(ca_file),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()

    async def call(
        self,
        method: str,
        url: str,
        *,
        content: bytes = b"",
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        summary: str,
        request_id: str | None = None,
        retry_count: int = 0,
        sync_run_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - an HTTP deadline, passed to httpx
        log: list[Exchange] | None = None,
    ) -> Response:
        """Send one request; return its answer or raise :class:`RemoteError` with the exchange.

        Args:
            method: HTTP method.
            url: Absolute URL (its query string is not logged).
            content: The request body bytes (logged as size and SHA-256 only).
            headers: Extra headers.
            params: Query parameters (not logged).
            auth: HTTP auth.
            summary: One line for the log ("register plant 1A4...").
            request_id: Correlation id sent as ``X-Request-Id``; a ULID when not given.
            retry_count: Earlier failed attempts of the same exchange.
            sync_run_id: The sync run the exchange belongs to, if any.
            timeout: Overrides the client's timeout for this call.
            log: Where to append the exchange, whether it succeeded or not.

        """
        try:
            answer = await self._exchange(
                method,
                url,
                content=content,
                headers=headers,
                params=params,
                auth=auth,
                summary=summary,
                request_id=request_id,
                retry_count=retry_count,
                sync_run_id=sync_run_id,
                timeout=timeout,
            )
        except RemoteError as exc:
            if log is not None and exc.exchange is not None:
                log.append(exc.exchange)
            raise
        if log is not None:
            log.append(answer.exchange)
        return answer

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        content: bytes,
        headers: dict[str, str] | None,
        params: dict[str, str] | None,
        auth: httpx.Auth | tuple[str, str] | None,
        summary: str,
        request_id: str | None,
        retry_count: int,
        sync_run_id: str | None,
        timeout: float | None,  # noqa: ASYNC109 - an HTTP deadline, passed to httpx
    ) -> Response:
        rid = request_id or str(ULID())
        started = datetime.now(UTC)
        path = urlsplit(url).path or "/"
        exchange = Exchange(
            direction="OUTBOUND",
            endpoint=f"{method} {path}",
            request_id=rid,
            payload_size=len(content),
            payload_sha256=_digest(content),
            summary=summary,
            status="SUCCESS",
            exchange_time=started,
            response_ms=None,
            retry_count=retry_count,
            sync_run_id=sync_run_id,
        )
        send_headers = {"X-Request-Id": rid, **(headers or {})}
        hooks.inject(send_headers)  # traceparent: the remote's trace continues ours
        if content and "Content-Type" not in send_headers:
            send_headers["Content-Type"] = "application/json"
        t0 = time.perf_counter()
        try:
            answer = await self._client.request(
                method,
                url,
                content=content or None,
                headers=send_headers,
                params=params,
                auth=auth,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            exchange.status = "TIMEOUT"
            exchange.error_detail = f"no answer within the deadline ({type(exc).__name__})"
            sent = not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))
            raise RemoteError(
                exchange.error_detail, retryable=True, maybe_sent=sent, exchange=exchange
            ) from exc
        except httpx.TransportError as exc:
            exchange.status = "RETRY"
            exchange.response_ms = (time.perf_counter() - t0) * 1000
            exchange.error_detail = f"{type(exc).__name__}: {exc}"[:500]
            # A refused or reset connection before the request went out changed nothing; one cut
            # after it was written (RemoteProtocolError, ReadError) may have been applied.
            sent = not isinstance(exc, (httpx.ConnectError,))
            raise RemoteError(
                exchange.error_detail, retryable=True, maybe_sent=sent, exchange=exchange
            ) from exc
        exchange.response_ms = (time.perf_counter() - t0) * 1000
        body: Any
        try:
            body = answer.json() if answer.content else None
        except ValueError:
            body = answer.text
        if answer.is_success:
            return Response(answer.status_code, body, answer.headers, exchange)
        detail = f"{answer.status_code} from {urlsplit(url).hostname}: {_short(body)}"
        exchange.error_detail = detail
        code = answer.status_code
        if code == 429 or code == 408 or code >= 500:
            exchange.status = "RETRY"
            raise RemoteError(
                detail,
                retryable=True,
                maybe_sent=code >= 500,
                status=code,
                retry_after=retry_after_seconds(answer.headers.get("Retry-After")),
                exchange=exchange,
                counts_for_breaker=code >= 500,
            )
        exchange.status = "ERROR"
        raise RemoteError(
            detail,
            retryable=False,
            maybe_sent=False,
            status=code,
            exchange=exchange,
            counts_for_breaker=False,
        )


def _short(body: Any, limit: int = 300) -> str:
    if isinstance(body, dict):
        for key in ("Message", "message", "error", "Error", "detail"):
            if key in body:
                return str(body[key])[:limit]
    return str(body)[:limit]
