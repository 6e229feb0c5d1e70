"""A fake LIMS: takes lab samples over OpenTHC-shaped REST and publishes signed lab results.

The REST face (what :class:`seedline_server.integrations.lims.LimsConnector` talks to); every
call needs ``Authorization: Bearer <key>`` with a key of the configuration (401 otherwise), and
answers ``{"data": …, "meta": …}`` (errors: ``{"data": null, "meta": {"note": …}}``):

- ``GET /api/v1/ping``: ``{"data": {"license": {"id", "code", "name"}, "account": {"id"}}}`` of
  the laboratory the key belongs to;
- ``POST /api/v1/lab_sample``: register an OpenTHC lab sample (JSON only: 415 otherwise). Required:
  ``id`` (a ULID), ``license.id``, ``origin.inventory.id`` or ``inventory.id``, ``qty`` (> 0),
  ``uom`` and ``created_at``; a missing or bad field is 400 naming it (``meta.field``). A new
  sample is 201; an id already registered is 409. ``Idempotency-Key``: the same key (per API key)
  with the same body answers the first answer again (header ``Idempotent-Replayed: true``) and
  changes nothing; with another body it is 422;
- ``GET /api/v1/lab_sample`` and ``GET /api/v1/lab_sample/{id}``; ``DELETE
  /api/v1/lab_sample/{id}`` voids it (``stat`` 410, ``deleted_at``); 404 when unknown.

Admin (no key): ``GET /_fake/state`` (samples, ``create_counts`` per sample id, ``conflicts``,
``idempotent_replays``, published events with Seedline's answers), ``POST /_fake/reset``,
``POST /_fake/configure`` (``api_keys`` and/or ``seedline``, replacing those given), fault
injection at ``/_fake/faults`` (every mode but ``partial``), and ``POST /_fake/publish``
(:func:`lab_result_event`; see :func:`_publish`).

Configuration::

    {"api_keys": {"key-1": "LAB-1", "key-2": {"license": "LAB-2", "account": "ACME"}},
     "seedline": {"receive_url": "https://127.0.0.1:PORT/v1/licenses/L/integrations/I:receive",
                  "signing_secret": "...", "ca": "ca.pem", "client_cert": "c.pem", "client_key": "k.pem"}}

Run: ``python -m seedline_server.integrations.fakes.lims --host 127.0.0.1 --port 0 --cert C
--key K [--config FILE]``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from aiohttp import web
from ulid import ULID

from seedline_server.integrations import signing
from seedline_server.integrations.fakes import _faults

__all__ = ["EVENT_TYPE", "FakeLims", "Refused", "check_lab_sample", "lab_result_event", "main", "make_app"]

EVENT_TYPE = "lab_result.published"
_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
_UOMS = frozenset({"ea", "g", "kg", "mg", "lb", "ml", "l", "oz", "fl oz"})
_MODES = _faults.MODES - {"partial"}
_SEEDLINE_KEYS = frozenset({"receive_url", "signing_secret", "ca", "client_cert", "client_key"})
_PUBLISH_KEYS = frozenset(
    {
        "sample_id",
        "lots",
        "metrics",
        "event_id",
        "replay",
        "bad_signature",
        "timestamp",
        "result_id",
        "license",
        "coa",
        "test_at",
    }
)


class Refused(Exception):
    """A request the fake answers with an error (status, OpenTHC-style note, field)."""

    def __init__(self, status: int, note: str, field_name: str = "") -> None:
        super().__init__(note)
        self.status = status
        self.note = note
        self.field = field_name


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def _failure(exc: Refused) -> web.Response:
    meta: dict[str, Any] = {"note": exc.note}
    if exc.field:
        meta["field"] = exc.field
    return _json(exc.status, {"data": None, "meta": meta})


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class Lab:
    """The laboratory an API key belongs to."""

    license: str
    account: str


def _labs(raw: Any) -> dict[str, Lab]:
    if not isinstance(raw, dict):
        raise ValueError("api_keys must be an object of key → license code")
    out: dict[str, Lab] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value:
            out[key] = Lab(value, f"account-{value}")
        elif isinstance(value, dict) and isinstance(value.get("license"), str) and value["license"]:
            out[key] = Lab(value["license"], str(value.get("account") or f"account-{value['license']}"))
        else:
            raise ValueError(f"api_keys[{key!r}] must be a license code or {{license, account}}")
    return out


def _seedline(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ValueError("seedline must be an object")
    unknown = set(raw) - _SEEDLINE_KEYS
    if unknown:
        raise ValueError(f"unknown seedline keys: {sorted(unknown)}")
    if not all(isinstance(v, str) for v in raw.values()):
        raise ValueError("seedline values must be strings")
    return dict(raw)


def _positive_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return False
    return d.is_finite() and d > 0


def _is_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _id_at(doc: dict[str, Any], *path: str) -> str:
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, str) else ""


def check_lab_sample(doc: Any) -> None:
    """Refuse a lab sample body missing a required field (400 naming the first such field).

    Raises:
        Refused: the body is not a valid lab sample.

    """
    if not isinstance(doc, dict):
        raise Refused(400, "the lab sample must be a JSON object")
    if not _ULID.fullmatch(str(doc.get("id", ""))):
        raise Refused(400, "lab_sample.id is required and must be a ULID", "id")
    if not _id_at(doc, "license", "id"):
        raise Refused(400, "lab_sample.license.id is required", "license.id")
    if not (_id_at(doc, "origin", "inventory", "id") or _id_at(doc, "inventory", "id")):
        raise Refused(400, "lab_sample.origin.inventory.id is required", "origin.inventory.id")
    if not _positive_number(doc.get("qty")):
        raise Refused(400, "lab_sample.qty is required and must be a positive number", "qty")
    if doc.get("uom") not in _UOMS:
        raise Refused(400, f"lab_sample.uom must be one of {', '.join(sorted(_UOMS))}", "uom")
    if not _is_time(doc.get("created_at")):
        raise Refused(400, "lab_sample.created_at is required (RFC 3339)", "created_at")


def lab_result_event(
    *,
    event_id: str,
    created: int,
    result_id: str,
    lab_license: str,
    sample_id: str,
    lots: list[str],
    metrics: list[Any],
    test_at: str,
    coa: str = "",
) -> dict[str, Any]:
    """The ``lab_result.published`` event a LIMS pushes to Seedline (an OpenTHC lab result).

    Args:
        event_id: The event id (also sent as ``Seedline-Event-Id``).
        created: Unix seconds of the event.
        result_id: The LIMS's id of the result.
        lab_license: The laboratory's license code.
        sample_id: The Seedline sample tested ("" for results of lots only).
        lots: Seedline lot ids the result covers.
        metrics: The OpenTHC lab result metrics, as given.
        test_at: When it was tested (RFC 3339).
        coa: The certificate's URL, if any.

    Returns:
        The event object.

    """
    data: dict[str, Any] = {
        "id": result_id,
        "license": {"code": lab_license},
        "lot_list": [{"id": lot} for lot in lots],
        "metric_list": metrics,
        "test_at": test_at,
        "created_at": datetime.fromtimestamp(created, UTC).isoformat(),
    }
    if sample_id:
        data["lab_sample"] = {"id": sample_id}
    if coa:
        data["coa"] = coa
    return {"type": EVENT_TYPE, "id": event_id, "created": created, "data": data}


@dataclass
class _Remembered:
    fingerprint: str
    status: int
    body: Any


@dataclass
class FakeLims:
    """The fake's configuration and what it holds."""

    labs: dict[str, Lab] = field(default_factory=dict)
    seedline: dict[str, str] = field(default_factory=dict)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    create_counts: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0
    idempotent_replays: int = 0
    published: list[dict[str, Any]] = field(default_factory=list)
    faults: _faults.Faults = field(default_factory=lambda: _faults.Faults(modes=_MODES))
    _idempotency: dict[tuple[str, str], _Remembered] = field(default_factory=dict)

    def configure(self, config: Any) -> None:
        """Apply ``{"api_keys": …, "seedline": …}``; each key given replaces its part.

        Raises:
            ValueError: the configuration is malformed (nothing is changed then).

        """
        if not isinstance(config, dict):
            raise ValueError("the configuration must be a JSON object")
        unknown = set(config) - {"api_keys", "seedline"}
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        labs = _labs(config["api_keys"]) if "api_keys" in config else self.labs
        seedline = _seedline(config["seedline"]) if "seedline" in config else self.seedline
        self.labs, self.seedline = labs, seedline

    def reset(self) -> None:
        """Forget samples, idempotency records, counters, publications and faults."""
        self.samples.clear()
        self.create_counts.clear()
        self._idempotency.clear()
        self.published.clear()
        self.conflicts = self.idempotent_replays = 0
        self.faults.reset()

    def state(self) -> dict[str, Any]:
        """What ``GET /_fake/state`` answers."""
        return {
            "samples": list(self.samples.values()),
            "create_counts": dict(self.create_counts),
            "conflicts": self.conflicts,
            "idempotent_replays": self.idempotent_replays,
            "published": self.published,
        }

    def lab_of(self, request: web.Request) -> tuple[str, Lab]:
        """The API key of the request and its laboratory.

        Raises:
            Refused: 401 without a known bearer key.

        """
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        lab = self.labs.get(key.strip()) if scheme.lower() == "bearer" else None
        if lab is None:
            raise Refused(401, "a valid API key is required (Authorization: Bearer <key>)")
        return key.strip(), lab

    def create(self, key: str, lab: Lab, body: bytes, idempotency_key: str) -> tuple[int, Any, bool]:
        """Register a lab sample; returns (status, body, replayed)."""
        fingerprint = hashlib.sha256(body).hexdigest()
        remembered = self._idempotency.get((key, idempotency_key)) if idempotency_key else None
        if remembered is not None:
            if remembered.fingerprint != fingerprint:
                raise Refused(422, "the Idempotency-Key was used with another request body")
            self.idempotent_replays += 1
            return remembered.status, remembered.body, True
        try:
            doc = json.loads(body)
        except ValueError:
            raise Refused(400, "the body is not JSON") from None
        check_lab_sample(doc)
        addressed = _id_at(doc, "laboratory", "license", "code")
        if addressed and addressed != lab.license:
            raise Refused(
                400, f"the sample is addressed to laboratory {addressed}, not {lab.license}", "laboratory"
            )
        sample_id = doc["id"]
        self.create_counts[sample_id] += 1
        answer: dict[str, Any]
        if sample_id in self.samples:
            self.conflicts += 1
            status, answer = 409, {"data": None, "meta": {"note": f"lab sample {sample_id} already exists"}}
        else:
            stored = {**doc, "laboratory": {"license": {"code": lab.license}}}
            stored.update(stat=200, updated_at=_now(), deleted_at=None)
            self.samples[sample_id] = stored
            status, answer = 201, {"data": stored, "meta": {"created": True}}
        if idempotency_key:
            self._idempotency[(key, idempotency_key)] = _Remembered(fingerprint, status, answer)
        return status, answer, False

    def sample(self, lab: Lab, sample_id: str) -> dict[str, Any]:
        """A sample sent to ``lab``.

        Raises:
            Refused: 404 when there is none.

        """
        found = self.samples.get(sample_id)
        if found is None or found["laboratory"]["license"]["code"] != lab.license:
            raise Refused(404, f"lab sample {sample_id} not found")
        return found


