"""The METRC v2 connector: deliveries, connection tests and pulls, within METRC's limits.

- **Auth**: HTTP Basic with the vendor (software) key as user and the licensee's user key as
  password; facility-scoped calls carry ``licenseNumber``.
- **Limits**, shared by every worker through the database (:mod:`limits`): 150 requests/s per
  vendor key, 50 GET/s per facility, 10 requests in flight per facility.
- **No duplicates**: METRC has no idempotency key, so a delivery whose earlier attempt may have
  reached METRC (a timeout, a 5xx, a worker killed mid-call) *looks first*: it GETs the plant or
  package by its label and sends nothing when it is there. A plant batch (immature plants, which
  METRC does not tag) cannot be looked up by name, but METRC refuses a second batch with the same
  name; on a look-first attempt that refusal means "already there".
- **Pulls** page through METRC's lists (``pageSize`` ≤ 20) in ``lastModified`` windows of at
  most 24 hours and compare with Seedline (:mod:`sync`).

What is sent for which change is decided in one place, :mod:`metrc_mapping`; this module only
gathers the records (names resolved from the database) and talks HTTP.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from seedline_server.integrations import metrc_mapping as m
from seedline_server.integrations.connector import Job, Outcome, TestReport
from seedline_server.integrations.limits import Bucket
from seedline_server.integrations.metrc_records import RecordReader
from seedline_server.integrations.sync import Difference, RunSpec, ScopeResult
from seedline_server.integrations.transport import Exchange, RemoteError, Response

if TYPE_CHECKING:
    from seedline_server.integrations.registry import Connectors, IntegrationRow

__all__ = ["MetrcConnector"]

_RATE_MARGIN = 0.96


def _body(rows: list[dict[str, Any]] | None) -> bytes:
    return json.dumps(rows, separators=(",", ":"), default=str).encode() if rows is not None else b""


class MetrcConnector:
    """Talks to one METRC facility for one integration."""

    def __init__(self, connectors: Connectors, row: IntegrationRow) -> None:
        self._c = connectors
        self.row = row
        config = row.config_message()
        creds = row.opened().metrc
        self.facility: str = config.facility_license_number
        self.base = row.endpoint_uri.rstrip("/")
        self._auth = (creds.vendor_key, creds.user_key)
        host = urlsplit(self.base).hostname or self.base
        vendor = hashlib.sha256(creds.vendor_key.encode()).hexdigest()[:16]
        s = connectors.settings
        # Small bursts: we keep to the rate while METRC's own buckets stay nearly full.
        # A little under METRC's rates: requests leave our bucket evenly spaced but arrive with
        # network and scheduling jitter, and METRC counts them in any one-second window.
        margin = _RATE_MARGIN
        self._vendor = Bucket(f"metrc:{host}:vendor:{vendor}", s.metrc_rate_per_vendor_key * margin, 1.0)
        self._gets = Bucket(f"metrc:{host}:get:{self.facility}", s.metrc_get_rate_per_facility * margin, 1.0)
        self._slot_key = f"metrc:{host}:inflight:{self.facility}"
        self._slots = s.metrc_concurrency_per_facility
        self.records = RecordReader(connectors.engine, row.license_id, row.id)

    # -- HTTP -------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        log: list[Exchange],
        summary: str,
        body: list[dict[str, Any]] | None = None,
        params: dict[str, str] | None = None,
        facility: bool = True,
        sync_run_id: str | None = None,
    ) -> Response:
        """One METRC call under the shared limits; the exchange is appended to ``log``."""
        query = dict(params or {})
        if facility:
            query["licenseNumber"] = self.facility
        limits = self._c.limits
        await limits.take([self._vendor, self._gets] if method == "GET" else [self._vendor])
        # The lease outlasts the longest call, so a live worker never loses its slot mid-call.
        lease = self._c.settings.integration_timeout_seconds + 10
        async with limits.slot(self._slot_key, self._slots, lease_seconds=lease):
            return await self._c.http.call(
                method,
                self.base + path,
                content=_body(body),
                params=query,
                auth=self._auth,
                summary=summary,
                sync_run_id=sync_run_id,
                log=log,
            )

    async def already(self, call: m.Call, log: list[Exchange]) -> bool:
        """Whether ``call`` already took effect at METRC (look before resending)."""
        assert call.lookup_path is not None
        try:
            answer = await self.request(
                "GET", call.lookup_path, log=log, summary=f"look up {call.what or call.path} before resending"
            )
        except RemoteError as exc:
            if exc.status == 404:
                return False
            raise
        return call.done(answer.body) if call.done is not None else True

    # -- deliveries -------------------------------------------------------------------------

    async def deliver(self, job: Job, log: list[Exchange]) -> Outcome:
        """Send what METRC must hear of ``job`` (maybe nothing)."""
        plan = await self.records.plan(job)
        if plan is None or not plan.calls:
            return Outcome(summary=f"{job.event_type}: not reported to METRC")
        found = 0
        for call in plan.calls:
            if job.look_first and call.lookup_path is not None and await self.already(call, log):
                found += 1
                continue
            try:
                await self.request(
                    call.method,
                    call.path,
                    body=call.body,
                    log=log,
                    summary=f"{plan.summary}: {call.method} {call.path}",
                )
            except RemoteError as exc:
                refusal = exc.status in (400, 404)
                if job.look_first and refusal and "already exists" in exc.detail.lower():
                    found += 1  # the record this call creates is there: our earlier attempt made it
                    continue
                if call.needs_others and refusal and _missing(exc.detail):
                    # It refers to a record another resource's delivery creates (a harvest, a
                    # source package) that METRC has not heard of yet: wait for it, don't give up.
                    raise RemoteError(
                        f"METRC does not know a record this refers to yet: {exc.detail}",
                        retryable=True,
                        maybe_sent=False,
                        status=exc.status,
                        counts_for_breaker=False,
                    ) from exc
                raise
        summary = plan.summary + (" (already at METRC)" if found == len(plan.calls) else "")
        return Outcome(summary=summary, remote_ids=plan.remote_ids, found_existing=found > 0)

    async def probe(self, log: list[Exchange]) -> None:
        """GET /facilities/v2: reachable and authenticated."""
        await self.request("GET", "/facilities/v2", log=log, summary="probe: list facilities", facility=False)

    async def test(self, log: list[Exchange]) -> TestReport:
        """Reachable, authenticated, and is the configured facility visible to the keys."""
        t0 = time.perf_counter()
        try:
            answer = await self.request(
                "GET", "/facilities/v2", log=log, summary="connection test: list facilities", facility=False
            )
        except RemoteError as exc:
            latency = timedelta(seconds=time.perf_counter() - t0) if exc.status is not None else None
            reachable = exc.status is not None
            return TestReport(reachable, False, False, latency, exc.detail)
        latency = timedelta(seconds=time.perf_counter() - t0)
        numbers = {
            str((f.get("License") or {}).get("Number", "")) for f in answer.body or [] if isinstance(f, dict)
        }
        visible = self.facility in numbers
        detail = (
            f"facility {self.facility} is visible to these keys"
            if visible
            else f"facility {self.facility} is not among the {len(numbers)} facilities these keys can see"
        )
        return TestReport(True, True, visible, latency, detail)

    # -- pulls and reconciliation ------------------------------------------------------------

    def supports(self, scope: str, direction: str) -> bool:
        """Plants and inventory pull (reconcile) and push (resend what METRC lacks)."""
        return scope in ("PLANTS", "INVENTORY")

    async def pages(
        self,
        path: str,
        log: list[Exchange],
        run: RunSpec,
        window: tuple[datetime, datetime] | None,
    ) -> list[dict[str, Any]]:
        """Every record of a METRC list, page by page (pageSize ≤ 20)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            params = {"pageNumber": str(page), "pageSize": str(m.METRC_MAX_PAGE_SIZE)}
            if window is not None:
                params["lastModifiedStart"] = window[0].isoformat()
                params["lastModifiedEnd"] = window[1].isoformat()
            answer = await self.request(
                "GET", path, log=log, params=params, summary=f"pull {path} page {page}", sync_run_id=run.id
            )
            body = answer.body or {}
            data = body.get("Data", []) if isinstance(body, dict) else body
            out.extend(d for d in data if isinstance(d, dict))
            total_pages = int(body.get("TotalPages", 1)) if isinstance(body, dict) else 1
            if page >= total_pages or not data:
                return out
            page += 1

    async def _remote(self, scope: str, run: RunSpec, log: list[Exchange]) -> list[dict[str, Any]]:
        paths = (
            ["/plants/v2/vegetative", "/plants/v2/flowering", "/plants/v2/onhold"]
            if scope == "PLANTS"
            else ["/packages/v2/active", "/packages/v2/onhold"]
        )
        windows: Iterable[tuple[datetime, datetime] | None]
        if run.mode == "FULL" or run.since is None:
            windows = [None]
        else:
            windows = m.metrc_windows(run.since, datetime.now(UTC))
        out: list[dict[str, Any]] = []
        for window in windows:
            for path in paths:
                out.extend(await self.pages(path, log, run, window))
        return out

    async def sync_scope(self, run: RunSpec, scope: str, log: list[Exchange]) -> ScopeResult:
        """Pull: compare METRC's records with ours. Push: resend through the outbox what METRC lacks.

        Both read METRC's lists first (a push must know what is missing). Differences are stored
        for PULL and BOTH; PUSH and BOTH queue what METRC lacks, to be looked up before sending.
        Immature plants are not compared: METRC knows them only as batch counts.
        """
        result = ScopeResult()
        remote = await self._remote(scope, run, log)
        if scope == "PLANTS":
            theirs = {p.label: p for p in (m.plant_from_metrc(o) for o in remote)}
            ours = await self.records.local_plants(since=run.since if run.mode == "INCREMENTAL" else None)
        else:
            theirs = {p.label: p for p in (m.package_from_metrc(o) for o in remote)}
            ours = await self.records.local_lots(since=run.since if run.mode == "INCREMENTAL" else None)
        result.pulled = len(theirs)
        differences: list[Difference] = []
        matched: dict[str, str] = {}
        for label, local in ours.items():
            other = theirs.get(label)
            if other is None:
                if run.mode == "FULL" or run.direction != "PULL":
                    differences.append(
                        Difference(scope, "MISSING_REMOTE", local.resource, label, local.value, "")
                    )
                continue
            matched[local.resource] = label
            diff = local.compare(other)
            if diff is None:
                result.unchanged += 1
            else:
                kind, mine, theirs_value = diff
                differences.append(Difference(scope, kind, local.resource, label, mine, theirs_value))
        if run.mode == "FULL":
            known = set(ours)
            for label, other in theirs.items():
                if label not in known:
                    differences.append(
                        Difference(scope, "MISSING_LOCAL", "", label, "", m.describe_remote(other))
                    )
        await self.records.remember(matched)
        if run.direction in ("PUSH", "BOTH"):
            missing = [d.resource for d in differences if d.kind == "MISSING_REMOTE"]
            result.pushed = await self.records.resend(missing, scope)
        if run.direction != "PUSH":
            result.differences = differences
        return result


def _missing(detail: str) -> bool:
    """Whether METRC's refusal says a referenced record does not exist."""
    text = detail.lower()
    return any(w in text for w in ("not found", "does not exist", "no such", "unknown"))


def quantity_text(value: Decimal) -> str:
    """A quantity as METRC shows it in differences."""
    return f"{value:f}"
