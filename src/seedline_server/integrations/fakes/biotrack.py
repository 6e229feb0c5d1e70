"""A local fake BioTrackTHC v1 (``serverjson.asp``), built from the reference's action list.

``python -m seedline_server.integrations.fakes.biotrack --host H --port P --cert C --key K
[--config FILE]`` serves it over TLS; :func:`make_app` gives the aiohttp application for
in-process use. Config (JSON)::

    {"accounts": [{"license_number": "UBI-1", "username": "u", "password": "p",
                   "locations": ["LOC-1"]}],
     "session_ttl_s": 3600}

What it enforces, as BioTrackTHC does (application errors are HTTP 200 with ``success: 0``, an
``error`` text and an ``errorcode``, see :class:`Code`):

- one JSON object per ``POST /serverjson.asp`` with ``action`` and ``API: "4.0"``;
- ``login`` (``license_number``, ``username``, ``password``) opens a session of
  ``session_ttl_s``; every other action needs a valid ``sessionid`` (or ``nosession: 1`` with the
  three credentials), else ``success: 0`` with an error naming the session;
- writes need a ``nonce``, de-duplicated per license: the same nonce with the same body (the
  ``sessionid`` aside, so a retry after logging in again matches) answers the stored first
  answer and applies nothing (counted in ``nonce_replays``); with another body it is refused as
  a nonce reuse. A nonce is spent by a *successful* write only, so a refused write may be
  corrected and sent again;
- each action's fields (:data:`SCHEMAS`, from the reference), with their types: a missing or
  wrongly typed field is refused with a message naming it (``data[0].quantity``...);
- records and their life: barcode ids are 16 digits, assigned in increasing order; plants
  (state 0 growing, 1 harvested and drying, 2 cured, 3 destroyed, 4 converted to inventory),
  inventory items (remaining quantity and uom, never below zero), manifests; destruction needs a
  schedule first (the fake does not wait the real 72 hours); locations must be the account's.
- ``training: 1`` works on a separate ledger of the license: nothing reaches the real records.

Faults (:mod:`._faults`): every request of the system (not ``/_fake/``) draws a fault with the
path ``/serverjson.asp/<action>``, so a rule's ``path_prefix`` may target one action
(``/serverjson.asp/plant_new``) or all (``/serverjson.asp``). Modes: ``error500``, ``timeout``,
``slow``, ``apply_then_500``, ``apply_then_timeout``, ``rate_limit``.

Admin: ``GET /_fake/state`` (records, ``create_counts`` by kind, ``nonce_replays``, ``logins``,
request counts), ``POST /_fake/reset`` (forget everything but the accounts; a JSON body
replaces the configuration), ``POST /_fake/sessions/expire`` (every open session expires),
``/_fake/faults`` (see :func:`._faults.handle_admin`).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from aiohttp import web

from seedline_server.integrations.fakes import _faults
from seedline_server.integrations.fakes._faults import MODES, Faults

__all__ = ["SCHEMAS", "BioTrackFake", "Code", "main", "make_app"]

ENDPOINT: Final = "/serverjson.asp"
API_VERSION: Final = "4.0"
_FIRST_BARCODE: Final = 6_647_000_000_000_001  # 16 digits
_MAX_BARCODE: Final = 9_999_999_999_999_999

UOMS: Final = frozenset({"each", "g", "ml", "mg", "kg", "oz", "lb"})
INVENTORY_TYPES: Final = frozenset({5, 6, 7, *range(9, 33)})

# Plant states.
GROWING, HARVESTED, CURED, DESTROYED, CONVERTED = 0, 1, 2, 3, 4


class Code(enum.IntEnum):
    """The fake's ``errorcode`` values."""

    REQUEST = 1  # not a JSON object, no action, wrong API version
    SESSION = 2  # no, unknown or expired session
    LOGIN = 3  # wrong license number, username or password
    FIELD = 4  # a field is missing or of the wrong type
    NONCE = 5  # a nonce reused for another request
    NOT_FOUND = 6  # a barcode, manifest or location that is not the license's
    STATE = 7  # the record's state does not allow the action (destroyed, not scheduled...)
    QUANTITY = 8  # more than the item holds, or another unit
    ACTION = 9  # an unknown action


class Refused(Exception):
    """An application error: answered ``success: 0`` with HTTP 200."""

    def __init__(self, code: Code, error: str) -> None:
        super().__init__(error)
        self.code = code
        self.error = error


# -- field checks --------------------------------------------------------------------------

Check = Callable[[Any, str], None]
_BARCODE = re.compile(r"^[0-9]{16}$")
_QUANTITY6 = re.compile(r"^[0-9]+\.[0-9]{6}$")
_YMD = re.compile(r"^[0-9]{8}$")


def _bad(path: str, what: str) -> Refused:
    return Refused(Code.FIELD, f"{path} must be {what}")


def text_(value: Any, path: str) -> None:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(path, "a non-empty string")


