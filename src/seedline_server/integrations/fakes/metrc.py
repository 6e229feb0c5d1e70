"""A local fake METRC v2 server (aiohttp over TLS) that enforces METRC's rules.

Built from ``/work/shared/reference/metrc/`` (the v2 endpoint index and the community OpenAPI
description): JSON is PascalCase both ways, request bodies are arrays of rows and a request is
validated as a whole (one bad row and nothing is applied, like METRC), lists are paged (at most
20 a page) and filtered by ``lastModifiedStart``/``lastModifiedEnd`` windows of at most 24 hours.

- **Auth**: HTTP Basic, vendor (software) key as user name, user key as password. Facility-scoped
  calls need ``licenseNumber``, one of the facilities the user key can see.
- **Limits**: 150 requests/s per vendor key, 50 GET/s per facility (sliding 1-second windows) and
  10 requests in flight per facility; beyond them 429 with ``Retry-After: 1``. Only admitted
  requests use up the windows; :class:`Stats` also records what *arrived*, so a benchmark can
  prove the client kept to the limits.
- **Records** live in memory; every record has an increasing ``Id`` and a ``LastModified`` set on
  every change. Plant and package tags are unique across facilities, plant batch, harvest and
  transfer template names within a facility. Locations, items and strains are free text (the fake
  does not model them).
- **Faults** (:mod:`._faults`) are drawn for every METRC request once it is admitted.
- **Admin** (no auth): ``/_fake/state`` (``?summary=1`` for counts only), ``/_fake/reset``,
  ``/_fake/seed``, ``/_fake/faults``.

Run it with ``python -m seedline_server.integrations.fakes.metrc --host H --port P [--cert C
--key K] [--config FILE]``, or in-process with :func:`make_app`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, MutableSet
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from aiohttp import BasicAuth, web

from seedline_server.integrations.fakes import _metrc_schema as schema
from seedline_server.integrations.fakes._faults import (
    FaultRule,
    Faults,
    drop_connection,
    handle_admin,
    partial_rejected_rows,
    retry_after,
)

__all__ = [
    "STATE_KEY",
    "FakeConfig",
    "FakeMetrc",
    "Limits",
    "MetrcError",
    "RowError",
    "Stats",
    "main",
    "make_app",
]

Record = dict[str, Any]
"""A METRC record as the fake stores and returns it (PascalCase keys)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_PAGE_SIZE: Final = 20
MAX_WINDOW: Final = timedelta(hours=24)
UNSCOPED_PATHS: Final = frozenset(
    {
        "/facilities/v2",
        "/unitsofmeasure/v2/active",
        "/labtests/v2/types",
        "/labtests/v2/states",
        "/packages/v2/types",
    }
)
"""Paths that are not facility-scoped (no ``licenseNumber``)."""

PACKAGE_TYPES: Final = ("Product", "ImmaturePlant", "VegetativePlant", "PlantWaste", "HarvestWaste")

_PASCAL = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_TAG = re.compile(r"^[0-9A-Z]{24}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNIT_KEYS: Final = frozenset(
    {"UnitOfWeight", "UnitOfMeasure", "UnitOfMeasureName", "WasteUnitOfMeasureName", "GrossUnitOfWeightName"}
)
_WEIGHT_UNIT_KEYS: Final = frozenset({"UnitOfWeight", "WasteUnitOfMeasureName", "GrossUnitOfWeightName"})
_QUANTUM = Decimal("0.000001")
_MAX_QUANTITY = Decimal(10) ** 12
_MISSING: Final = object()
_VIEW_CACHE_SIZE = 64


# -- errors and JSON --------------------------------------------------------------------------


class MetrcError(Exception):
    """A METRC refusal of the whole request: ``status`` with ``{"Message": message}``.

    Args:
        status: The HTTP status.
        message: The ``Message`` of the answer.
        headers: Extra response headers.

    """

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class RowError(Exception):
    """A refusal of one row of a request body (reported as ``{"row": i, "message": ...}``)."""


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(body: Any) -> bytes:
    return json.dumps(body, default=_default, separators=(",", ":")).encode()


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=_dumps(body), content_type="application/json", headers=headers)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _loads(raw: bytes) -> Any:
    return json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """METRC's limits (the reference's defaults).

    Attributes:
        get_per_facility: GET requests per second and facility.
        per_vendor: Requests per second and vendor key.
        concurrent_per_facility: Requests in flight at once per facility.

    """

    get_per_facility: int = 50
    per_vendor: int = 150
    concurrent_per_facility: int = 10


@dataclass(frozen=True)
class Facility:
    """A facility (license) the fake knows."""

    number: str
    name: str
    license_type: str

    def to_json(self) -> Record:
        """As ``GET /facilities/v2`` lists it."""
        return {
            "HireDate": "2020-01-01",
            "IsOwner": True,
            "IsManager": True,
            "Occupations": [],
            "Name": self.name,
            "Alias": self.name,
            "DisplayName": self.name,
            "CredentialedDate": "2020-01-01",
            "SupportActivationDate": None,
            "SupportExpirationDate": None,
            "SupportLastPaidDate": None,
            "FacilityType": {
                "IsMedical": True,
                "IsRetail": True,
                "IsHemp": False,
                "CanGrowPlants": self.license_type == "Cultivator",
                "CanTagPlantBatches": True,
                "CanTrackVegetativePlants": True,
                "CanCreateDerivedPackages": True,
            },
            "License": {
                "Number": self.number,
                "StartDate": "2020-01-01",
                "EndDate": "2030-12-31",
                "LicenseType": self.license_type,
            },
        }


_CONFIG_KEYS: Final = frozenset(
    {"vendor_keys", "users", "facilities", "limits", "strict_window", "harvest_requires_flowering"}
)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be an array of non-empty strings")
    return tuple(value)


def _positive_int(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"limits.{key} must be a positive integer")
    return value


@dataclass(frozen=True)
class FakeConfig:
    """What the fake accepts: keys, users and their facilities, limits.

    Attributes:
        vendor_keys: Accepted vendor (software) keys.
        users: User key → license numbers of the facilities it can see.
        facilities: Every facility by license number (those only named by a user get defaults).
        limits: The rate and concurrency limits.
        strict_window: Refuse ``lastModified`` windows longer than 24 hours.
        harvest_requires_flowering: Only flowering plants can be harvested (as in METRC).

    """

    vendor_keys: frozenset[str] = frozenset({"vendor-key"})
    users: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {"user-key": ("LIC-1", "LIC-2")})
    facilities: Mapping[str, Facility] = field(
        default_factory=lambda: {
            "LIC-1": Facility("LIC-1", "Fake Farm 1", "Cultivator"),
            "LIC-2": Facility("LIC-2", "Fake Farm 2", "Cultivator"),
        }
    )
    limits: Limits = Limits()
    strict_window: bool = True
    harvest_requires_flowering: bool = True

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> FakeConfig:
        """Read the JSON configuration; every key is optional.

        Args:
            raw: ``{"vendor_keys", "users", "facilities", "limits", "strict_window",
                "harvest_requires_flowering"}`` or None for the defaults.

        Returns:
            The configuration.

        Raises:
            ValueError: If a key is unknown or a value malformed.

        """
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError("the configuration must be a JSON object")
        unknown = set(raw) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        base = cls()
        vendor_keys = (
            frozenset(_strings(raw["vendor_keys"], "vendor_keys"))
            if "vendor_keys" in raw
            else base.vendor_keys
        )
        users = base.users
        if "users" in raw:
            if not isinstance(raw["users"], Mapping) or not raw["users"]:
                raise ValueError("users must be a non-empty object of user key → license numbers")
            users = {str(k): _strings(v, f"users[{k!r}]") for k, v in raw["users"].items()}
        facilities: dict[str, Facility] = {}
        if "facilities" in raw:
            items = raw["facilities"]
            if not isinstance(items, list):
                raise ValueError("facilities must be an array")
            for item in items:
                if not isinstance(item, Mapping) or not isinstance(item.get("Number"), str):
                    raise ValueError("each facility needs a Number")
                number = item["Number"]
                facilities[number] = Facility(
                    number,
                    str(item.get("Name") or f"Fake Facility {number}"),
                    str(item.get("LicenseType") or "Cultivator"),
                )
        else:
            facilities = dict(base.facilities)
        for licenses in users.values():
            for number in licenses:
                facilities.setdefault(number, Facility(number, f"Fake Facility {number}", "Cultivator"))
        limits_raw = raw.get("limits", {})
        if not isinstance(limits_raw, Mapping) or set(limits_raw) - {
            "get_per_facility",
            "per_vendor",
            "concurrent_per_facility",
        }:
            raise ValueError("limits takes get_per_facility, per_vendor, concurrent_per_facility")
        limits = Limits(
            _positive_int(limits_raw, "get_per_facility", base.limits.get_per_facility),
            _positive_int(limits_raw, "per_vendor", base.limits.per_vendor),
            _positive_int(limits_raw, "concurrent_per_facility", base.limits.concurrent_per_facility),
        )
        flags = {}
        for key in ("strict_window", "harvest_requires_flowering"):
            value = raw.get(key, getattr(base, key))
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
            flags[key] = value
        return cls(vendor_keys, users, facilities, limits, **flags)


