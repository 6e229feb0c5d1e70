"""The LIMS connector: registers Seedline lab samples at the laboratory's LIMS over REST.

The LIMS speaks OpenTHC-shaped JSON at ``row.endpoint_uri`` (its base URL), authenticated with
``Authorization: Bearer <api_key or bearer_token>``; answers are ``{"data": …, "meta": …}``.

- ``lab_sample.create``: ``POST /api/v1/lab_sample`` with an OpenTHC lab sample whose ``id`` is
  the Seedline sample id (:func:`lab_sample_document`) and ``Idempotency-Key: <delivery id>``: a
  retry of the same delivery (after a timeout or a 5xx) gets the first answer back and creates
  nothing new. A 409 (the sample id is already registered) counts as "already there". The id the
  LIMS answers with is remembered for the sample.
- ``lab_sample.destroyed`` / ``lab_sample.voided``: ``DELETE /api/v1/lab_sample/{id}`` (OpenTHC's
  "void a lab sample"); a 404 means the LIMS never had it, so there is nothing to void.
- Samples sent to another laboratory than this LIMS's (``lab_license_number``), and every other
  event, are delivered as "not reported to the LIMS".

Results travel the other way: the LIMS pushes them, signed, to ReceiveIntegrationEvent
(:mod:`seedline_server.service.inbound`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from seedline_server.integrations.connector import Job, Outcome, TestReport
from seedline_server.integrations.transport import Exchange, RemoteError, Response
from seedline_server.store import models

if TYPE_CHECKING:
    from seedline_server.integrations.registry import Connectors, IntegrationRow

__all__ = ["SAMPLE_PATH", "LimsConnector", "SampleFacts", "lab_sample_document"]

SAMPLE_PATH = "/api/v1/lab_sample"
PING_PATH = "/api/v1/ping"

# seedline.type.v1.Unit numbers → OpenTHC unit-of-measure codes (etc/uom.yaml).
_UOM = {1: "g", 2: "mg", 3: "kg", 4: "lb", 5: "oz", 6: "l", 7: "ml", 8: "fl oz", 9: "ea"}
# Closing verbs of a sample → OpenTHC's void reason code.
_VOID_REASONS = {"destroyed": "Batch Destroyed", "voided": "Cancelled"}


@dataclass(frozen=True)
class SampleFacts:
    """What a lab sample document needs beyond the sample's own snapshot.

    Attributes:
        license_number: The sending license's number.
        lab_license_number: The number of the laboratory the sample is sent to.
        product_id: The sampled lot's product.
        product_name: Its display name.
        product_type: Its OpenTHC product type id.
        variety_id: The lot's variety, if any.
        variety_name: Its display name.

    """

    license_number: str
    lab_license_number: str
    product_id: str = ""
    product_name: str = ""
    product_type: str = ""
    variety_id: str = ""
    variety_name: str = ""


def _rfc3339(value: Any, fallback: datetime) -> str:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).isoformat()
        except ValueError:
            pass
    return fallback.isoformat()


def _amount(value: Any) -> str:
    """A stored amount ("2.5000") as a plain decimal string without trailing zeros ("2.5")."""
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return ""
    return f"{d.normalize():f}" if d.is_finite() else ""


def lab_sample_document(sample: dict[str, Any], facts: SampleFacts, created: datetime) -> dict[str, Any]:
    """The OpenTHC lab sample for a Seedline sample snapshot.

    Args:
        sample: The audit snapshot of the sample row (``lab_samples`` columns).
        facts: License numbers and the lot's product and variety.
        created: Used when the snapshot has no readable ``create_time``.

    Returns:
        The JSON object to POST.

    """
    lot_id = str(sample.get("source_lot_id") or "")
    license_id = str(sample.get("license_id") or "")
    doc: dict[str, Any] = {
        "id": str(sample["id"]),
        "license": {"id": license_id, "code": facts.license_number},
        "laboratory": {"license": {"code": facts.lab_license_number}},
        "origin": {"inventory": {"id": lot_id, "license": {"id": license_id}}},
        "inventory": {"id": lot_id},
        "qty": _amount(sample.get("quantity")),
        "uom": _UOM.get(int(sample.get("unit") or 0), ""),
        "created_at": _rfc3339(sample.get("create_time"), created),
        "stat": 200,
    }
    if facts.product_id:
        doc["product"] = {"id": facts.product_id, "name": facts.product_name}
        if facts.product_type:
            doc["product"]["product_type"] = {"id": facts.product_type}
    if facts.variety_id:
        doc["variety"] = {"id": facts.variety_id, "name": facts.variety_name}
    metrics = sample.get("requested_metrics") or []
    if metrics:
        doc["lab_metric_list"] = [{"id": str(m)} for m in metrics]
    if sample.get("state_tag"):
        doc["global_id"] = str(sample["state_tag"])
    return doc


def _data(answer: Response) -> dict[str, Any]:
    data = answer.body.get("data") if isinstance(answer.body, dict) else None
    return data if isinstance(data, dict) else {}


def _accepted(exc: RemoteError, why: str) -> None:
    """Mark the logged exchange of a refusal that means "done already" as a success."""
    if exc.exchange is not None:
        exc.exchange.status = "SUCCESS"
        exc.exchange.error_detail = f"{why} ({exc.detail})"[:2000]


class LimsConnector:
    """Talks to one integration's LIMS."""

    def __init__(self, connectors: Connectors, row: IntegrationRow) -> None:
        self._c = connectors
        self.row = row
        config = row.config_message()
        self.base = row.endpoint_uri.rstrip("/")
        self.lab_license_number: str = config.lab_license_number
        self.account_id: str = config.account_id

    def _auth(self) -> dict[str, str]:
        creds = self.row.opened().lims
        token = creds.api_key or creds.bearer_token
        if not token:
            raise RemoteError(
                "the LIMS credentials hold neither an API key nor a bearer token",
                retryable=False,
                maybe_sent=False,
                counts_for_breaker=False,
            )
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    async def _call(
        self,
        method: str,
        path: str,
        log: list[Exchange],
        *,
        summary: str,
        doc: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> Response:
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() if doc is not None else b""
        return await self._c.http.call(
            method,
            f"{self.base}{path}",
            content=body,
            headers={**self._auth(), **(headers or {})},
            summary=summary,
            request_id=request_id,
            log=log,
        )

    async def _facts(self, sample: dict[str, Any]) -> SampleFacts:
        lic, lot, product, variety = models.License, models.Lot, models.Product, models.Variety
        ids = {str(sample.get("license_id") or self.row.license_id), str(sample.get("lab_license_id") or "")}
        async with self._c.engine.connect() as conn:
            numbers = {
                r[0]: r[1]
                for r in (
                    await conn.execute(select(lic.id, lic.license_number).where(lic.id.in_(sorted(ids))))
                ).all()
            }
            row = (
                await conn.execute(
                    select(
                        product.id,
                        product.display_name,
                        product.product_type,
                        variety.id,
                        variety.display_name,
                    )
                    .select_from(lot)
                    .join(product, product.id == lot.product_id)
                    .outerjoin(variety, variety.id == lot.variety_id)
                    .where(lot.id == str(sample.get("source_lot_id") or ""))
                )
            ).first()
        facts = SampleFacts(
            license_number=numbers.get(str(sample.get("license_id") or self.row.license_id), ""),
            lab_license_number=numbers.get(str(sample.get("lab_license_id") or ""), ""),
        )
        if row is None:
            return facts
        return SampleFacts(
            facts.license_number,
            facts.lab_license_number,
            product_id=row[0],
            product_name=row[1] or "",
            product_type=row[2] or "",
            variety_id=row[3] or "",
            variety_name=row[4] or "",
        )

    def _elsewhere(self, job: Job, facts: SampleFacts) -> Outcome | None:
        if facts.lab_license_number == self.lab_license_number:
            return None
        return Outcome(
            summary=f"{job.event_type}: the sample goes to laboratory {facts.lab_license_number or '?'}, "
            f"not {self.lab_license_number}: not reported to the LIMS"
        )

    async def deliver(self, job: Job, log: list[Exchange]) -> Outcome:
        """Register, or void, the sample of ``job`` at the LIMS.

        Raises:
            RemoteError: the LIMS refused or did not answer (classified by the transport).

        """
        noun, _, verb = job.event_type.partition(".")
        sample = job.payload.get("after") or job.payload.get("before") or {}
        if noun != "lab_sample" or not sample.get("id") or (verb != "create" and verb not in _VOID_REASONS):
            return Outcome(summary=f"{job.event_type}: not reported to the LIMS")
        facts = await self._facts(sample)
        skipped = self._elsewhere(job, facts)
        if skipped is not None:
            return skipped
        if verb == "create":
            return await self._register(job, sample, facts, log)
        return await self._void(job, sample, verb, log)

    async def _register(
        self, job: Job, sample: dict[str, Any], facts: SampleFacts, log: list[Exchange]
    ) -> Outcome:
        doc = lab_sample_document(sample, facts, job.create_time)
        if self.account_id:
            doc["account"] = {"id": self.account_id}
        summary = f"register lab sample {doc['id']}"
        try:
            answer = await self._call(
                "POST",
                SAMPLE_PATH,
                log,
                summary=summary,
                doc=doc,
                headers={"Idempotency-Key": job.id},
                request_id=job.id,
            )
        except RemoteError as exc:
            if exc.status != 409:
                raise
            # The id is taken: the sample is registered already (an earlier attempt whose
            # idempotency record the LIMS no longer keeps, or a registration by hand).
            _accepted(exc, "the sample id is registered already")
            return Outcome(
                summary=f"lab sample {doc['id']} already registered at the LIMS",
                remote_ids={job.resource: doc["id"]},
                found_existing=True,
            )
        remote = str(_data(answer).get("id") or doc["id"])
        return Outcome(summary=summary, remote_ids={job.resource: remote})

    async def _void(self, job: Job, sample: dict[str, Any], verb: str, log: list[Exchange]) -> Outcome:
        sample_id = str(sample["id"])
        reason = {"reason_code": _VOID_REASONS[verb], "reason_text": str(sample.get("close_note") or "")}
        try:
            await self._call(
                "DELETE",
                f"{SAMPLE_PATH}/{sample_id}",
                log,
                summary=f"void lab sample {sample_id} ({verb})",
                doc=reason,
                headers={"Idempotency-Key": job.id},
                request_id=job.id,
            )
        except RemoteError as exc:
            if exc.status != 404:
                raise
            _accepted(exc, "the LIMS does not have the sample")
            return Outcome(summary=f"lab sample {sample_id} is not at the LIMS: nothing to void")
        return Outcome(summary=f"voided lab sample {sample_id} at the LIMS ({verb})")

    async def probe(self, log: list[Exchange]) -> None:
        """``GET /api/v1/ping``, authenticated.

        Raises:
            RemoteError: the LIMS is not back (or refuses the credentials).

        """
        await self._call("GET", PING_PATH, log, summary="probe: ping")

    async def test(self, log: list[Exchange]) -> TestReport:
        """Ping with the credentials and check the laboratory license the LIMS shows us."""
        t0 = time.perf_counter()
        try:
            answer = await self._call("GET", PING_PATH, log, summary="connection test: ping")
        except RemoteError as exc:
            reachable = exc.status is not None
            latency = timedelta(seconds=time.perf_counter() - t0) if reachable else None
            if exc.status in (401, 403):
                detail = f"the LIMS refused the credentials: {exc.detail}"
            elif exc.exchange is None:  # nothing was sent (no usable credentials)
                detail = exc.detail
            elif reachable:
                detail = f"the LIMS answered the ping with an error: {exc.detail}"
            else:
                detail = f"the LIMS is not reachable: {exc.detail}"
            return TestReport(reachable, False, False, latency, detail[:500])
        latency = timedelta(seconds=time.perf_counter() - t0)
        data = _data(answer)
        lic = data.get("license")
        seen = str(lic.get("code") or lic.get("license_number") or "") if isinstance(lic, dict) else ""
        if seen != self.lab_license_number:
            detail = (
                f"authenticated, but the LIMS shows laboratory license {seen or '(none)'}, "
                f"not {self.lab_license_number}"
            )
            return TestReport(True, True, False, latency, detail[:500])
        account = data.get("account")
        shown = str(account.get("id") or "") if isinstance(account, dict) else ""
        detail = f"authenticated; laboratory license {seen} visible" + (f"; account {shown}" if shown else "")
        return TestReport(True, True, True, latency, detail[:500])
