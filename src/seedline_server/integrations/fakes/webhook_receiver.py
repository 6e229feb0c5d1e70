"""A fake webhook receiver: what a partner's endpoint for Seedline's signed events should do.

``POST /hooks/{anything}`` takes one event of the outbound webhook connector
(:mod:`seedline_server.integrations.webhook`) and, like a careful receiver:

1. verifies ``Seedline-Signature`` over the raw body with the configured secret and timestamp
   tolerance (:func:`seedline_server.integrations.signing.verify`); any failure is 401 and counts
   in ``bad_signatures``;
2. de-duplicates by ``Seedline-Event-Id``: a repeat answers 200 ``{"duplicate": true}``, counts
   in ``duplicates`` and is not stored again;
3. stores ``{id, type, path, headers, body}``. ``ping`` events (connection tests) are counted in
   ``pings`` and not stored.

Admin endpoints: ``GET /_fake/state`` → ``{"events", "duplicates", "bad_signatures", "received",
"pings"}`` (``received`` counts every hook request, whatever its fate), ``POST /_fake/reset``
(forgets events and counters, keeps the configuration), ``POST /_fake/configure`` with
``{"secret": …, "tolerance_s": …}`` (keys given replace those set), and fault injection at
``/_fake/faults`` (:mod:`._faults`; every mode but ``partial``).

Run: ``python -m seedline_server.integrations.fakes.webhook_receiver --host 127.0.0.1 --port 0
--cert C --key K [--config FILE]`` where FILE holds the configuration JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from seedline_server.integrations import signing
from seedline_server.integrations.fakes import _faults

__all__ = ["Receiver", "main", "make_app"]

KEPT_HEADERS = (
    signing.EVENT_ID_HEADER,
    "Seedline-Event-Type",
    signing.SIGNATURE_HEADER,
    "Content-Type",
    "X-Request-Id",
    "traceparent",  # W3C trace context: the receiver's side of Seedline's trace
)
_MODES = _faults.MODES - {"partial"}


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


@dataclass
class Receiver:
    """The receiver's configuration, what it stored and its counters.

    Attributes:
        secret: The shared signing secret; None refuses every event.
        tolerance_s: Largest accepted distance of the signature timestamp from the clock.
        events: Stored events, in arrival order.
        duplicates: Repeats of a stored event id.
        bad_signatures: Events refused for their signature.
        received: Every hook request.
        pings: Accepted ``ping`` events.

    """

    secret: str | None = None
    tolerance_s: int = signing.TOLERANCE_SECONDS
    events: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    bad_signatures: int = 0
    received: int = 0
    pings: int = 0
    faults: _faults.Faults = field(default_factory=lambda: _faults.Faults(modes=_MODES))
    _seen: set[str] = field(default_factory=set)

    def configure(self, config: Any) -> None:
        """Apply ``{"secret": str | null, "tolerance_s": int}`` (keys absent stay as they are).

        Raises:
            ValueError: unknown keys or wrong types.

        """
        if not isinstance(config, dict):
            raise ValueError("the configuration must be a JSON object")
        unknown = set(config) - {"secret", "tolerance_s"}
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        secret = config.get("secret", self.secret)
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise ValueError("secret must be a non-empty string or null")
        tolerance = config.get("tolerance_s", self.tolerance_s)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
            raise ValueError("tolerance_s must be a non-negative integer")
        self.secret, self.tolerance_s = secret, tolerance

    def reset(self) -> None:
        """Forget events, counters and fault rules; keep the configuration."""
        self.events.clear()
        self._seen.clear()
        self.duplicates = self.bad_signatures = self.received = self.pings = 0
        self.faults.reset()

    def state(self) -> dict[str, Any]:
        """What ``GET /_fake/state`` answers."""
        return {
            "events": self.events,
            "duplicates": self.duplicates,
            "bad_signatures": self.bad_signatures,
            "received": self.received,
            "pings": self.pings,
        }

    def accept(self, path: str, body: bytes, headers: Mapping[str, str], now: float) -> tuple[int, Any]:
        """Verify, de-duplicate and store one event; returns the answer's status and JSON body."""
        try:
            if self.secret is None:
                raise signing.SignatureError("the receiver has no secret configured")
            signing.verify(
                self.secret.encode(),
                body,
                headers.get(signing.SIGNATURE_HEADER),
                now=now,
                tolerance=self.tolerance_s,
            )
        except signing.SignatureError as exc:
            self.bad_signatures += 1
            return 401, {"error": str(exc)}
        try:
            doc = json.loads(body)
        except ValueError:
            return 400, {"error": "the body is not JSON"}
        event_id = headers.get(signing.EVENT_ID_HEADER, "")
        if not isinstance(doc, dict) or not event_id or str(doc.get("id")) != event_id:
            return 400, {"error": "the body must be an event object whose id is the Seedline-Event-Id"}
        event_type = headers.get("Seedline-Event-Type") or str(doc.get("type", ""))
        if event_type == "ping":
            self.pings += 1
            return 200, {"ok": True, "ping": True}
        if event_id in self._seen:
            self.duplicates += 1
            return 200, {"ok": True, "duplicate": True}
        self._seen.add(event_id)
        kept = {h: headers[h] for h in KEPT_HEADERS if h in headers}
        self.events.append({"id": event_id, "type": event_type, "path": path, "headers": kept, "body": doc})
        return 200, {"ok": True, "duplicate": False}