# -- statistics and limits --------------------------------------------------------------------


class _Window:
    """Event times within the last second."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def size(self, now: float) -> int:
        times = self.times
        while times and times[0] <= now - 1.0:
            times.popleft()
        return len(times)

    def add(self, now: float) -> int:
        self.times.append(now)
        return self.size(now)


@dataclass
class Stats:
    """Counters of METRC requests (never of ``/_fake/`` ones).

    Attributes:
        requests_total: Requests received.
        by_status: Answers by status (``"dropped"`` when the connection was cut).
        by_route: Requests by ``METHOD /route/{pattern}``.
        rate_limited: 429 answers by cause: ``vendor_rate``, ``facility_get_rate``,
            ``concurrency``, ``fault``.
        max_in_flight: Per facility, the most requests that were in flight at once, counting the
            arriving one even when it was refused: above the limit means a client exceeded it.
        max_per_second_vendor: Per vendor key, the most requests that arrived in any 1-second
            window (refused ones included).
        max_per_second_facility_get: Per facility, the most GETs that arrived in any 1-second
            window (refused ones included).

    """

    requests_total: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_route: Counter[str] = field(default_factory=Counter)
    rate_limited: Counter[str] = field(default_factory=Counter)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    max_per_second_vendor: dict[str, int] = field(default_factory=dict)
    max_per_second_facility_get: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> Record:
        """The counters as JSON."""
        return {
            "requests_total": self.requests_total,
            "by_status": dict(self.by_status),
            "by_route": dict(self.by_route),
            "rate_limited": dict(self.rate_limited),
            "max_in_flight": dict(self.max_in_flight),
            "max_per_second_vendor": dict(self.max_per_second_vendor),
            "max_per_second_facility_get": dict(self.max_per_second_facility_get),
        }


class _Limiter:
    """METRC's sliding-window rate limits and per-facility concurrency."""

    def __init__(self, limits: Limits, stats: Stats) -> None:
        self.limits = limits
        self.stats = stats
        self.vendor: dict[str, _Window] = {}
        self.facility_get: dict[str, _Window] = {}
        self.vendor_arrivals: dict[str, _Window] = {}
        self.facility_get_arrivals: dict[str, _Window] = {}
        self.in_flight: Counter[str] = Counter()

    def admit(self, vendor: str, facility: str | None, is_get: bool, now: float) -> str | None:
        """Count the arrival; return why it is refused, or None once it is admitted (in flight)."""
        stats = self.stats
        seen = self.vendor_arrivals.setdefault(vendor, _Window()).add(now)
        if seen > stats.max_per_second_vendor.get(vendor, 0):
            stats.max_per_second_vendor[vendor] = seen
        if facility is not None:
            if is_get:
                seen = self.facility_get_arrivals.setdefault(facility, _Window()).add(now)
                if seen > stats.max_per_second_facility_get.get(facility, 0):
                    stats.max_per_second_facility_get[facility] = seen
            attempted = self.in_flight[facility] + 1
            if attempted > stats.max_in_flight.get(facility, 0):
                stats.max_in_flight[facility] = attempted
            if attempted > self.limits.concurrent_per_facility:
                return "concurrency"
        vendor_window = self.vendor.setdefault(vendor, _Window())
        if vendor_window.size(now) >= self.limits.per_vendor:
            return "vendor_rate"
        get_window = None
        if facility is not None and is_get:
            get_window = self.facility_get.setdefault(facility, _Window())
            if get_window.size(now) >= self.limits.get_per_facility:
                return "facility_get_rate"
        vendor_window.add(now)
        if get_window is not None:
            get_window.add(now)
        if facility is not None:
            self.in_flight[facility] += 1
        return None

    def release(self, facility: str | None) -> None:
        """The admitted request of ``facility`` is done."""
        if facility is not None:
            self.in_flight[facility] -= 1


# -- undo log ---------------------------------------------------------------------------------


def _restore(target: MutableMapping[Any, Any], key: Any, old: Any) -> None:
    if old is _MISSING:
        target.pop(key, None)
    else:
        target[key] = old


class Txn:
    """The changes of one request, undone if the request (or one of its rows) is refused."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.created: list[tuple[str, str, str]] = []

    def put(self, target: MutableMapping[Any, Any], key: Any, value: Any) -> None:
        """``target[key] = value``."""
        old = target.get(key, _MISSING)
        target[key] = value
        self._undo.append(lambda: _restore(target, key, old))

    def pop(self, target: MutableMapping[Any, Any], key: Any) -> None:
        """``del target[key]``."""
        old = target.pop(key)
        self._undo.append(lambda: _restore(target, key, old))

    def add(self, target: MutableSet[Any], item: Any) -> None:
        """``target.add(item)``."""
        if item not in target:
            target.add(item)
            self._undo.append(lambda: target.discard(item))

    def append(self, target: list[Any], item: Any) -> None:
        """``target.append(item)``."""
        target.append(item)
        self._undo.append(target.pop)

    def created_record(self, kind: str, facility: str, key: str) -> None:
        """Count a creation (``create_counts``) once the request commits."""
        self.append(self.created, (kind, facility, key))

    def mark(self) -> int:
        """A savepoint for :meth:`rollback`."""
        return len(self._undo)

    def rollback(self, mark: int = 0) -> None:
        """Undo every change made since ``mark``."""
        while len(self._undo) > mark:
            self._undo.pop()()


# -- records ----------------------------------------------------------------------------------


class Books:
    """One facility's records, by natural key and by ``Id``."""

    def __init__(self, facility: Facility) -> None:
        self.facility = facility
        self.plants: dict[str, Record] = {}
        self.plant_ids: dict[int, Record] = {}
        self.batches: dict[str, Record] = {}
        self.batch_ids: dict[int, Record] = {}
        self.harvests: dict[str, Record] = {}
        self.harvest_ids: dict[int, Record] = {}
        self.harvest_plants: dict[int, set[int]] = {}
        self.harvest_strains: dict[int, set[str]] = {}
        self.packages: dict[str, Record] = {}
        self.package_ids: dict[int, Record] = {}
        self.lab_results: dict[int, list[Record]] = {}
        self.templates: dict[str, Record] = {}
        self.template_ids: dict[int, Record] = {}
        self.version = 0

    def counts(self) -> dict[str, int]:
        """How many records of each kind."""
        return {
            "plants": len(self.plants),
            "plant_batches": len(self.batches),
            "harvests": len(self.harvests),
            "packages": len(self.packages),
            "lab_results": sum(len(v) for v in self.lab_results.values()),
            "templates": len(self.templates),
        }


def _tracked(p: Record) -> bool:
    return bool(p["State"] == "Tracked")


_VIEWS: Final[dict[str, tuple[str, Callable[[Record], bool]]]] = {
    "plants/vegetative": (
        "plant_ids",
        lambda p: _tracked(p) and p["GrowthPhase"] == "Vegetative" and not p["IsOnHold"],
    ),
    "plants/flowering": (
        "plant_ids",
        lambda p: _tracked(p) and p["GrowthPhase"] == "Flowering" and not p["IsOnHold"],
    ),
    "plants/onhold": ("plant_ids", lambda p: _tracked(p) and bool(p["IsOnHold"])),
    "plants/inactive": ("plant_ids", lambda p: not _tracked(p)),
    "plantbatches/active": ("batch_ids", lambda b: b["UntrackedCount"] > 0),
    "plantbatches/inactive": ("batch_ids", lambda b: b["UntrackedCount"] <= 0),
    "harvests/active": ("harvest_ids", lambda h: h["FinishedDate"] is None and not h["IsOnHold"]),
    "harvests/onhold": ("harvest_ids", lambda h: h["FinishedDate"] is None and bool(h["IsOnHold"])),
    "harvests/inactive": ("harvest_ids", lambda h: h["FinishedDate"] is not None),
    "packages/active": ("package_ids", lambda p: p["FinishedDate"] is None and not p["IsOnHold"]),
    "packages/onhold": ("package_ids", lambda p: p["FinishedDate"] is None and bool(p["IsOnHold"])),
    "packages/inactive": ("package_ids", lambda p: p["FinishedDate"] is not None),
    "templates/outgoing": ("template_ids", lambda t: True),
}


# -- request context and field helpers ---------------------------------------------------------


@dataclass
class Ctx:
    """What a METRC handler works with: the fake, the facility's books, the request's time."""

    fake: FakeMetrc
    books: Books | None
    path: str
    now: float
    rows: list[Any] | None = None
    partial: bool = False

    @property
    def fac(self) -> Books:
        """The facility's books (facility-scoped calls only)."""
        assert self.books is not None
        return self.books

    @property
    def license(self) -> str:
        """The facility's license number."""
        return self.fac.facility.number

    def stamp(self, txn: Txn, record: Record) -> None:
        """Set ``LastModified`` of ``record`` to the request's time."""
        txn.put(record, "LastModified", _iso(self.now))
        txn.put(self.fake.mtime, record["Id"], self.now)

    def duplicate(self, kind: str, key: str, what: str) -> RowError:
        """Record a duplicate creation attempt; the error to raise."""
        self.fake.duplicate_attempts.append(
            {"kind": kind, "key": key, "path": self.path, "license": self.license}
        )
        return RowError(f"{what} already exists")