def text0(value: Any, path: str) -> None:
    """A string, possibly empty."""
    if not isinstance(value, str):
        raise _bad(path, "a string")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def integer(low: int, high: int) -> Check:
    """An integer (or a string of digits) in [low, high]."""

    def check(value: Any, path: str) -> None:
        n = _as_int(value)
        if n is None or not low <= n <= high:
            raise _bad(path, f"an integer from {low} to {high}")

    return check


flag = integer(0, 1)
epoch = integer(0, 4_102_444_800)


def _as_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def number(*, positive: bool) -> Check:
    """A number (JSON number or decimal string), > 0 or >= 0."""

    def check(value: Any, path: str) -> None:
        d = _as_decimal(value)
        if d is None or d < 0 or (positive and d == 0):
            raise _bad(path, "a number above 0" if positive else "a number of 0 or more")

    return check


def quantity6(value: Any, path: str) -> None:
    """A quantity string with exactly 6 decimals (``"12.500000"``)."""
    if not isinstance(value, str) or not _QUANTITY6.fullmatch(value):
        raise _bad(path, 'a string with 6 decimals (e.g. "12.500000")')


def uom(value: Any, path: str) -> None:
    """A unit of measure BioTrackTHC knows."""
    if value not in UOMS:
        raise _bad(path, f"one of {', '.join(sorted(UOMS))}")


def invtype(value: Any, path: str) -> None:
    """An inventory type code of the reference."""
    if _as_int(value) not in INVENTORY_TYPES:
        raise _bad(path, "an inventory type code (5-7, 9-32)")


def barcode(value: Any, path: str) -> None:
    """A 16-digit barcode id."""
    if not isinstance(value, str) or not _BARCODE.fullmatch(value):
        raise _bad(path, "a 16-digit barcode id string")


def barcodes(value: Any, path: str) -> None:
    """A non-empty array of 16-digit barcode ids."""
    if not isinstance(value, list) or not value:
        raise _bad(path, "a non-empty array of 16-digit barcode ids")
    for i, item in enumerate(value):
        barcode(item, f"{path}[{i}]")


def barcode_or_list(value: Any, path: str) -> None:
    """One barcode id or an array of them."""
    if isinstance(value, list):
        barcodes(value, path)
    else:
        barcode(value, path)


def ymd(value: Any, path: str) -> None:
    """A date as ``YYYYMMDD``."""
    if not isinstance(value, str) or not _YMD.fullmatch(value):
        raise _bad(path, "a date as YYYYMMDD")


def anything(value: Any, path: str) -> None:
    """Any value (accepted as BioTrackTHC accepts it)."""


@dataclass(frozen=True)
class Schema:
    """An object's fields: required and optional ones with their checks."""

    required: Mapping[str, Check]
    optional: Mapping[str, Check] = field(default_factory=dict)

    def check(self, doc: Any, path: str = "") -> None:
        """Raise :class:`Refused` naming the first missing or ill-typed field."""
        if not isinstance(doc, dict):
            raise _bad(path or "the request", "a JSON object")
        for name, check in self.required.items():
            where = f"{path}.{name}" if path else name
            if name not in doc or doc[name] is None:
                raise Refused(Code.FIELD, f"{where} is required")
            check(doc[name], where)
        for name, check in self.optional.items():
            if doc.get(name) is not None:
                check(doc[name], f"{path}.{name}" if path else name)


def objects(schema: Schema) -> Check:
    """A non-empty array of objects of ``schema``."""

    def check(value: Any, path: str) -> None:
        if not isinstance(value, list) or not value:
            raise _bad(path, "a non-empty array of objects")
        for i, item in enumerate(value):
            schema.check(item, f"{path}[{i}]")

    return check


def one(schema: Schema) -> Check:
    """One object of ``schema``."""

    def check(value: Any, path: str) -> None:
        schema.check(value, path)

    return check


_WEIGHT = Schema({"amount": number(positive=True), "invtype": invtype, "uom": uom})
_STOP = Schema(
    {"vendor_license": text_, "barcodeid": barcodes},
    {"stop_number": integer(1, 999)},
)
_DESTROY_SCHEDULE = Schema({"barcodeid": barcodes, "reason": text_}, {"reason_extended": text0})
_SYNC = Schema(
    {},
    {
        "download": flag,
        "transaction_start": integer(0, 2**62),
        "transaction_end": integer(0, 2**62),
        "active": flag,
    },
)

