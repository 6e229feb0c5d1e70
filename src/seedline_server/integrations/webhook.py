"""The generic outbound webhook connector: signed JSON event deliveries over HTTPS.

Body: ``{"id": <delivery id>, "type": "transfer.committed", "created": <unix seconds of the
change>, "license": "licenses/…", "resource": "licenses/…/transfers/…", "data": {"verb": …,
"before": …, "after": …}}`` where ``data`` holds the audit snapshots of the change (the record as
it was right after it, not as it is when the delivery happens to go out). Headers:
``Seedline-Event-Id`` (the delivery id: the same on every retry, so receivers de-duplicate),
``Seedline-Event-Type`` and ``Seedline-Signature`` (see :mod:`signing`). Any 2xx is delivered;
429/5xx/timeouts are retried by the outbox; other 4xx are dead letters.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from seedline_server.crypto import Secret
from seedline_server.integrations import signing
from seedline_server.integrations.connector import Job, Outcome, TestReport
from seedline_server.integrations.transport import Exchange, Http, RemoteError

__all__ = ["WebhookConnector", "event_body"]


def event_body(
    *, event_id: str, event_type: str, created: int, license_name: str, resource: str, data: dict[str, Any]
) -> bytes:
    """The delivered JSON bytes (compact, keys sorted, so the signature is over stable bytes)."""
    doc = {
        "id": event_id,
        "type": event_type,
        "created": created,
        "license": license_name,
        "resource": resource,
        "data": data,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()


class WebhookConnector:
    """Delivers outbox jobs to one webhook URL."""

    def __init__(self, http: Http, url: str, secret: Secret[str]) -> None:
        self._http = http
        self._url = url
        self._secret = secret

    async def _post(
        self, body: bytes, event_id: str, event_type: str, summary: str, log: list[Exchange]
    ) -> None:
        headers = {
            signing.EVENT_ID_HEADER: event_id,
            "Seedline-Event-Type": event_type,
            signing.SIGNATURE_HEADER: signing.sign(self._secret.reveal().encode(), body, int(time.time())),
        }
        await self._http.call(
            "POST", self._url, content=body, headers=headers, summary=summary, request_id=event_id, log=log
        )

    async def deliver(self, job: Job, log: list[Exchange]) -> Outcome:
        """POST the signed event."""
        body = event_body(
            event_id=job.id,
            event_type=job.event_type,
            created=int(job.create_time.timestamp()),
            license_name=f"licenses/{job.license_id}",
            resource=job.resource,
            data=job.payload,
        )
        await self._post(body, job.id, job.event_type, f"delivered {job.event_type}", log)
        return Outcome(summary=f"delivered {job.event_type}")

    async def probe(self, log: list[Exchange]) -> None:
        """POST a signed ``ping`` event (receivers answer 2xx and ignore it)."""
        from ulid import ULID

        event_id = str(ULID())
        body = event_body(
            event_id=event_id,
            event_type="ping",
            created=int(time.time()),
            license_name="",
            resource="",
            data={},
        )
        await self._post(body, event_id, "ping", "test delivery (ping)", log)

    async def test(self, log: list[Exchange]) -> TestReport:
        """Send a signed ``ping``: reachable, and accepted (2xx) by the receiver."""
        t0 = time.perf_counter()
        try:
            await self.probe(log)
        except RemoteError as exc:
            reachable = exc.status is not None
            latency = timedelta(seconds=time.perf_counter() - t0) if reachable else None
            accepted = reachable and exc.status not in (401, 403)
            return TestReport(reachable, accepted, False, latency, f"ping not accepted: {exc.detail}"[:500])
        latency = timedelta(seconds=time.perf_counter() - t0)
        return TestReport(True, True, True, latency, "the receiver accepted a signed ping event")