RECEIVER = web.AppKey("receiver", Receiver)


async def _hook(request: web.Request) -> web.StreamResponse:
    r = request.app[RECEIVER]
    r.received += 1
    rule = r.faults.draw(request.method, request.path)
    mode = rule.mode if rule is not None else None
    if rule is not None and mode == "error500":
        return _json(500, {"error": "injected fault: error500"})
    if rule is not None and mode == "rate_limit":
        return _json(429, {"error": "injected fault: rate_limit"}, {"Retry-After": _faults.retry_after(rule)})
    if rule is not None and mode == "timeout":
        return await _faults.drop_connection(request, rule.delay_s)
    if rule is not None and mode == "slow":
        await asyncio.sleep(rule.delay_s)
    body = await request.read()
    status, answer = r.accept(request.path, body, request.headers, time.time())
    if rule is not None and mode == "apply_then_500":
        return _json(500, {"error": "injected fault: apply_then_500"})
    if rule is not None and mode == "apply_then_timeout":
        return await _faults.drop_connection(request, rule.delay_s)
    return _json(status, answer)


async def _state(request: web.Request) -> web.Response:
    return _json(200, request.app[RECEIVER].state())


async def _reset(request: web.Request) -> web.Response:
    request.app[RECEIVER].reset()
    return _json(200, {"ok": True})


async def _configure(request: web.Request) -> web.Response:
    r = request.app[RECEIVER]
    try:
        r.configure(json.loads(await request.read() or b"null"))
    except ValueError as exc:
        return _json(400, {"error": f"invalid configuration: {exc}"})
    return _json(200, {"secret_set": r.secret is not None, "tolerance_s": r.tolerance_s})


async def _faults_admin(request: web.Request) -> web.Response:
    return await _faults.handle_admin(request.app[RECEIVER].faults, request)


def make_app(config: dict[str, Any] | None = None) -> web.Application:
    """The receiver's application.

    Args:
        config: ``{"secret": …, "tolerance_s": …}``; more may be set by ``POST /_fake/configure``.

    Raises:
        ValueError: the configuration is malformed.

    """
    receiver = Receiver()
    receiver.configure(config or {})
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[RECEIVER] = receiver
    app.router.add_post("/hooks/{anything:.*}", _hook)
    app.router.add_get("/_fake/state", _state)
    app.router.add_post("/_fake/reset", _reset)
    app.router.add_post("/_fake/configure", _configure)
    app.router.add_route("*", "/_fake/faults", _faults_admin)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT (``python -m seedline_server.integrations.fakes.webhook_receiver``)."""
    from seedline_server.integrations.fakes._serve import command_line

    command_line(
        make_app,
        name="fake webhook receiver",
        description="A fake webhook receiver for Seedline's events.",
        argv=argv,
    )


if __name__ == "__main__":
    main()