FAKE = web.AppKey("fake_lims", FakeLims)


async def _api(request: web.Request) -> web.StreamResponse:
    """Every ``/api/v1/`` request: faults, authentication, then the route."""
    fake = request.app[FAKE]
    rule = fake.faults.draw(request.method, request.path)
    mode = rule.mode if rule is not None else None
    if rule is not None and mode == "error500":
        return _json(500, {"data": None, "meta": {"note": "injected fault: error500"}})
    if rule is not None and mode == "rate_limit":
        headers = {"Retry-After": _faults.retry_after(rule)}
        return _json(429, {"data": None, "meta": {"note": "injected fault: rate_limit"}}, headers)
    if rule is not None and mode == "timeout":
        return await _faults.drop_connection(request, rule.delay_s)
    if rule is not None and mode == "slow":
        await asyncio.sleep(rule.delay_s)
    try:
        answer = await _route(fake, request)
    except Refused as exc:
        answer = _failure(exc)
    if rule is not None and mode == "apply_then_500":
        return _json(500, {"data": None, "meta": {"note": "injected fault: apply_then_500"}})
    if rule is not None and mode == "apply_then_timeout":
        return await _faults.drop_connection(request, rule.delay_s)
    return answer


async def _route(fake: FakeLims, request: web.Request) -> web.Response:
    key, lab = fake.lab_of(request)
    tail = request.match_info["tail"].strip("/")
    if tail == "ping" and request.method == "GET":
        data = {
            "license": {
                "id": f"license-{lab.license}",
                "code": lab.license,
                "name": f"Laboratory {lab.license}",
            },
            "account": {"id": lab.account},
            "time": _now(),
        }
        return _json(200, {"data": data, "meta": {}})
    if tail == "lab_sample" and request.method == "POST":
        if request.content_type != "application/json":
            raise Refused(415, "the body must be application/json")
        status, body, replayed = fake.create(
            key, lab, await request.read(), request.headers.get("Idempotency-Key", "")
        )
        return _json(status, body, {"Idempotent-Replayed": "true"} if replayed else None)
    if tail == "lab_sample" and request.method == "GET":
        mine = [s for s in fake.samples.values() if s["laboratory"]["license"]["code"] == lab.license]
        return _json(200, {"data": mine, "meta": {"count": len(mine)}})
    if tail.startswith("lab_sample/") and request.method in ("GET", "DELETE"):
        found = fake.sample(lab, tail.removeprefix("lab_sample/"))
        if request.method == "DELETE" and found["stat"] != 410:
            found.update(stat=410, deleted_at=_now(), updated_at=_now())
        return _json(200, {"data": found, "meta": {}})
    raise Refused(404, f"{request.method} /api/v1/{tail} is not served by this LIMS")