def _get(row: Mapping[str, Any], key: str) -> Any:
    value = row.get(key)
    if value is None:
        raise RowError(f"{key} is required")
    return value


def _text(row: Mapping[str, Any], key: str) -> str:
    value = _get(row, key)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"{key} must be a non-empty string")
    return value.strip()


def _opt_text(row: Mapping[str, Any], key: str) -> str | None:
    return _text(row, key) if row.get(key) is not None else None


def _int(row: Mapping[str, Any], key: str, low: int = 1) -> int:
    value = _get(row, key)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RowError(f"{key} must be an integer ≥ {low}")
    return value


def _quantity(value: Decimal) -> Decimal:
    if abs(value) > _MAX_QUANTITY:
        raise RowError(f"quantity {value} is too large")
    return value.quantize(_QUANTUM)


def _num(row: Mapping[str, Any], key: str, *, positive: bool = False, signed: bool = False) -> Decimal:
    value = _get(row, key)
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise RowError(f"{key} must be a number")
    number = _quantity(Decimal(value))
    if positive and number <= 0:
        raise RowError(f"{key} must be greater than 0")
    if not signed and number < 0:
        raise RowError(f"{key} must not be negative")
    return number


def _bool(row: Mapping[str, Any], key: str) -> bool:
    value = _get(row, key)
    if not isinstance(value, bool):
        raise RowError(f"{key} must be true or false")
    return value


def _day(row: Mapping[str, Any], key: str) -> str:
    """A required date (already checked by :func:`_shape`) as ``YYYY-MM-DD``."""
    return str(_get(row, key))[:10]


def _unit(row: Mapping[str, Any], key: str, quantity_type: str | None = None) -> schema.Unit:
    name = _get(row, key)
    unit = schema.UNITS.get(name) if isinstance(name, str) else None
    if unit is None:
        raise RowError(f"{key} {name!r} is not an active unit of measure")
    if quantity_type is not None and unit.quantity_type != quantity_type:
        raise RowError(f"{key} {name!r} is not a {quantity_type} unit")
    return unit


def _convert(quantity: Decimal, source: schema.Unit, target: schema.Unit) -> Decimal:
    if source.quantity_type != target.quantity_type:
        raise RowError(f"{source.name} cannot be converted to {target.name}")
    if source.name == target.name:
        return quantity
    return _quantity(quantity * source.factor / target.factor)


