"""The BioTrackTHC v1 connector: one JSON endpoint, a session, and nonces for idempotency.

Every call is a POST of one JSON object (``action``, ``API: "4.0"``, ``sessionid``, ``nonce``,
``training``) to the state's ``serverjson.asp``; answers carry ``success`` 0/1 and ``error``.

- **Session**: ``login`` with the licensee's UBI, username and password gives a ``sessionid``,
  kept until BioTrackTHC says it is no longer valid; then the connector logs in again once.
- **No duplicates**: BioTrackTHC de-duplicates by ``nonce``: the same nonce with the same body
  returns the first answer and applies nothing again. The nonce of each call of a delivery is
  derived from the delivery id and the call's position, so every retry of a delivery (after a
  timeout, a 5xx, a reclaimed lease) repeats the same nonces.
- **Remote ids**: BioTrackTHC assigns 16-digit barcode ids (``barcode_id`` on ``*_new``); they
  are remembered per Seedline resource (``remote_ids``) for later calls.

What is sent for which change lives in :mod:`biotrack_mapping`.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from seedline_server.integrations.connector import Job, Outcome, TestReport
from seedline_server.integrations.transport import Exchange, RemoteError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from seedline_server.integrations.registry import Connectors, IntegrationRow

__all__ = ["BioTrackConnector"]

_SESSION_ERRORS = ("session", "login")


class BioTrackConnector:
    """Talks to BioTrackTHC for one integration."""

    def __init__(self, connectors: Connectors, row: IntegrationRow) -> None:
        self._c = connectors
        self.row = row
        config = row.config_message()
        creds = row.opened().biotrack
        self.url = row.endpoint_uri
        self.ubi: str = config.ubi
        self.location: str = config.location
        self.training = bool(config.training_mode)
        self._login = (creds.username, creds.password)
        self._session: str | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The database engine (the planning step reads names and remembered barcodes)."""
        return self._c.engine

    async def _post(
        self, doc: dict[str, Any], log: list[Exchange], summary: str, request_id: str
    ) -> dict[str, Any]:
        body = json.dumps(doc, separators=(",", ":"), default=str).encode()
        answer = await self._c.http.call(
            "POST", self.url, content=body, summary=summary, request_id=request_id, log=log
        )
        if not isinstance(answer.body, dict):
            raise RemoteError(
                "BioTrackTHC answered with something other than a JSON object",
                retryable=True,
                maybe_sent=True,
            )
        return answer.body

    async def login(self, log: list[Exchange]) -> str:
        """Open a session."""
        user, password = self._login
        doc = {
            "API": "4.0",
            "action": "login",
            "license_number": self.ubi,
            "username": user,
            "password": password,
        }
        answer = await self._post(doc, log, "login", request_id=f"login-{int(time.time())}")
        if str(answer.get("success")) != "1" or not answer.get("sessionid"):
            log[-1].status = "ERROR"
            log[-1].error_detail = f"login refused: {answer.get('error', 'no session')}"
            raise RemoteError(
                f"BioTrackTHC refused the login: {answer.get('error', 'no session id')}",
                retryable=False,
                maybe_sent=False,
                status=401,
                counts_for_breaker=False,
            )
        self._session = str(answer["sessionid"])
        return self._session

    async def call(
        self, action: str, fields: dict[str, Any], *, nonce: str, log: list[Exchange], summary: str
    ) -> dict[str, Any]:
        """One action in the session (logging in when needed); raises on ``success: 0``."""
        for attempt in (1, 2):
            session = self._session or await self.login(log)
            doc: dict[str, Any] = {
                "API": "4.0",
                "action": action,
                "sessionid": session,
                "nonce": nonce,
                **fields,
            }
            if self.training:
                doc["training"] = 1
            answer = await self._post(doc, log, summary, request_id=nonce)
            if str(answer.get("success")) == "1":
                return answer
            error = str(answer.get("error", "unknown error"))
            log[-1].status = "ERROR"
            log[-1].error_detail = f"{action}: {error}"[:2000]
            if attempt == 1 and any(w in error.lower() for w in _SESSION_ERRORS):
                self._session = None  # expired: log in again and repeat (same nonce)
                continue
            raise RemoteError(
                f"BioTrackTHC refused {action}: {error} (errorcode {answer.get('errorcode', '?')})",
                retryable=False,
                maybe_sent=False,
                status=400,
                counts_for_breaker=False,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def deliver(self, job: Job, log: list[Exchange]) -> Outcome:
        """Send the actions of ``job`` with nonces derived from the delivery id."""
        from seedline_server.integrations.biotrack_records import plan

        p = await plan(self, job)
        if p is None or not p.calls:
            return Outcome(summary=f"{job.event_type}: not reported to BioTrackTHC")
        remote_ids: dict[str, str] = {}
        for i, call in enumerate(p.calls):
            answer = await self.call(
                call.action,
                call.fields,
                nonce=f"{job.id}-{i}",
                log=log,
                summary=f"{p.summary} ({call.action})",
            )
            barcodes = answer.get("barcode_id")
            if not (isinstance(barcodes, list) and barcodes) and answer.get("manifest_id"):
                barcodes = [answer["manifest_id"]]  # a manifest is known by its manifest id
            if isinstance(barcodes, list) and barcodes and p.creates is not None:
                remote_ids[p.creates] = str(barcodes[0])
        return Outcome(summary=p.summary, remote_ids=remote_ids)

    async def probe(self, log: list[Exchange]) -> None:
        """Log in: reachable and authenticated."""
        self._session = None
        await self.login(log)

    async def test(self, log: list[Exchange]) -> TestReport:
        """Log in, then ``sync_check`` at the configured location."""
        t0 = time.perf_counter()
        try:
            self._session = None
            await self.login(log)
        except RemoteError as exc:
            reachable = exc.status is not None
            latency = timedelta(seconds=time.perf_counter() - t0) if reachable else None
            return TestReport(reachable, False, False, latency, exc.detail)
        latency = timedelta(seconds=time.perf_counter() - t0)
        try:
            await self.call(
                "sync_check",
                {"location": self.location, "download": 0, "data": []},
                nonce=f"test-{int(time.time() * 1000)}",
                log=log,
                summary="connection test: sync_check",
            )
        except RemoteError as exc:
            return TestReport(True, True, False, latency, f"location {self.location}: {exc.detail}")
        return TestReport(True, True, True, latency, f"logged in; location {self.location} answers")