def _client_tls(seedline: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=seedline.get("ca") or None)
    if seedline.get("client_cert"):
        ctx.load_cert_chain(seedline["client_cert"], seedline.get("client_key") or None)
    return ctx


async def _send(url: str, body: bytes, headers: dict[str, str], tls: ssl.SSLContext) -> dict[str, Any]:
    async with httpx.AsyncClient(verify=tls, timeout=30.0, trust_env=False) as client:
        answer = await client.post(url, content=body, headers=headers)
    try:
        parsed: Any = answer.json() if answer.content else None
    except ValueError:
        parsed = answer.text
    return {"status": answer.status_code, "body": parsed}


def _publish_request(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise Refused(400, "the publish request must be a JSON object")
    unknown = set(raw) - _PUBLISH_KEYS
    if unknown:
        raise Refused(400, f"unknown publish keys: {sorted(unknown)}")
    metrics = raw.get("metrics")
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        raise Refused(400, "metrics must be an array of OpenTHC lab result metrics", "metrics")
    lots = raw.get("lots") or []
    if not isinstance(lots, list) or not all(isinstance(x, str) for x in lots):
        raise Refused(400, "lots must be an array of lot ids", "lots")
    for key in ("sample_id", "event_id", "result_id", "license", "coa", "test_at"):
        if key in raw and not isinstance(raw[key], str):
            raise Refused(400, f"{key} must be a string", key)
    timestamp = raw.get("timestamp")
    if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int)):
        raise Refused(400, "timestamp must be unix seconds", "timestamp")
    return raw