def _check_date(key: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{key} must be a date (YYYY-MM-DD) or an ISO 8601 date-time"
    try:
        if _DATE.match(value):
            date.fromisoformat(value)
        else:
            datetime.fromisoformat(value)
    except ValueError:
        return f"{key} {value!r} is not a date (YYYY-MM-DD) or an ISO 8601 date-time"
    return None


def _check_unit(key: str, value: Any) -> str | None:
    unit = schema.UNITS.get(value) if isinstance(value, str) else None
    if unit is None:
        return f"{key} {value!r} is not an active unit of measure"
    if key in _WEIGHT_UNIT_KEYS and unit.quantity_type != "WeightBased":
        return f"{key} {value!r} is not a unit of weight"
    return None


def _shape(obj: Mapping[str, Any], fields: schema.Fields, where: str = "") -> str | None:
    """The first problem of a body object's keys, dates and units, or None."""
    for key, value in obj.items():
        name = f"{where}{key}"
        if not isinstance(key, str) or not _PASCAL.match(key):
            return f"field '{name}' is not PascalCase (METRC field names are PascalCase)"
        opaque = fields is schema.OPAQUE
        if not opaque and key not in fields.names:
            return f"field '{name}' is not a field of this request"
        nested = schema.OPAQUE if opaque else fields.nested.get(key)
        if value is None:
            continue
        if nested is not None and isinstance(value, dict | list):
            items = value if isinstance(value, list) else [value]
            for j, item in enumerate(items):
                if not isinstance(item, dict):
                    if opaque:
                        continue
                    return f"{name}[{j}] must be an object"
                problem = _shape(item, nested, f"{name}[{j}].")
                if problem is not None:
                    return problem
        elif nested is not None and not opaque:
            return f"{name} must be an array of objects"
        elif key.endswith(("Date", "DateTime")):
            problem = _check_date(name, value)
            if problem is not None:
                return problem
        elif key in _UNIT_KEYS:
            problem = _check_unit(name, value)
            if problem is not None:
                return problem
    return None


def _tags_from(start: str, count: int) -> list[str]:
    if not _TAG.match(start):
        raise RowError(f"StartingTag {start!r} is not a 24-character tag")
    digits = re.search(r"\d+$", start)
    if digits is None:
        raise RowError(f"StartingTag {start!r} does not end with digits")
    head, tail = start[: digits.start()], digits.group()
    first = int(tail)
    if len(str(first + count - 1)) > len(tail):
        raise RowError(f"StartingTag {start!r} has fewer than {count} tags after it")
    return [f"{head}{first + i:0{len(tail)}d}" for i in range(count)]


def _new_tag(ctx: Ctx, tag: str, kind: str) -> None:
    if not _TAG.match(tag):
        raise RowError(f"tag {tag!r} is not a 24-character tag")
    if tag in ctx.fake.tags:
        raise ctx.duplicate(kind, tag, f"tag {tag}")


RowFn = Callable[[Ctx, Record, Txn], None]


# -- the fake ---------------------------------------------------------------------------------


class FakeMetrc:
    """The fake's state: configuration, records, counters, limits and fault rules.

    Args:
        config: What it accepts (defaults: :class:`FakeConfig`).

    """

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.faults = Faults()
        self.reset()

    def reset(self) -> None:
        """Forget every record, counter and fault rule."""
        self.books: dict[str, Books] = {n: Books(f) for n, f in self.config.facilities.items()}
        self.tags: dict[str, str] = {}  # plant and package tags → license number
        self.mtime: dict[int, float] = {}  # record Id → LastModified (epoch seconds)
        self.create_counts: Counter[tuple[str, str, str]] = Counter()
        self.duplicate_attempts: list[Record] = []
        self.stats = Stats()
        self.limiter = _Limiter(self.config.limits, self.stats)
        self.faults.reset()
        self._ids = itertools.count(1)
        self._views: OrderedDict[tuple[str, str, float | None, float | None], tuple[int, list[Record]]] = (
            OrderedDict()
        )

    def next_id(self) -> int:
        """A new record ``Id``."""
        return next(self._ids)

    # -- reading lists -----------------------------------------------------------------------

    def listing(self, books: Books, view: str, window: tuple[float, float] | None) -> list[Record]:
        """The records of ``view`` (by ``Id``), within ``window``; cached until the books change."""
        key = (books.facility.number, view, window[0] if window else None, window[1] if window else None)
        hit = self._views.get(key)
        if hit is not None and hit[0] == books.version:
            self._views.move_to_end(key)
            return hit[1]
        collection, keep = _VIEWS[view]
        source: dict[int, Record] = getattr(books, collection)
        if window is None:
            out = [r for r in source.values() if keep(r)]
        else:
            low, high = window
            mtime = self.mtime
            out = [r for r in source.values() if low <= mtime[r["Id"]] <= high and keep(r)]
        self._views[key] = (books.version, out)
        if len(self._views) > _VIEW_CACHE_SIZE:
            self._views.popitem(last=False)
        return out

    # -- writing -----------------------------------------------------------------------------

    def write(self, ctx: Ctx, fields: schema.Fields, apply: RowFn) -> web.Response:
        """Validate and apply every row of the body; all or nothing (but see ``partial``)."""
        rows = ctx.rows
        if not isinstance(rows, list):
            raise MetrcError(400, "The request body must be a JSON array of objects")
        if not rows:
            raise MetrcError(400, "The request body has no rows")
        rejected = set(partial_rejected_rows(len(rows))) if ctx.partial else set()
        errors: list[Record] = []
        genuine = False
        txn = Txn()
        for i, row in enumerate(rows):
            if i in rejected:
                errors.append({"row": i, "message": "rejected (injected partial fault)"})
                continue
            mark = txn.mark()
            try:
                if not isinstance(row, dict):
                    raise RowError("each row must be a JSON object")
                problem = _shape(row, fields)
                if problem is not None:
                    raise RowError(problem)
                apply(ctx, row, txn)
            except RowError as exc:
                txn.rollback(mark)
                errors.append({"row": i, "message": str(exc)})
                genuine = True
        books = ctx.fac
        books.version += 1
        if genuine:
            txn.rollback()
            return _json(400, errors)
        for kind, facility, key in txn.created:
            self.create_counts[(kind, facility, key)] += 1
        if errors:
            return _json(400, errors)
        return web.Response(status=200)

    # -- admin -------------------------------------------------------------------------------

    def _keyed(self, kind: str, per_facility: bool) -> dict[str, Record]:
        """Records of every facility by natural key (``LICENSE/name`` where names collide)."""
        collection = {
            "plants": "plants",
            "plant_batches": "batches",
            "harvests": "harvests",
            "packages": "packages",
            "templates": "templates",
        }[kind]
        seen: Counter[str] = Counter()
        for books in self.books.values():
            seen.update(getattr(books, collection).keys())
        out: dict[str, Record] = {}
        for number, books in self.books.items():
            for key, record in getattr(books, collection).items():
                name = f"{number}/{key}" if per_facility and seen[key] > 1 else key
                out[name] = {**record, "_license": number}
        return out

    def _create_counts(self) -> dict[str, int]:
        seen: Counter[tuple[str, str]] = Counter((kind, key) for kind, _, key in self.create_counts)
        return {
            f"{kind}:{number}/{key}" if seen[(kind, key)] > 1 else f"{kind}:{key}": n
            for (kind, number, key), n in self.create_counts.items()
        }

    def summary(self) -> Record:
        """Record counts, creation counts over one, duplicate attempts and stats."""
        counts: Counter[str] = Counter()
        for books in self.books.values():
            counts.update(books.counts())
        create_counts = self._create_counts()
        return {
            "counts": dict(counts),
            "facilities": {n: b.counts() for n, b in self.books.items()},
            "create_counts_over_one": {k: v for k, v in create_counts.items() if v > 1},
            "duplicate_attempts": len(self.duplicate_attempts),
            "stats": self.stats.to_json(),
            "faults": self.faults.summary(),
        }

    def state(self) -> Record:
        """Every record collection, creation counts, duplicate attempts and stats."""
        lab_results: dict[str, list[Record]] = {}
        for books in self.books.values():
            for package_id, results in books.lab_results.items():
                lab_results[books.package_ids[package_id]["Label"]] = results
        return {
            "plants": self._keyed("plants", False),
            "plant_batches": self._keyed("plant_batches", True),
            "harvests": self._keyed("harvests", True),
            "packages": self._keyed("packages", False),
            "lab_results": lab_results,
            "templates": self._keyed("templates", True),
            "create_counts": self._create_counts(),
            "duplicate_attempts": list(self.duplicate_attempts),
            "stats": self.stats.to_json(),
            "faults": self.faults.summary(),
        }

    def seed(self, spec: Any) -> Record:
        """Insert records directly (records METRC has and Seedline does not).

        Args:
            spec: ``{"license": "LIC-1", "plants": [...], "packages": [...]}``; each record
                may name its own ``LicenseNumber`` and ``LastModified``; ``Label`` is required.

        Returns:
            ``{"plants": {label: id}, "packages": {label: id}}``.

        Raises:
            MetrcError: 400 for a malformed specification (nothing is inserted then).

        """
        if not isinstance(spec, dict) or set(spec) - {"license", "plants", "packages"}:
            raise MetrcError(400, "seed takes an object with license, plants, packages")
        default = spec.get("license") or next(iter(self.books))
        txn = Txn()
        now = time.time()
        out: dict[str, dict[str, int]] = {"plants": {}, "packages": {}}
        touched: set[str] = set()
        try:
            for kind in ("plants", "packages"):
                items = spec.get(kind, [])
                if not isinstance(items, list):
                    raise RowError(f"{kind} must be an array")
                for item in items:
                    if not isinstance(item, dict):
                        raise RowError(f"each of {kind} must be an object")
                    number = str(item.get("LicenseNumber", default))
                    books = self.books.get(number)
                    if books is None:
                        raise RowError(f"unknown facility {number!r}")
                    touched.add(number)
                    record = (self._seed_plant if kind == "plants" else self._seed_package)(
                        books, item, txn, now
                    )
                    out[kind][record["Label"]] = record["Id"]
        except RowError as exc:
            txn.rollback()
            raise MetrcError(400, f"invalid seed: {exc}") from exc
        finally:
            for number in touched:
                self.books[number].version += 1
        for kind, facility, key in txn.created:
            self.create_counts[(kind, facility, key)] += 1
        return out

    def _seed_stamp(self, record: Record, item: Mapping[str, Any], txn: Txn, now: float) -> None:
        stamp = item.get("LastModified")
        if stamp is None:
            when = now
        else:
            try:
                parsed = datetime.fromisoformat(str(stamp))
            except ValueError as exc:
                raise RowError(f"LastModified {stamp!r} is not an ISO 8601 date-time") from exc
            if parsed.tzinfo is None:
                raise RowError(f"LastModified {stamp!r} has no UTC offset")
            when = parsed.timestamp()
        record["LastModified"] = _iso(when)
        txn.put(self.mtime, record["Id"], when)

    def _claim_tag(self, books: Books, label: Any, txn: Txn) -> str:
        if not isinstance(label, str) or not _TAG.match(label):
            raise RowError(f"Label {label!r} is not a 24-character tag")
        if label in self.tags:
            raise RowError(f"tag {label} already exists")
        txn.put(self.tags, label, books.facility.number)
        return label

    def _seed_plant(self, books: Books, item: Mapping[str, Any], txn: Txn, now: float) -> Record:
        label = self._claim_tag(books, item.get("Label"), txn)
        phase = item.get("GrowthPhase", "Vegetative")
        state = item.get("State", "Tracked" if phase in ("Vegetative", "Flowering") else phase)
        record = _plant_record(
            self.next_id(),
            label,
            phase=str(phase),
            batch=None,
            location=str(item.get("LocationName", "Seeded Room")),
            day=str(item.get("PlantedDate", _iso(now)[:10])),
        )
        for key in ("StrainName", "PlantBatchName", "IsOnHold", "HarvestedDate", "DestroyedDate"):
            if key in item:
                record[key] = item[key]
        record["State"] = state
        self._seed_stamp(record, item, txn, now)
        txn.put(books.plants, label, record)
        txn.put(books.plant_ids, record["Id"], record)
        txn.created_record("plant", books.facility.number, label)
        return record

    def _seed_package(self, books: Books, item: Mapping[str, Any], txn: Txn, now: float) -> Record:
        label = self._claim_tag(books, item.get("Label"), txn)
        unit = _unit(item, "UnitOfMeasureName") if "UnitOfMeasureName" in item else schema.UNITS["Grams"]
        quantity = _num(item, "Quantity") if "Quantity" in item else Decimal(0)
        record = _package_record(
            self.next_id(),
            label,
            item=str(item.get("ItemName", "Seeded Item")),
            quantity=quantity,
            unit=unit,
            location=str(item.get("LocationName", "Seeded Vault")),
            day=str(item.get("PackagedDate", _iso(now)[:10])),
            harvests=str(item.get("SourceHarvestNames", "")),
            packages="",
        )
        for key in ("LabTestingState", "IsOnHold", "FinishedDate"):
            if key in item:
                record[key] = item[key]
        self._seed_stamp(record, item, txn, now)
        txn.put(books.packages, label, record)
        txn.put(books.package_ids, record["Id"], record)
        txn.created_record("package", books.facility.number, label)
        return record


def _plant_record(
    record_id: int, label: str, *, phase: str, batch: Record | None, location: str, day: str
) -> Record:
    return {
        "Id": record_id,
        "Label": label,
        "State": "Tracked",
        "GrowthPhase": phase,
        "PlantBatchId": batch["Id"] if batch else None,
        "PlantBatchName": batch["Name"] if batch else None,
        "PlantBatchTypeName": batch["Type"] if batch else None,
        "StrainName": batch["StrainName"] if batch else None,
        "LocationName": location,
        "PatientLicenseNumber": None,
        "HarvestId": None,
        "HarvestedUnitOfWeightName": None,
        "HarvestedWetWeight": None,
        "HarvestCount": 0,
        "IsOnHold": False,
        "PlantedDate": batch["PlantedDate"] if batch else day,
        "VegetativeDate": day,
        "FloweringDate": day if phase == "Flowering" else None,
        "HarvestedDate": None,
        "DestroyedDate": None,
        "DestroyedNote": None,
        "LastModified": None,
    }


def _package_record(
    record_id: int,
    label: str,
    *,
    item: str,
    quantity: Decimal,
    unit: schema.Unit,
    location: str,
    day: str,
    harvests: str,
    packages: str,
) -> Record:
    return {
        "Id": record_id,
        "Label": label,
        "PackageType": "Product",
        "Item": {"Name": item},
        "ItemName": item,
        "Quantity": quantity,
        "UnitOfMeasureName": unit.name,
        "UnitOfMeasureAbbreviation": unit.abbreviation,
        "LocationName": location,
        "SourceHarvestNames": harvests,
        "SourceHarvestCount": len([h for h in harvests.split(", ") if h]),
        "SourcePackageLabels": packages,
        "SourcePackageCount": len([p for p in packages.split(", ") if p]),
        "PatientLicenseNumber": None,
        "Note": None,
        "PackagedDate": day,
        "InitialLabTestingState": "NotSubmitted",
        "LabTestingState": "NotSubmitted",
        "LabTestingStateDate": None,
        "IsProductionBatch": False,
        "ProductionBatchNumber": None,
        "IsTradeSample": False,
        "IsDonation": False,
        "ProductRequiresRemediation": False,
        "IsOnHold": False,
        "IsFinished": False,
        "FinishedDate": None,
        "ArchivedDate": None,
        "LastModified": None,
    }


# -- row handlers: plant batches and plants ----------------------------------------------------


def _batch_plantings(ctx: Ctx, row: Record, txn: Txn) -> None:
    books = ctx.fac
    name = _text(row, "Name")
    kind = _text(row, "Type")
    if kind not in ("Seed", "Clone"):
        raise RowError(f"Type must be Seed or Clone, not {kind!r}")
    count = _int(row, "Count")
    strain, location, day = _text(row, "Strain"), _text(row, "Location"), _day(row, "ActualDate")
    if name in books.batches:
        raise ctx.duplicate("batch", name, f"plant batch {name}")
    batch: Record = {
        "Id": ctx.fake.next_id(),
        "Name": name,
        "Type": kind,
        "PlantBatchTypeName": kind,
        "LocationName": location,
        "StrainName": strain,
        "PatientLicenseNumber": row.get("PatientLicenseNumber"),
        "Count": count,
        "UntrackedCount": count,
        "TrackedCount": 0,
        "PackagedCount": 0,
        "HarvestedCount": 0,
        "DestroyedCount": 0,
        "SourcePackageLabel": None,
        "SourcePlantLabel": None,
        "PlantedDate": day,
        "IsOnHold": False,
        "LastModified": None,
    }
    ctx.stamp(txn, batch)
    txn.put(books.batches, name, batch)
    txn.put(books.batch_ids, batch["Id"], batch)
    txn.created_record("batch", ctx.license, name)


def _batch_of(ctx: Ctx, name: str) -> Record:
    batch = ctx.fac.batches.get(name)
    if batch is None:
        raise RowError(f"plant batch {name} was not found in facility {ctx.license}")
    return batch


def _take_untracked(ctx: Ctx, txn: Txn, batch: Record, count: int, counter: str) -> None:
    if batch["UntrackedCount"] < count:
        raise RowError(
            f"plant batch {batch['Name']} has {batch['UntrackedCount']} untracked plants, not {count}"
        )
    txn.put(batch, "UntrackedCount", batch["UntrackedCount"] - count)
    txn.put(batch, "Count", batch["UntrackedCount"])
    txn.put(batch, counter, batch[counter] + count)
    ctx.stamp(txn, batch)


def _batch_growthphase(ctx: Ctx, row: Record, txn: Txn) -> None:
    batch = _batch_of(ctx, _text(row, "Name"))
    count = _int(row, "Count")
    phase = _text(row, "GrowthPhase")
    if phase not in ("Vegetative", "Flowering"):
        raise RowError(f"GrowthPhase must be Vegetative or Flowering, not {phase!r}")
    location, day = _text(row, "NewLocation"), _day(row, "GrowthDate")
    tags = _tags_from(_text(row, "StartingTag"), count)
    _take_untracked(ctx, txn, batch, count, "TrackedCount")
    books = ctx.fac
    for tag in tags:
        _new_tag(ctx, tag, "plant")
        plant = _plant_record(ctx.fake.next_id(), tag, phase=phase, batch=batch, location=location, day=day)
        ctx.stamp(txn, plant)
        txn.put(ctx.fake.tags, tag, ctx.license)
        txn.put(books.plants, tag, plant)
        txn.put(books.plant_ids, plant["Id"], plant)
        txn.created_record("plant", ctx.license, tag)


def _batch_destroy(ctx: Ctx, row: Record, txn: Txn) -> None:
    batch = _batch_of(ctx, _text(row, "PlantBatch"))
    count = _int(row, "Count")
    _text(row, "ReasonNote")
    _day(row, "ActualDate")
    _take_untracked(ctx, txn, batch, count, "DestroyedCount")


def _plant_of(ctx: Ctx, row: Record, key: str = "Label") -> Record:
    """The active plant a row names by ``key`` (a label) or ``Id``."""
    books = ctx.fac
    if row.get(key) is not None:
        label = _text(row, key)
        plant = books.plants.get(label)
        what = label
    elif row.get("Id") is not None:
        plant_id = _int(row, "Id")
        plant = books.plant_ids.get(plant_id)
        what = str(plant_id)
    else:
        raise RowError(f"{key} (or Id) is required")
    if plant is None:
        raise RowError(f"plant {what} was not found in facility {ctx.license}")
    if plant["State"] != "Tracked":
        raise RowError(f"plant {plant['Label']} is not active ({plant['State']})")
    return plant


def _plant_growthphase(ctx: Ctx, row: Record, txn: Txn) -> None:
    plant = _plant_of(ctx, row)
    phase = _text(row, "GrowthPhase")
    if phase not in ("Vegetative", "Flowering"):
        raise RowError(f"GrowthPhase must be Vegetative or Flowering, not {phase!r}")
    if plant["GrowthPhase"] == "Flowering" and phase == "Vegetative":
        raise RowError(f"plant {plant['Label']} is flowering and cannot go back to vegetative")
    location, day = _text(row, "NewLocation"), _day(row, "GrowthDate")
    new_tag = _opt_text(row, "NewTag")
    if new_tag is not None and new_tag != plant["Label"]:
        _new_tag(ctx, new_tag, "plant")
        books = ctx.fac
        txn.pop(books.plants, plant["Label"])
        txn.put(ctx.fake.tags, new_tag, ctx.license)
        txn.put(books.plants, new_tag, plant)
        txn.put(plant, "Label", new_tag)
        txn.created_record("plant", ctx.license, new_tag)
    if phase == "Flowering" and plant["GrowthPhase"] != "Flowering":
        txn.put(plant, "FloweringDate", day)
    if phase == "Vegetative" and plant["VegetativeDate"] is None:
        txn.put(plant, "VegetativeDate", day)
    txn.put(plant, "GrowthPhase", phase)
    txn.put(plant, "LocationName", location)
    ctx.stamp(txn, plant)


def _plant_location(ctx: Ctx, row: Record, txn: Txn) -> None:
    plant = _plant_of(ctx, row)
    location = _text(row, "Location")
    _day(row, "ActualDate")
    txn.put(plant, "LocationName", location)
    ctx.stamp(txn, plant)


def _harvest_into(ctx: Ctx, row: Record, txn: Txn, *, whole: bool) -> None:
    plant = _plant_of(ctx, row, "Plant")
    if whole and ctx.fake.config.harvest_requires_flowering and plant["GrowthPhase"] != "Flowering":
        raise RowError(
            f"plant {plant['Label']} is {plant['GrowthPhase']}: only flowering plants are harvested"
        )
    weight = _num(row, "Weight", positive=True)
    unit = _unit(row, "UnitOfWeight", "WeightBased")
    grams = _convert(weight, unit, schema.UNITS["Grams"])
    location, name, day = _text(row, "DryingLocation"), _text(row, "HarvestName"), _day(row, "ActualDate")
    books = ctx.fac
    harvest = books.harvests.get(name)
    if harvest is None:
        harvest = {
            "Id": ctx.fake.next_id(),
            "Name": name,
            "HarvestType": "WholePlant" if whole else "Manicure",
            "SourceStrainCount": 0,
            "SourceStrainNames": "",
            "DryingLocationName": location,
            "PatientLicenseNumber": None,
            "CurrentWeight": Decimal(0),
            "TotalWasteWeight": Decimal(0),
            "PlantCount": 0,
            "TotalWetWeight": Decimal(0),
            "TotalRestoredWeight": Decimal(0),
            "PackageCount": 0,
            "TotalPackagedWeight": Decimal(0),
            "UnitOfWeightName": "Grams",
            "LabTestingState": "NotSubmitted",
            "LabTestingStateDate": None,
            "IsOnHold": False,
            "HarvestStartDate": day,
            "FinishedDate": None,
            "ArchivedDate": None,
            "LastModified": None,
        }
        txn.put(books.harvests, name, harvest)
        txn.put(books.harvest_ids, harvest["Id"], harvest)
        txn.put(books.harvest_plants, harvest["Id"], set())
        txn.put(books.harvest_strains, harvest["Id"], set())
        txn.created_record("harvest", ctx.license, name)
    elif harvest["FinishedDate"] is not None:
        raise RowError(f"harvest {name} is finished")
    plants, strains = books.harvest_plants[harvest["Id"]], books.harvest_strains[harvest["Id"]]
    txn.add(plants, plant["Id"])
    if plant["StrainName"]:
        txn.add(strains, plant["StrainName"])
    txn.put(harvest, "PlantCount", len(plants))
    txn.put(harvest, "SourceStrainCount", len(strains))
    txn.put(harvest, "SourceStrainNames", ", ".join(sorted(strains)))
    txn.put(harvest, "CurrentWeight", harvest["CurrentWeight"] + grams)
    txn.put(harvest, "TotalWetWeight", harvest["TotalWetWeight"] + grams)
    ctx.stamp(txn, harvest)
    txn.put(plant, "HarvestCount", plant["HarvestCount"] + 1)
    txn.put(plant, "HarvestId", harvest["Id"])
    txn.put(plant, "HarvestedWetWeight", (plant["HarvestedWetWeight"] or Decimal(0)) + grams)
    txn.put(plant, "HarvestedUnitOfWeightName", "Grams")
    if whole:
        txn.put(plant, "State", "Harvested")
        txn.put(plant, "GrowthPhase", "Harvested")
        txn.put(plant, "HarvestedDate", day)
    ctx.stamp(txn, plant)


def _plant_harvest(ctx: Ctx, row: Record, txn: Txn) -> None:
    books = ctx.fac
    label = row.get("Plant")
    plant = books.plants.get(label) if isinstance(label, str) else None
    if plant is not None and plant["State"] == "Harvested":
        raise RowError(f"plant {label} was already harvested")
    _harvest_into(ctx, row, txn, whole=True)


def _plant_manicure(ctx: Ctx, row: Record, txn: Txn) -> None:
    _harvest_into(ctx, row, txn, whole=False)


def _plant_destroy(ctx: Ctx, row: Record, txn: Txn) -> None:
    plant = _plant_of(ctx, row)
    _text(row, "WasteMethodName")
    _text(row, "WasteReasonName")
    _num(row, "WasteWeight")
    _unit(row, "WasteUnitOfMeasureName", "WeightBased")
    day = _day(row, "ActualDate")
    txn.put(plant, "State", "Destroyed")
    txn.put(plant, "GrowthPhase", "Destroyed")
    txn.put(plant, "DestroyedDate", day)
    txn.put(plant, "DestroyedNote", row.get("ReasonNote"))
    ctx.stamp(txn, plant)


# -- row handlers: harvests, packages, lab tests, transfer templates ----------------------------


def _add_package(ctx: Ctx, txn: Txn, record: Record) -> None:
    books = ctx.fac
    ctx.stamp(txn, record)
    txn.put(ctx.fake.tags, record["Label"], ctx.license)
    txn.put(books.packages, record["Label"], record)
    txn.put(books.package_ids, record["Id"], record)
    txn.created_record("package", ctx.license, record["Label"])


def _harvest_packages(ctx: Ctx, row: Record, txn: Txn) -> None:
    books = ctx.fac
    tag = _text(row, "Tag")
    _new_tag(ctx, tag, "package")
    location, item, day = _text(row, "Location"), _text(row, "Item"), _day(row, "ActualDate")
    unit = _unit(row, "UnitOfWeight", "WeightBased")
    ingredients = _get(row, "Ingredients")
    if not isinstance(ingredients, list) or not ingredients:
        raise RowError("Ingredients must name at least one harvest")
    total = Decimal(0)
    names: list[str] = []
    for ingredient in ingredients:
        if ingredient.get("HarvestName") is not None:
            harvest = books.harvests.get(_text(ingredient, "HarvestName"))
        elif ingredient.get("HarvestId") is not None:
            harvest = books.harvest_ids.get(_int(ingredient, "HarvestId"))
        else:
            raise RowError("each ingredient needs HarvestName or HarvestId")
        if harvest is None:
            raise RowError(
                f"harvest {ingredient.get('HarvestName') or ingredient.get('HarvestId')} not found"
            )
        if harvest["FinishedDate"] is not None:
            raise RowError(f"harvest {harvest['Name']} is finished")
        weight = _num(ingredient, "Weight", positive=True)
        source = _unit(ingredient, "UnitOfWeight", "WeightBased")
        grams = _convert(weight, source, schema.UNITS["Grams"])
        left = harvest["CurrentWeight"] - grams
        if left < 0:
            raise RowError(f"harvest {harvest['Name']} has {harvest['CurrentWeight']} g left, not {grams} g")
        txn.put(harvest, "CurrentWeight", left)
        txn.put(harvest, "TotalPackagedWeight", harvest["TotalPackagedWeight"] + grams)
        if harvest["Name"] not in names:
            txn.put(harvest, "PackageCount", harvest["PackageCount"] + 1)
            names.append(harvest["Name"])
        ctx.stamp(txn, harvest)
        total += _convert(weight, source, unit)
    record = _package_record(
        ctx.fake.next_id(),
        tag,
        item=item,
        quantity=_quantity(total),
        unit=unit,
        location=location,
        day=day,
        harvests=", ".join(names),
        packages="",
    )
    _package_flags(record, row)
    _add_package(ctx, txn, record)


def _package_flags(record: Record, row: Record) -> None:
    for key in ("Note", "IsProductionBatch", "ProductionBatchNumber", "IsTradeSample", "IsDonation"):
        if row.get(key) is not None:
            record[key] = row[key]
    if row.get("ProductRequiresRemediation") is not None:
        record["ProductRequiresRemediation"] = row["ProductRequiresRemediation"]
    if row.get("PatientLicenseNumber") is not None:
        record["PatientLicenseNumber"] = row["PatientLicenseNumber"]


def _active_package(ctx: Ctx, label: str) -> Record:
    package = ctx.fac.packages.get(label)
    if package is None:
        raise RowError(f"package {label} was not found in facility {ctx.license}")
    if package["FinishedDate"] is not None:
        raise RowError(f"package {label} is finished")
    return package


def _packages_create(ctx: Ctx, row: Record, txn: Txn) -> None:
    tag = _text(row, "Tag")
    _new_tag(ctx, tag, "package")
    location, item, day = _text(row, "Location"), _text(row, "Item"), _day(row, "ActualDate")
    quantity = _num(row, "Quantity", positive=True)
    unit = _unit(row, "UnitOfMeasure")
    ingredients = _get(row, "Ingredients")
    if not isinstance(ingredients, list) or not ingredients:
        raise RowError("Ingredients must name at least one package")
    labels: list[str] = []
    harvests: list[str] = []
    for ingredient in ingredients:
        source = _active_package(ctx, _text(ingredient, "Package"))
        amount = _num(ingredient, "Quantity", positive=True)
        amount_unit = _unit(ingredient, "UnitOfMeasure")
        taken = _convert(amount, amount_unit, schema.UNITS[source["UnitOfMeasureName"]])
        left = source["Quantity"] - taken
        if left < 0:
            raise RowError(
                f"package {source['Label']} has {source['Quantity']} {source['UnitOfMeasureName']}, "
                f"not {taken}"
            )
        txn.put(source, "Quantity", left)
        ctx.stamp(txn, source)
        if source["Label"] not in labels:
            labels.append(source["Label"])
        for name in str(source["SourceHarvestNames"] or "").split(", "):
            if name and name not in harvests:
                harvests.append(name)
    record = _package_record(
        ctx.fake.next_id(),
        tag,
        item=item,
        quantity=quantity,
        unit=unit,
        location=location,
        day=day,
        harvests=", ".join(harvests),
        packages=", ".join(labels),
    )
    _package_flags(record, row)
    _add_package(ctx, txn, record)


def _package_adjust(ctx: Ctx, row: Record, txn: Txn) -> None:
    package = _active_package(ctx, _text(row, "Label"))
    delta = _num(row, "Quantity", signed=True)
    unit = _unit(row, "UnitOfMeasure")
    reason = _text(row, "AdjustmentReason")
    if reason not in schema.ADJUST_REASONS:
        raise RowError(f"AdjustmentReason {reason!r} is not one of {sorted(schema.ADJUST_REASONS)}")
    if schema.ADJUST_REASONS[reason]:
        _text(row, "ReasonNote")
    _day(row, "AdjustmentDate")
    change = _convert(delta, unit, schema.UNITS[package["UnitOfMeasureName"]])
    left = package["Quantity"] + change
    if left < 0:
        raise RowError(
            f"adjusting package {package['Label']} by {delta} {unit.name} would leave "
            f"{left} {package['UnitOfMeasureName']}: below zero"
        )
    txn.put(package, "Quantity", left)
    ctx.stamp(txn, package)


def _package_location(ctx: Ctx, row: Record, txn: Txn) -> None:
    package = _active_package(ctx, _text(row, "Label"))
    location = _text(row, "Location")
    _day(row, "MoveDate")
    txn.put(package, "LocationName", location)
    ctx.stamp(txn, package)


def _package_finish(ctx: Ctx, row: Record, txn: Txn) -> None:
    package = _active_package(ctx, _text(row, "Label"))
    day = _day(row, "ActualDate")
    if package["Quantity"] != 0:
        raise RowError(
            f"package {package['Label']} still holds {package['Quantity']} "
            f"{package['UnitOfMeasureName']}: only empty packages can be finished"
        )
    txn.put(package, "FinishedDate", day)
    txn.put(package, "IsFinished", True)
    ctx.stamp(txn, package)


def _harvest_finish(ctx: Ctx, row: Record, txn: Txn) -> None:
    harvest_id = _int(row, "Id")
    day = _day(row, "ActualDate")
    harvest = ctx.fac.harvest_ids.get(harvest_id)
    if harvest is None:
        raise RowError(f"harvest {harvest_id} was not found in facility {ctx.license}")
    if harvest["FinishedDate"] is not None:
        raise RowError(f"harvest {harvest['Name']} is already finished")
    txn.put(harvest, "FinishedDate", day)
    ctx.stamp(txn, harvest)


def _lab_record(ctx: Ctx, row: Record, txn: Txn) -> None:
    books = ctx.fac
    label = _text(row, "Label")
    package = books.packages.get(label)
    if package is None:
        raise RowError(f"package {label} was not found in facility {ctx.license}")
    day = _day(row, "ResultDate")
    results = _get(row, "Results")
    if not isinstance(results, list) or not results:
        raise RowError("Results must hold at least one result")
    names = schema.lab_test_type_names()
    stored: list[Record] = []
    for j, result in enumerate(results):
        type_name = _text(result, "LabTestTypeName")
        if type_name not in names:
            raise RowError(f"Results[{j}].LabTestTypeName {type_name!r} is not a lab test type")
        stored.append(
            {
                "PackageId": package["Id"],
                "LabTestResultId": ctx.fake.next_id(),
                "LabFacilityLicenseNumber": ctx.license,
                "LabFacilityName": books.facility.name,
                "SourcePackageLabel": label,
                "ProductName": package["ItemName"],
                "TestPerformedDate": day,
                "OverallPassed": None,
                "TestTypeName": type_name,
                "TestPassed": _bool(result, "Passed"),
                "TestResultLevel": _num(result, "Quantity", signed=True),
                "TestComment": result.get("Notes"),
                "ResultReleased": True,
                "ResultReleaseDateTime": _iso(ctx.now),
                "RevokedDate": None,
            }
        )
    passed = all(r["TestPassed"] for r in stored)
    for r in stored:
        r["OverallPassed"] = passed
    existing = books.lab_results.get(package["Id"])
    if existing is None:
        existing = []
        txn.put(books.lab_results, package["Id"], existing)
    for r in stored:
        txn.append(existing, r)
    txn.put(package, "LabTestingState", "TestPassed" if passed else "TestFailed")
    txn.put(package, "LabTestingStateDate", day)
    ctx.stamp(txn, package)


def _template_create(ctx: Ctx, row: Record, txn: Txn) -> None:
    books = ctx.fac
    name = _text(row, "Name")
    shipper = row.get("ShipperLicenseNumber")
    if shipper is not None and shipper != ctx.license:
        raise RowError(f"ShipperLicenseNumber {shipper!r} is not the facility {ctx.license}")
    destinations = _get(row, "Destinations")
    if not isinstance(destinations, list) or not destinations:
        raise RowError("Destinations must hold at least one destination")
    package_count = 0
    for j, destination in enumerate(destinations):
        try:
            _text(destination, "RecipientLicenseNumber")
        except RowError as exc:
            raise RowError(f"Destinations[{j}].{exc}") from exc
        lines = destination.get("Packages") or []
        if not isinstance(lines, list):
            raise RowError(f"Destinations[{j}].Packages must be an array")
        for k, line in enumerate(lines):
            label = line.get("PackageLabel")
            package = books.packages.get(label) if isinstance(label, str) else None
            if package is None or package["FinishedDate"] is not None or package["IsOnHold"]:
                raise RowError(
                    f"Destinations[{j}].Packages[{k}].PackageLabel {label!r} is not an active "
                    f"package of facility {ctx.license}"
                )
            package_count += 1
    if name in books.templates:
        raise ctx.duplicate("template", name, f"transfer template {name}")
    template: Record = {
        "Id": ctx.fake.next_id(),
        "Name": name,
        "ShipperFacilityLicenseNumber": ctx.license,
        "ShipperFacilityName": books.facility.name,
        **{k: v for k, v in row.items() if k not in ("Name", "Destinations")},
        "Destinations": destinations,
        "DeliveryCount": len(destinations),
        "PackageCount": package_count,
        "CreatedDateTime": _iso(ctx.now),
        "LastModified": None,
    }
    ctx.stamp(txn, template)
    txn.put(books.templates, name, template)
    txn.put(books.template_ids, template["Id"], template)
    txn.created_record("template", ctx.license, name)


# -- paging and windows ------------------------------------------------------------------------


def _query_int(request: web.Request, key: str) -> int | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise MetrcError(400, f"{key} must be an integer, not {raw!r}") from None


def _when(request: web.Request, key: str) -> datetime:
    raw = request.query[key]
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise MetrcError(
            400, f"{key} {raw!r} is not an ISO 8601 date-time (is '+' URL-encoded as %2B?)"
        ) from None
    if value.tzinfo is None:
        raise MetrcError(400, f"{key} {raw!r} must carry a UTC offset")
    return value


def _window(request: web.Request, strict: bool) -> tuple[float, float] | None:
    has_start, has_end = "lastModifiedStart" in request.query, "lastModifiedEnd" in request.query
    if not has_start and not has_end:
        return None
    if has_start != has_end:
        raise MetrcError(400, "lastModifiedStart and lastModifiedEnd must be given together")
    start, end = _when(request, "lastModifiedStart"), _when(request, "lastModifiedEnd")
    if end <= start:
        raise MetrcError(400, "lastModifiedEnd must be after lastModifiedStart")
    if strict and end - start > MAX_WINDOW:
        raise MetrcError(400, "The time span between lastModifiedStart and lastModifiedEnd exceeds 24 hours")
    return start.timestamp(), end.timestamp()


def _page(request: web.Request, records: list[Any]) -> web.Response:
    """``records`` as METRC's paged wrapper (pagination is off unless a page is asked for)."""
    number, size = _query_int(request, "pageNumber"), _query_int(request, "pageSize")
    total = len(records)
    if number is None and size is None:
        return _json(
            200,
            {
                "Data": records,
                "Total": total,
                "TotalRecords": total,
                "PageSize": total,
                "RecordsOnPage": total,
                "Page": 1,
                "CurrentPage": 1,
                "TotalPages": 1 if total else 0,
            },
        )
    number = 1 if number is None else number
    size = MAX_PAGE_SIZE if size is None else size
    if number < 1:
        raise MetrcError(400, "pageNumber must be 1 or more")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise MetrcError(400, f"pageSize must be between 1 and {MAX_PAGE_SIZE}")
    data = records[(number - 1) * size : number * size]
    return _json(
        200,
        {
            "Data": data,
            "Total": total,
            "TotalRecords": total,
            "PageSize": size,
            "RecordsOnPage": len(data),
            "Page": number,
            "CurrentPage": number,
            "TotalPages": math.ceil(total / size),
        },
    )


# -- the application ---------------------------------------------------------------------------

STATE_KEY: Final = web.AppKey("fake_metrc", FakeMetrc)
"""The :class:`FakeMetrc` of an application made by :func:`make_app`."""

_CTX: Final = web.RequestKey("fake_metrc_ctx", Ctx)
_USER: Final = web.RequestKey("fake_metrc_user", str)


def _ctx(request: web.Request) -> Ctx:
    return request[_CTX]


def _list(view: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        ctx = _ctx(request)
        window = _window(request, ctx.fake.config.strict_window)
        return _page(request, ctx.fake.listing(ctx.fac, view, window))

    return handler


def _rows(fields: schema.Fields, apply: RowFn) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        ctx = _ctx(request)
        return ctx.fake.write(ctx, fields, apply)

    return handler


def _by_key(what: str, by_label: str | None, by_id: str) -> Handler:
    """``GET /<kind>/v2/{key}``: a record by label/name (when ``by_label``) or numeric id."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ctx = _ctx(request)
        key = request.match_info["key"]
        record: Record | None = None
        if by_label is not None and _TAG.match(key):
            record = getattr(ctx.fac, by_label).get(key)
        elif key.isdigit():
            record = getattr(ctx.fac, by_id).get(int(key))
        if record is None:
            raise MetrcError(404, f"{what} {key} was not found in facility {ctx.license}")
        return _json(200, record)

    return handler


async def _facilities(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    numbers = ctx.fake.config.users[request[_USER]]
    return _json(200, [ctx.fake.config.facilities[n].to_json() for n in numbers])


async def _units(request: web.Request) -> web.StreamResponse:
    return _page(request, [u.to_json() for u in schema.UNITS.values()])


async def _lab_types(request: web.Request) -> web.StreamResponse:
    return _page(request, list(schema.lab_test_types()))


async def _lab_states(request: web.Request) -> web.StreamResponse:
    return _page(request, list(schema.LAB_TESTING_STATES))


async def _package_types(request: web.Request) -> web.StreamResponse:
    return _page(request, list(PACKAGE_TYPES))


async def _lab_results(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    package_id = _query_int(request, "packageId")
    if package_id is None:
        raise MetrcError(400, "packageId is required")
    if package_id not in ctx.fac.package_ids:
        raise MetrcError(404, f"package {package_id} was not found in facility {ctx.license}")
    return _page(request, ctx.fac.lab_results.get(package_id, []))


def _routes(app: web.Application) -> None:
    r = app.router
    s = schema
    r.add_get("/facilities/v2", _facilities)
    r.add_get("/unitsofmeasure/v2/active", _units)
    r.add_get("/labtests/v2/types", _lab_types)
    r.add_get("/labtests/v2/states", _lab_states)
    r.add_get("/packages/v2/types", _package_types)
    r.add_post("/plantbatches/v2/plantings", _rows(s.PLANTBATCH_PLANTINGS, _batch_plantings))
    r.add_post("/plantbatches/v2/growthphase", _rows(s.PLANTBATCH_GROWTHPHASE, _batch_growthphase))
    r.add_delete("/plantbatches/v2", _rows(s.PLANTBATCH_DESTROY, _batch_destroy))
    for view in ("active", "inactive"):
        r.add_get(f"/plantbatches/v2/{view}", _list(f"plantbatches/{view}"))
    r.add_get("/plantbatches/v2/{key}", _by_key("plant batch", None, "batch_ids"))
    for view in ("vegetative", "flowering", "onhold", "inactive"):
        r.add_get(f"/plants/v2/{view}", _list(f"plants/{view}"))
    r.add_put("/plants/v2/growthphase", _rows(s.PLANT_GROWTHPHASE, _plant_growthphase))
    r.add_put("/plants/v2/location", _rows(s.PLANT_LOCATION, _plant_location))
    r.add_put("/plants/v2/harvest", _rows(s.PLANT_HARVEST, _plant_harvest))
    r.add_post("/plants/v2/manicure", _rows(s.PLANT_HARVEST, _plant_manicure))
    r.add_delete("/plants/v2", _rows(s.PLANT_DESTROY, _plant_destroy))
    r.add_get("/plants/v2/{key}", _by_key("plant", "plants", "plant_ids"))
    for view in ("active", "onhold", "inactive"):
        r.add_get(f"/harvests/v2/{view}", _list(f"harvests/{view}"))
    r.add_post("/harvests/v2/packages", _rows(s.HARVEST_PACKAGES, _harvest_packages))
    r.add_put("/harvests/v2/finish", _rows(s.HARVEST_FINISH, _harvest_finish))
    r.add_get("/harvests/v2/{key}", _by_key("harvest", None, "harvest_ids"))
    r.add_post("/packages/v2", _rows(s.PACKAGES_CREATE, _packages_create))
    for view in ("active", "onhold", "inactive"):
        r.add_get(f"/packages/v2/{view}", _list(f"packages/{view}"))
    r.add_post("/packages/v2/adjust", _rows(s.PACKAGE_ADJUST, _package_adjust))
    r.add_put("/packages/v2/adjust", _rows(s.PACKAGE_ADJUST, _package_adjust))
    r.add_put("/packages/v2/location", _rows(s.PACKAGE_LOCATION, _package_location))
    r.add_put("/packages/v2/finish", _rows(s.PACKAGE_FINISH, _package_finish))
    r.add_get("/packages/v2/{key}", _by_key("package", "packages", "package_ids"))
    r.add_post("/labtests/v2/record", _rows(s.LAB_RECORD, _lab_record))
    r.add_get("/labtests/v2/results", _lab_results)
    r.add_post("/transfers/v2/templates/outgoing", _rows(s.TEMPLATE_CREATE, _template_create))
    r.add_get("/transfers/v2/templates/outgoing", _list("templates/outgoing"))


def _admin_routes(app: web.Application, fake: FakeMetrc) -> None:
    async def faults(request: web.Request) -> web.StreamResponse:
        return await handle_admin(fake.faults, request)

    async def state(request: web.Request) -> web.StreamResponse:
        summary = request.query.get("summary", "") not in ("", "0", "false")
        return _json(200, fake.summary() if summary else fake.state())

    async def reset(request: web.Request) -> web.StreamResponse:
        fake.reset()
        return _json(200, fake.summary())

    async def seed(request: web.Request) -> web.StreamResponse:
        try:
            spec = _loads(await request.read() or b"null")
        except ValueError as exc:
            raise MetrcError(400, f"seed body is not JSON: {exc}") from exc
        return _json(200, fake.seed(spec))

    app.router.add_route("*", "/_fake/faults", faults)
    app.router.add_get("/_fake/state", state)
    app.router.add_post("/_fake/reset", reset)
    app.router.add_post("/_fake/seed", seed)


def _error(exc: MetrcError) -> web.Response:
    return _json(exc.status, {"Message": exc.message}, exc.headers)


class _Gate:
    """The METRC request pipeline: auth, licence scope, limits, faults, handler, counters."""

    def __init__(self, fake: FakeMetrc) -> None:
        self.fake = fake

    def authenticate(self, request: web.Request) -> tuple[str, str]:
        header = request.headers.get("Authorization")
        if header is None:
            raise MetrcError(401, "Authorization has been denied for this request (no credentials)")
        try:
            auth = BasicAuth.decode(header)
        except ValueError:
            raise MetrcError(401, "Authorization has been denied for this request (not Basic)") from None
        config = self.fake.config
        if auth.login not in config.vendor_keys or auth.password not in config.users:
            raise MetrcError(401, "Authorization has been denied for this request (invalid API keys)")
        return auth.login, auth.password

    def facility(self, request: web.Request, user: str) -> Books | None:
        route = request.match_info.route.resource
        if route is not None and route.canonical in UNSCOPED_PATHS:
            return None
        number = request.query.get("licenseNumber")
        if not number:
            raise MetrcError(400, "licenseNumber is required")
        if number not in self.fake.config.users[user]:
            raise MetrcError(403, f"No facility with license number {number} is available to this user")
        return self.fake.books[number]

    async def body(self, request: web.Request) -> tuple[list[Any] | None, MetrcError | None]:
        if request.method not in ("POST", "PUT", "DELETE") or not request.body_exists:
            return None, None
        raw = await request.read()
        try:
            value = _loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, MetrcError(400, f"The request body is not valid JSON: {exc}")
        if not isinstance(value, list):
            return None, MetrcError(400, "The request body must be a JSON array of objects")
        return value, None

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_fake/"):
            try:
                return await handler(request)
            except MetrcError as exc:
                return _error(exc)
        fake = self.fake
        stats = fake.stats
        stats.requests_total += 1
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        stats.by_route[f"{request.method} {route}"] += 1
        status = "dropped"
        admitted: str | None = None
        try:
            response, admitted = await self.handle(request, handler)
            transport = request.transport
            if transport is not None and not transport.is_closing():
                status = str(response.status)
            return response
        except Exception:
            status = "500"
            raise
        finally:
            if admitted is not None:
                fake.limiter.release(admitted)
            stats.by_status[status] += 1

    async def handle(self, request: web.Request, handler: Handler) -> tuple[web.StreamResponse, str | None]:
        fake = self.fake
        try:
            vendor, user = self.authenticate(request)
            http_error = request.match_info.http_exception
            if http_error is not None:
                raise MetrcError(http_error.status, f"{request.method} {request.path}: {http_error.reason}")
            books = self.facility(request, user)
        except MetrcError as exc:
            return _error(exc), None
        number = books.facility.number if books is not None else None
        cause = fake.limiter.admit(vendor, number, request.method == "GET", time.monotonic())
        if cause is not None:
            fake.stats.rate_limited[cause] += 1
            return _json(
                429, {"Message": f"Too many requests ({cause.replace('_', ' ')})"}, {"Retry-After": "1"}
            ), None
        return await self.run(request, handler, books, user), number

    async def run(
        self, request: web.Request, handler: Handler, books: Books | None, user: str
    ) -> web.StreamResponse:
        fake = self.fake
        rows, body_error = await self.body(request)

        def eligible(rule: FaultRule) -> bool:
            return rule.mode != "partial" or bool(rows)

        rule = fake.faults.draw(request.method, request.path, eligible=eligible)
        mode = rule.mode if rule is not None else None
        if rule is not None and mode == "error500":
            return _json(500, {"Message": "An error has occurred (injected)."})
        if rule is not None and mode == "rate_limit":
            fake.stats.rate_limited["fault"] += 1
            return _json(429, {"Message": "Too many requests (injected)"}, {"Retry-After": retry_after(rule)})
        if rule is not None and mode == "timeout":
            return await drop_connection(request, rule.delay_s)
        if rule is not None and mode == "slow":
            await asyncio.sleep(rule.delay_s)
        request[_CTX] = Ctx(fake, books, request.path, time.time(), rows, partial=mode == "partial")
        request[_USER] = user
        try:
            if body_error is not None:
                raise body_error
            response = await handler(request)
        except MetrcError as exc:
            response = _error(exc)
        if rule is not None and mode == "apply_then_500":
            return _json(500, {"Message": "An error has occurred (injected, after applying)."})
        if rule is not None and mode == "apply_then_timeout":
            return await drop_connection(request, rule.delay_s)
        return response


def make_app(config: Mapping[str, Any] | None = None) -> web.Application:
    """The fake METRC as an aiohttp application; its state is ``app[STATE_KEY]``.

    Args:
        config: The JSON configuration (see :meth:`FakeConfig.from_json`); None for defaults.

    Returns:
        The application, with the admin endpoints under ``/_fake/``.

    """
    fake = FakeMetrc(FakeConfig.from_json(config))
    gate = _Gate(fake)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await gate(request, handler)

    app = web.Application(middlewares=[middleware], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = fake
    _admin_routes(app, fake)
    _routes(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT (``python -m seedline_server.integrations.fakes.metrc``)."""
    from seedline_server.integrations.fakes._serve import command_line

    command_line(make_app, name="fake METRC", description="A local fake METRC v2 server.", argv=argv)


if __name__ == "__main__":
    main()