SCHEMAS: Final[dict[str, Schema]] = {
    "plant_new": Schema(
        {
            "room": text_,
            "quantity": integer(1, 10_000),
            "strain": text_,
            "source": text0,
            "location": text_,
        },
        {"mother": flag},
    ),
    "plant_new_undo": Schema({"barcodeid": barcodes}),
    "plant_move": Schema({"barcodeid": barcodes, "room": text_}),
    "plant_modify": Schema({"barcodeid": barcode}, {"strain": text_, "mother": flag, "birthdate": ymd}),
    "plant_harvest": Schema(
        {"barcodeid": barcodes, "collectiontime": epoch, "weights": objects(_WEIGHT)},
        {"new_room": text_, "collectadditional": flag, "wet": flag},
    ),
    "plant_cure": Schema(
        {"barcodeid": barcode, "collectiontime": epoch, "weights": objects(_WEIGHT)},
        {"room": text_, "collectadditional": flag},
    ),
    "plant_destroy_schedule": _DESTROY_SCHEDULE,
    "plant_destroy": Schema({"barcodeid": barcodes}),
    "plant_convert_to_inventory": Schema({"barcodeid": barcodes}),
    "inventory_new": Schema(
        {
            "location": text_,
            "data": objects(
                Schema(
                    {"invtype": invtype, "quantity": number(positive=True)},
                    {"strain": text0, "productname": text0, "quantity_uom": uom, "room": text0},
                )
            ),
        }
    ),
    "inventory_adjust": Schema(
        {
            "data": one(
                Schema(
                    {
                        "barcodeid": barcode,
                        "quantity": quantity6,
                        "quantity_uom": uom,
                        "type": integer(1, 6),
                        "reason": text_,
                    }
                )
            )
        }
    ),
    "inventory_split": Schema(
        {"barcodeid": barcode, "quantity": number(positive=True)},
        {"uom": uom, "room": text_, "strain": text0, "product": text0},
    ),
    "inventory_move": Schema({"barcodeid": barcode_or_list, "room": text_}),
    "inventory_modify": Schema({"barcodeid": barcode}, {"strain": text0, "product": text0}),
    "inventory_convert": Schema(
        {
            "data": objects(
                Schema(
                    {
                        "barcodeid": barcode,
                        "remove_quantity": number(positive=True),
                        "remove_quantity_uom": uom,
                    }
                )
            ),
            "derivative_type": invtype,
            "derivative_quantity": number(positive=True),
            "derivative_quantity_uom": uom,
        },
        {
            "derivative_strain": text0,
            "derivative_product": text0,
            "derivative_usable": number(positive=False),
            "derivative_usable_uom": uom,
            "net_package": number(positive=False),
            "net_package_uom": uom,
            "waste": number(positive=False),
            "waste_uom": uom,
            "no_modification": flag,
        },
    ),
    "inventory_destroy_schedule": _DESTROY_SCHEDULE,
    "inventory_destroy_schedule_undo": Schema({"barcodeid": barcodes}),
    "inventory_destroy": Schema({"barcodeid": barcodes}),
    "inventory_manifest": Schema(
        {
            "location": text_,
            "employee_id": text_,
            "vehicle_id": text_,
            "stop_overview": objects(_STOP),
        }
    ),
    "inventory_manifest_third_party": Schema(
        {"location": text_, "third_party_license": text_, "stop_overview": objects(_STOP)}
    ),
    "inventory_manifest_void": Schema({"manifest_id": text_}),
    "sync_check": Schema({"location": text_}, {"download": flag, "data": anything}),
    "sync_plant": _SYNC,
    "sync_inventory": _SYNC,
    "sync_manifest": _SYNC,
    "nonce_replay": Schema({"nonce": text_}),
}
"""Every action the fake implements besides ``login``, with its fields (reference names)."""

_READS: Final = frozenset({"sync_check", "sync_plant", "sync_inventory", "sync_manifest", "nonce_replay"})
# Envelope and credential fields: not part of what a nonce stands for.
_ENVELOPE: Final = frozenset({"sessionid", "nosession", "license_number", "username", "password"})


# -- state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """A licensee's login and its locations."""

    license_number: str
    username: str
    password: str
    locations: frozenset[str]


@dataclass
class Ledger:
    """One license's records (the real ones, or those of training mode)."""

    training: bool = False
    plants: dict[str, dict[str, Any]] = field(default_factory=dict)
    inventory: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    adjustments: list[dict[str, Any]] = field(default_factory=list)
    nonces: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass
class _Session:
    license_number: str
    expires: float


def _accounts(config: Mapping[str, Any]) -> dict[str, Account]:
    out = {}
    for raw in config.get("accounts", []):
        account = Account(
            str(raw["license_number"]),
            str(raw["username"]),
            str(raw["password"]),
            frozenset(str(x) for x in raw.get("locations", [])),
        )
        out[account.license_number] = account
    return out