async def _publish(request: web.Request) -> web.Response:
    """``POST /_fake/publish``: build, sign and push a ``lab_result.published`` event to Seedline.

    Request: ``{"sample_id", "lots": [...], "metrics": [{"id", "qom", "uom", "status", ...}],
    "event_id"?, "result_id"?, "license"?, "coa"?, "test_at"?, "timestamp"?, "bad_signature"?,
    "replay"?}``. Metrics are sent as given (so malformed results can be tried). The laboratory
    is ``license``, else the one the sample was sent to, else the first configured key's.
    ``timestamp`` signs with that time instead of now; ``bad_signature`` signs with a wrong
    secret; ``replay`` sends the same signed bytes a second time.

    Answer: ``{"event_id", "event", "status", "body"}`` with Seedline's status and body (and
    ``"replay": {"status", "body"}``); 409 when the Seedline side is not configured, 502 when
    Seedline could not be reached.
    """
    fake = request.app[FAKE]
    try:
        raw = _publish_request(json.loads(await request.read() or b"null"))
    except ValueError:
        return _failure(Refused(400, "the publish request is not JSON"))
    except Refused as exc:
        return _failure(exc)
    target = fake.seedline
    if not target.get("receive_url") or not target.get("signing_secret"):
        return _failure(Refused(409, "configure seedline.receive_url and seedline.signing_secret first"))
    sample_id = str(raw.get("sample_id") or "")
    known = fake.samples.get(sample_id)
    lab_license = str(
        raw.get("license")
        or (known["laboratory"]["license"]["code"] if known else "")
        or next((lab.license for lab in fake.labs.values()), "")
    )
    created = int(time.time())
    event_id = str(raw.get("event_id") or ULID())
    event = lab_result_event(
        event_id=event_id,
        created=created,
        result_id=str(raw.get("result_id") or ULID()),
        lab_license=lab_license,
        sample_id=sample_id,
        lots=list(raw.get("lots") or []),
        metrics=list(raw["metrics"]),
        test_at=str(raw.get("test_at") or (datetime.now(UTC) - timedelta(seconds=1)).isoformat()),
        coa=str(raw.get("coa") or ""),
    )
    body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    secret = target["signing_secret"] + ("-not-the-secret" if raw.get("bad_signature") else "")
    timestamp = raw.get("timestamp") or created
    headers = {
        "Content-Type": "application/json",
        signing.EVENT_ID_HEADER: event_id,
        signing.SIGNATURE_HEADER: signing.sign(secret.encode(), body, int(timestamp)),
    }
    record: dict[str, Any] = {"event_id": event_id, "event": event}
    try:
        tls = _client_tls(target)
        record.update(await _send(target["receive_url"], body, headers, tls))
        if raw.get("replay"):
            record["replay"] = await _send(target["receive_url"], body, headers, tls)
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        record.update(status=None, body=None, error=f"{type(exc).__name__}: {exc}")
        fake.published.append(record)
        return _json(502, record)
    fake.published.append(record)
    return _json(200, record)


async def _state(request: web.Request) -> web.Response:
    return _json(200, request.app[FAKE].state())


async def _reset(request: web.Request) -> web.Response:
    request.app[FAKE].reset()
    return _json(200, {"ok": True})


async def _configure(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    try:
        fake.configure(json.loads(await request.read() or b"null"))
    except ValueError as exc:
        return _json(400, {"data": None, "meta": {"note": f"invalid configuration: {exc}"}})
    return _json(200, {"api_keys": len(fake.labs), "seedline": sorted(fake.seedline)})


async def _faults_admin(request: web.Request) -> web.Response:
    return await _faults.handle_admin(request.app[FAKE].faults, request)


def make_app(config: dict[str, Any] | None = None) -> web.Application:
    """The fake LIMS application.

    Args:
        config: ``{"api_keys": …, "seedline": …}`` (see the module docstring); both parts may
            also be set later by ``POST /_fake/configure``.

    Raises:
        ValueError: the configuration is malformed.

    """
    fake = FakeLims()
    fake.configure(config or {})
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[FAKE] = fake
    app.router.add_route("*", "/api/v1/{tail:.*}", _api)
    app.router.add_get("/_fake/state", _state)
    app.router.add_post("/_fake/reset", _reset)
    app.router.add_post("/_fake/configure", _configure)
    app.router.add_post("/_fake/publish", _publish)
    app.router.add_route("*", "/_fake/faults", _faults_admin)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT (``python -m seedline_server.integrations.fakes.lims``)."""
    from seedline_server.integrations.fakes._serve import command_line

    command_line(
        make_app, name="fake LIMS", description="A fake LIMS (OpenTHC-shaped) for Seedline.", argv=argv
    )


if __name__ == "__main__":
    main()