def _fingerprint(doc: Mapping[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k not in _ENVELOPE}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _decimal(value: Any) -> Decimal:
    d = _as_decimal(value)
    assert d is not None  # checked by the schema
    return d


def _text(d: Decimal) -> str:
    return f"{d.quantize(Decimal('0.000001')):f}"


def _list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


class BioTrackFake:
    """The fake's state and its request handling (one per application).

    Args:
        config: ``{"accounts": [...], "session_ttl_s": 3600}``.

    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.faults = Faults(modes=MODES - {"partial"})
        self.configure(config or {})
        self.reset()

    def configure(self, config: Mapping[str, Any]) -> None:
        """Set the accounts and the session lifetime."""
        self.accounts = _accounts(config)
        self.session_ttl = float(config.get("session_ttl_s", 3600))

    def reset(self) -> None:
        """Forget every record, session, nonce, counter and fault rule."""
        self.sessions: dict[str, _Session] = {}
        self.ledgers: dict[tuple[str, bool], Ledger] = {}
        self.next_barcode = _FIRST_BARCODE
        self.next_transaction = 1
        self.create_counts: Counter[str] = Counter()
        self.nonce_replays = 0
        self.logins = 0
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.faults.reset()

    # -- the protocol --------------------------------------------------------------------

    def answer(self, doc: Any) -> dict[str, Any]:
        """The answer to one request body (already parsed from JSON)."""
        action = doc.get("action") if isinstance(doc, dict) else None
        self.requests[str(action) if isinstance(action, str) else "?"] += 1
        try:
            out = self._answer(doc)
        except Refused as exc:
            self.errors[exc.code.name] += 1
            return {"success": 0, "error": exc.error, "errorcode": int(exc.code)}
        return out

    def _answer(self, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise Refused(Code.REQUEST, "the request must be one JSON object")
        action = doc.get("action")
        if not isinstance(action, str) or not action:
            raise Refused(Code.REQUEST, "action is required")
        if doc.get("API") != API_VERSION:
            raise Refused(Code.REQUEST, f'API must be "{API_VERSION}"')
        if action == "login":
            return self._login(doc)
        account = self._authenticate(doc)
        schema = SCHEMAS.get(action)
        if schema is None:
            raise Refused(Code.ACTION, f"unknown action {action}")
        ledger = self.ledger(account.license_number, training=str(doc.get("training", 0)) == "1")
        write = action not in _READS
        nonce = doc.get("nonce")
        if write:
            if not isinstance(nonce, str) or not nonce:
                raise Refused(Code.FIELD, "nonce is required on write actions")
            fingerprint = _fingerprint(doc)
            stored = ledger.nonces.get(nonce)
            if stored is not None:
                if stored[0] != fingerprint:
                    raise Refused(Code.NONCE, f"nonce reuse: nonce {nonce} was used for another request")
                self.nonce_replays += 1
                return stored[1]
        schema.check(doc)
        extra = getattr(self, f"_do_{action}")(ledger, account, doc)
        answer: dict[str, Any] = {"success": 1, "sessiontime": int(time.time())}
        if write:
            answer["transactionid"] = str(self._transaction())
        answer.update(extra)
        if write:
            assert isinstance(nonce, str)
            ledger.nonces[nonce] = (fingerprint, answer)
        return answer

    def _login(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        account = self._credentials(doc)
        self.logins += 1
        sid = secrets.token_hex(16)
        self.sessions[sid] = _Session(account.license_number, time.monotonic() + self.session_ttl)
        return {"success": 1, "sessionid": sid, "sessiontime": int(time.time())}

    def _credentials(self, doc: Mapping[str, Any]) -> Account:
        for name in ("license_number", "username", "password"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise Refused(Code.FIELD, f"{name} is required")
        account = self.accounts.get(doc["license_number"])
        if (
            account is None
            or not secrets.compare_digest(account.username, doc["username"])
            or not secrets.compare_digest(account.password, doc["password"])
        ):
            raise Refused(Code.LOGIN, "Invalid login: license number, username or password is wrong")
        return account

    def _authenticate(self, doc: Mapping[str, Any]) -> Account:
        if str(doc.get("nosession", 0)) == "1":
            return self._credentials(doc)
        sid = doc.get("sessionid")
        session = self.sessions.get(sid) if isinstance(sid, str) else None
        if session is None or session.expires <= time.monotonic():
            if isinstance(sid, str):
                self.sessions.pop(sid, None)
            raise Refused(Code.SESSION, "Invalid or expired session: log in again")
        return self.accounts[session.license_number]

    def expire_sessions(self) -> int:
        """Expire every open session; returns how many there were."""
        n = len(self.sessions)
        self.sessions.clear()
        return n

    def ledger(self, license_number: str, *, training: bool) -> Ledger:
        """The records of a license (training mode has its own)."""
        return self.ledgers.setdefault((license_number, training), Ledger(training=training))

    def _transaction(self) -> int:
        n = self.next_transaction
        self.next_transaction += 1
        return n

    def _barcode(self, kind: str, training: bool) -> str:
        if self.next_barcode > _MAX_BARCODE:
            raise Refused(Code.STATE, "barcode ids are exhausted")
        n = self.next_barcode
        self.next_barcode += 1
        if not training:
            self.create_counts[kind] += 1
        return f"{n:016d}"

    # -- lookups -------------------------------------------------------------------------

    @staticmethod
    def _location(account: Account, doc: Mapping[str, Any]) -> str:
        location = str(doc["location"])
        if location not in account.locations:
            raise Refused(
                Code.NOT_FOUND, f"location {location} is not a location of license {account.license_number}"
            )
        return location

    @staticmethod
    def _plant(ledger: Ledger, bc: str, states: frozenset[int] = frozenset({GROWING})) -> dict[str, Any]:
        plant = ledger.plants.get(bc)
        if plant is None:
            raise Refused(Code.NOT_FOUND, f"plant {bc} was not found")
        if plant["state"] not in states:
            raise Refused(Code.STATE, f"plant {bc} is in state {plant['state']}: not allowed")
        return plant

    @staticmethod
    def _item(ledger: Ledger, bc: str) -> dict[str, Any]:
        item = ledger.inventory.get(bc)
        if item is None:
            raise Refused(Code.NOT_FOUND, f"inventory {bc} was not found")
        if item["deleted"]:
            raise Refused(Code.STATE, f"inventory {bc} is destroyed")
        return item

    def _touch(self, record: dict[str, Any]) -> None:
        record["transactionid"] = self.next_transaction
        record["sessiontime"] = int(time.time())

    def _new_item(self, ledger: Ledger, **fields: Any) -> str:
        bc = self._barcode("inventory", ledger.training)
        item = {
            "id": bc,
            "invtype": 0,
            "remaining_quantity": "0.000000",
            "uom": "g",
            "strain": "",
            "productname": "",
            "room": "",
            "location": "",
            "parentid": [],
            "plantid": [],
            "wet": 0,
            "deleted": 0,
            "removescheduled": 0,
            "removereason": "",
        }
        item.update(fields)
        self._touch(item)
        ledger.inventory[bc] = item
        return bc

    def _take(self, item: dict[str, Any], amount: Decimal, unit: str | None) -> None:
        if unit is not None and unit != item["uom"]:
            raise Refused(Code.QUANTITY, f"inventory {item['id']} is counted in {item['uom']}, not {unit}")
        left = Decimal(item["remaining_quantity"]) - amount
        if left < 0:
            raise Refused(
                Code.QUANTITY,
                f"inventory {item['id']} holds {item['remaining_quantity']} < {amount}",
            )
        item["remaining_quantity"] = _text(left)
        self._touch(item)

    # -- actions (each returns the answer's extra fields; the schema was checked) -----------

    def _do_sync_check(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        self._location(account, doc)
        tables = {"plant": ledger.plants, "inventory": ledger.inventory, "manifest": ledger.manifests}
        summary = []
        for entry in doc.get("data") or []:
            if isinstance(entry, dict) and entry.get("table") in tables:
                records = tables[str(entry["table"])].values()
                start = _as_int(entry.get("transaction_start")) or 0
                newer = sum(1 for r in records if r["transactionid"] > start)
                summary.append({"table": entry["table"], "match": "0" if newer else "1", "sum": len(records)})
        return {"summary": summary}

    def _sync(self, records: Mapping[str, dict[str, Any]], doc: Mapping[str, Any]) -> list[dict[str, Any]]:
        start = _as_int(doc.get("transaction_start")) or 0
        end = _as_int(doc.get("transaction_end"))
        active = str(doc.get("active", 0)) == "1"
        return [
            dict(r)
            for r in records.values()
            if r["transactionid"] >= start
            and (end is None or r["transactionid"] <= end)
            and not (active and r.get("deleted"))
        ]

    def _do_sync_plant(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        return {"plant": self._sync(ledger.plants, doc)}

    def _do_sync_inventory(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        return {"inventory": self._sync(ledger.inventory, doc)}

    def _do_sync_manifest(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        return {"manifest": self._sync(ledger.manifests, doc)}

    def _do_nonce_replay(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        stored = ledger.nonces.get(doc["nonce"])
        if stored is None:
            raise Refused(Code.NOT_FOUND, f"nonce {doc['nonce']} was not used")
        return {"replay": stored[1]}

    def _do_plant_new(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        location = self._location(account, doc)
        count = int(doc["quantity"])
        source = str(doc["source"])
        if source:
            self._take(self._item(ledger, source), Decimal(count), "each")
        made = []
        for _ in range(count):
            bc = self._barcode("plant", ledger.training)
            plant = {
                "id": bc,
                "strain": doc["strain"],
                "room": doc["room"],
                "location": location,
                "mother": int(doc.get("mother") or 0),
                "parentid": source,
                "state": GROWING,
                "birthdate": time.strftime("%Y%m%d", time.gmtime()),
                "removescheduled": 0,
                "removescheduletime": 0,
                "removereason": "",
                "harvestcollect": 0,
                "curecollect": 0,
                "deleted": 0,
            }
            self._touch(plant)
            ledger.plants[bc] = plant
            made.append(bc)
        return {"barcode_id": made}

    def _do_plant_new_undo(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        plants = [self._plant(ledger, bc) for bc in doc["barcodeid"]]
        for plant in plants:
            del ledger.plants[plant["id"]]
        return {}

    def _do_plant_move(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        plants = [self._plant(ledger, bc, frozenset({GROWING, HARVESTED})) for bc in doc["barcodeid"]]
        for plant in plants:
            plant["room"] = doc["room"]
            self._touch(plant)
        return {}

    def _do_plant_modify(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        plant = self._plant(ledger, doc["barcodeid"], frozenset({GROWING, HARVESTED}))
        for name in ("strain", "birthdate"):
            if doc.get(name) is not None:
                plant[name] = doc[name]
        if doc.get("mother") is not None:
            plant["mother"] = int(doc["mother"])
        self._touch(plant)
        return {}

    def _collect(
        self, ledger: Ledger, doc: dict[str, Any], plants: list[dict[str, Any]], wet: bool, room: str
    ) -> list[str]:
        made = []
        for weight in doc["weights"]:
            made.append(
                self._new_item(
                    ledger,
                    invtype=int(weight["invtype"]),
                    remaining_quantity=_text(_decimal(weight["amount"])),
                    uom=weight["uom"],
                    strain=plants[0]["strain"],
                    room=room,
                    location=plants[0]["location"],
                    plantid=[p["id"] for p in plants],
                    wet=1 if wet else 0,
                )
            )
        return made

    def _do_plant_harvest(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        # A harvested (drying) plant may take further harvest collections into the same batch.
        plants = [self._plant(ledger, bc, frozenset({GROWING, HARVESTED})) for bc in doc["barcodeid"]]
        room = str(doc.get("new_room") or plants[0]["room"])
        made = self._collect(ledger, doc, plants, str(doc.get("wet", 1)) == "1", room)
        final = str(doc.get("collectadditional", 0)) == "0"
        for plant in plants:
            plant["harvestcollect"] += 1
            if final:
                plant["state"] = HARVESTED
            if doc.get("new_room"):
                plant["room"] = doc["new_room"]
            self._touch(plant)
        return {"barcode_id": made}

    def _do_plant_cure(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        plant = self._plant(ledger, doc["barcodeid"], frozenset({HARVESTED}))
        room = str(doc.get("room") or plant["room"])
        made = self._collect(ledger, doc, [plant], False, room)
        plant["curecollect"] += 1
        if str(doc.get("collectadditional", 0)) == "0":
            plant["state"] = CURED
        self._touch(plant)
        return {"barcode_id": made}

    def _do_plant_destroy_schedule(
        self, ledger: Ledger, account: Account, doc: dict[str, Any]
    ) -> dict[str, Any]:
        plants = [self._plant(ledger, bc, frozenset({GROWING, HARVESTED})) for bc in doc["barcodeid"]]
        for plant in plants:
            plant.update(
                removescheduled=1,
                removescheduletime=int(time.time()),
                removereason=doc["reason"],
                removereason_extended=doc.get("reason_extended", ""),
            )
            self._touch(plant)
        return {}

    def _do_plant_destroy(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        plants = [self._plant(ledger, bc, frozenset({GROWING, HARVESTED})) for bc in doc["barcodeid"]]
        for plant in plants:
            if not plant["removescheduled"]:
                raise Refused(Code.STATE, f"plant {plant['id']} is not scheduled for destruction")
        for plant in plants:
            plant.update(state=DESTROYED, deleted=1)
            self._touch(plant)
        return {}

    def _do_plant_convert_to_inventory(
        self, ledger: Ledger, account: Account, doc: dict[str, Any]
    ) -> dict[str, Any]:
        plants = [self._plant(ledger, bc) for bc in doc["barcodeid"]]
        made = []
        for plant in plants:
            plant.update(state=CONVERTED, deleted=1)
            self._touch(plant)
            made.append(
                self._new_item(
                    ledger,
                    invtype=12,
                    remaining_quantity=_text(Decimal(1)),
                    uom="each",
                    strain=plant["strain"],
                    room=plant["room"],
                    location=plant["location"],
                    plantid=[plant["id"]],
                )
            )
        return {"barcode_id": made}

    def _do_inventory_new(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        location = self._location(account, doc)
        made = [
            self._new_item(
                ledger,
                invtype=int(row["invtype"]),
                remaining_quantity=_text(_decimal(row["quantity"])),
                uom=row.get("quantity_uom") or "g",
                strain=row.get("strain") or "",
                productname=row.get("productname") or "",
                room=row.get("room") or "",
                location=location,
            )
            for row in doc["data"]
        ]
        return {"barcode_id": made}

    def _do_inventory_adjust(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        data = doc["data"]
        item = self._item(ledger, data["barcodeid"])
        if data["quantity_uom"] != item["uom"]:
            raise Refused(
                Code.QUANTITY,
                f"data.quantity_uom {data['quantity_uom']} is not the uom of {item['id']} ({item['uom']})",
            )
        ledger.adjustments.append(
            {
                "barcodeid": item["id"],
                "previous": item["remaining_quantity"],
                "quantity": data["quantity"],
                "type": int(data["type"]),
                "reason": data["reason"],
            }
        )
        item["remaining_quantity"] = data["quantity"]
        self._touch(item)
        return {}

    def _do_inventory_split(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        item = self._item(ledger, doc["barcodeid"])
        amount = _decimal(doc["quantity"])
        self._take(item, amount, doc.get("uom"))
        bc = self._new_item(
            ledger,
            invtype=item["invtype"],
            remaining_quantity=_text(amount),
            uom=item["uom"],
            strain=doc.get("strain") or item["strain"],
            productname=doc.get("product") or item["productname"],
            room=doc.get("room") or item["room"],
            location=item["location"],
            parentid=[item["id"]],
        )
        return {"barcode_id": [bc]}

    def _do_inventory_move(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        items = [self._item(ledger, bc) for bc in _list(doc["barcodeid"])]
        for item in items:
            item["room"] = doc["room"]
            self._touch(item)
        return {}

    def _do_inventory_modify(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        item = self._item(ledger, doc["barcodeid"])
        if doc.get("strain") is not None:
            item["strain"] = doc["strain"]
        if doc.get("product") is not None:
            item["productname"] = doc["product"]
        self._touch(item)
        return {}

    def _do_inventory_convert(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        sources = [(self._item(ledger, row["barcodeid"]), row) for row in doc["data"]]
        if len({item["id"] for item, _ in sources}) != len(sources):
            raise Refused(Code.FIELD, "data must name each source barcode once")
        for item, row in sources:  # check every source before taking from any
            if row["remove_quantity_uom"] != item["uom"]:
                raise Refused(Code.QUANTITY, f"inventory {item['id']} is counted in {item['uom']}")
            if Decimal(item["remaining_quantity"]) < _decimal(row["remove_quantity"]):
                raise Refused(Code.QUANTITY, f"inventory {item['id']} holds < {row['remove_quantity']}")
        for item, row in sources:
            self._take(item, _decimal(row["remove_quantity"]), row["remove_quantity_uom"])
        first = sources[0][0]
        bc = self._new_item(
            ledger,
            invtype=int(doc["derivative_type"]),
            remaining_quantity=_text(_decimal(doc["derivative_quantity"])),
            uom=doc["derivative_quantity_uom"],
            strain=doc.get("derivative_strain") or first["strain"],
            productname=doc.get("derivative_product") or "",
            room=first["room"],
            location=first["location"],
            parentid=[item["id"] for item, _ in sources],
            waste=_text(_decimal(doc.get("waste") or 0)),
        )
        return {"barcode_id": [bc]}

    def _do_inventory_destroy_schedule(
        self, ledger: Ledger, account: Account, doc: dict[str, Any]
    ) -> dict[str, Any]:
        items = [self._item(ledger, bc) for bc in doc["barcodeid"]]
        for item in items:
            item.update(removescheduled=1, removereason=doc["reason"])
            self._touch(item)
        return {}

    def _do_inventory_destroy_schedule_undo(
        self, ledger: Ledger, account: Account, doc: dict[str, Any]
    ) -> dict[str, Any]:
        items = [self._item(ledger, bc) for bc in doc["barcodeid"]]
        for item in items:
            if not item["removescheduled"]:
                raise Refused(Code.STATE, f"inventory {item['id']} is not scheduled for destruction")
        for item in items:
            item.update(removescheduled=0, removereason="")
            self._touch(item)
        return {}

    def _do_inventory_destroy(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        items = [self._item(ledger, bc) for bc in doc["barcodeid"]]
        for item in items:
            if not item["removescheduled"]:
                raise Refused(Code.STATE, f"inventory {item['id']} is not scheduled for destruction")
        for item in items:
            item.update(deleted=1, remaining_quantity=_text(Decimal(0)))
            self._touch(item)
        return {}

    def _manifest(
        self, ledger: Ledger, account: Account, doc: dict[str, Any], **fields: Any
    ) -> dict[str, Any]:
        location = self._location(account, doc)
        stops = []
        for n, stop in enumerate(doc["stop_overview"], 1):
            for bc in stop["barcodeid"]:
                self._item(ledger, bc)
            stops.append(
                {
                    "stopnumber": int(stop.get("stop_number") or n),
                    "license_number": stop["vendor_license"],
                    "barcodeid": list(stop["barcodeid"]),
                }
            )
        manifest_id = self._barcode("manifest", ledger.training)
        record = {"manifestid": manifest_id, "location": location, "stops": stops, "voided": 0, **fields}
        self._touch(record)
        ledger.manifests[manifest_id] = record
        return {"manifest_id": manifest_id}

    def _do_inventory_manifest(self, ledger: Ledger, account: Account, doc: dict[str, Any]) -> dict[str, Any]:
        return self._manifest(
            ledger, account, doc, employee_id=doc["employee_id"], vehicle_id=doc["vehicle_id"]
        )

    def _do_inventory_manifest_third_party(
        self, ledger: Ledger, account: Account, doc: dict[str, Any]
    ) -> dict[str, Any]:
        return self._manifest(ledger, account, doc, third_party_license=doc["third_party_license"])

    def _do_inventory_manifest_void(
        self, ledger: Ledger, account: Account, doc: dict[str, Any]
    ) -> dict[str, Any]:
        manifest = ledger.manifests.get(str(doc["manifest_id"]))
        if manifest is None:
            raise Refused(Code.NOT_FOUND, f"manifest {doc['manifest_id']} was not found")
        if manifest["voided"]:
            raise Refused(Code.STATE, f"manifest {doc['manifest_id']} is already void")
        manifest["voided"] = 1
        self._touch(manifest)
        return {}

    # -- admin ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What ``GET /_fake/state`` answers."""
        records: dict[str, list[dict[str, Any]]] = {
            "plants": [],
            "inventory": [],
            "manifests": [],
            "adjustments": [],
        }
        training: dict[str, list[dict[str, Any]]] = {k: [] for k in records}
        for (license_number, is_training), ledger in sorted(self.ledgers.items()):
            into = training if is_training else records
            for key, rows in (
                ("plants", ledger.plants.values()),
                ("inventory", ledger.inventory.values()),
                ("manifests", ledger.manifests.values()),
                ("adjustments", ledger.adjustments),
            ):
                into[key].extend({**r, "license_number": license_number} for r in rows)
        return {
            "records": records,
            "training_records": training,
            "create_counts": dict(self.create_counts),
            "nonce_replays": self.nonce_replays,
            "logins": self.logins,
            "sessions": len(self.sessions),
            "requests": {
                "total": sum(self.requests.values()),
                "by_action": dict(self.requests),
                "errors": dict(self.errors),
            },
            "faults": self.faults.summary(),
        }


# -- HTTP ----------------------------------------------------------------------------------

FAKE_KEY: Final = web.AppKey("biotrack_fake", BioTrackFake)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


async def _serverjson(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    raw = await request.read()
    try:
        doc: Any = json.loads(raw or b"null")
    except ValueError:
        doc = None
    action = doc.get("action") if isinstance(doc, dict) else None
    path = f"{request.path}/{action}" if isinstance(action, str) and action else request.path
    rule = fake.faults.draw(request.method, path)
    mode = rule.mode if rule is not None else None
    if rule is not None and mode == "error500":
        return _json({"success": 0, "error": "Internal Server Error"}, 500)
    if rule is not None and mode == "timeout":
        return await _faults.drop_connection(request, rule.delay_s)
    if rule is not None and mode == "rate_limit":
        return web.Response(
            status=429, text="Too Many Requests", headers={"Retry-After": _faults.retry_after(rule)}
        )
    if rule is not None and mode == "slow":
        await asyncio.sleep(rule.delay_s)
    answer = fake.answer(doc)
    if rule is not None and mode == "apply_then_500":
        return _json({"success": 0, "error": "Internal Server Error"}, 500)
    if rule is not None and mode == "apply_then_timeout":
        return await _faults.drop_connection(request, rule.delay_s)
    return _json(answer)


async def _state(request: web.Request) -> web.Response:
    return _json(request.app[FAKE_KEY].state())


async def _reset(request: web.Request) -> web.Response:
    fake = request.app[FAKE_KEY]
    raw = await request.read()
    if raw.strip():
        try:
            config = json.loads(raw)
            if not isinstance(config, dict):
                raise ValueError("the configuration must be a JSON object")
            fake.configure(config)
        except (ValueError, KeyError, TypeError) as exc:
            return _json({"Message": f"invalid configuration: {exc}"}, 400)
    fake.reset()
    return _json({"reset": True})


async def _expire(request: web.Request) -> web.Response:
    return _json({"expired": request.app[FAKE_KEY].expire_sessions()})


async def _faults_admin(request: web.Request) -> web.Response:
    return await _faults.handle_admin(request.app[FAKE_KEY].faults, request)


def make_app(config: Mapping[str, Any] | None = None) -> web.Application:
    """The fake BioTrackTHC as an aiohttp application.

    Args:
        config: ``{"accounts": [{"license_number", "username", "password", "locations"}],
            "session_ttl_s": 3600}``.

    Returns:
        The application; its :class:`BioTrackFake` is ``app[FAKE_KEY]``.

    """
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[FAKE_KEY] = BioTrackFake(config)
    app.router.add_post(ENDPOINT, _serverjson)
    app.router.add_get("/_fake/state", _state)
    app.router.add_post("/_fake/reset", _reset)
    app.router.add_post("/_fake/sessions/expire", _expire)
    app.router.add_route("*", "/_fake/faults", _faults_admin)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT (``python -m seedline_server.integrations.fakes.biotrack``)."""
    from seedline_server.integrations.fakes._serve import command_line

    command_line(
        make_app,
        name="fake BioTrackTHC",
        description="A local fake BioTrackTHC v1 (serverjson.asp).",
        argv=argv,
    )


if __name__ == "__main__":
    main()
