"""The audit trail's hash chain: canonical JSON (RFC 8785), event hashes, chain lock keys.

Pure functions shared by the writer (:class:`~seedline_server.service.uow.UnitOfWork`), the
verifier (:mod:`seedline_server.service.audit`) and migration 0006.

An event's hash is the SHA-256 (lowercase hex) of the RFC 8785 (JCS) canonical JSON of its
*chain document*: the event in its proto3 JSON shape without ``hash`` (so it covers
``previousHash`` and ``sequence``)::

    {"name": "licenses/{license}/auditEvents/{id}", "id": ..., "sequence": "7",
     "eventTime": "2026-01-02T03:04:05.123456Z", "principal": ..., "requestId": ...,
     "method": ..., "resource": ..., "action": "AUDIT_ACTION_STATE_CHANGE",
     "verb": "PHASE_CHANGED", "before": {...}, "after": {...}, "previousHash": "<64 hex>"}

As in proto3 JSON, empty strings and unset ``before``/``after`` are left out; ``name`` is left
out for events without a license (company creation). ``verb`` is the stored, fine-grained name
of the change and ``action`` its ``AuditAction`` category, exactly as the API returns them, so a
client can recompute the hash from an event it read.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64
# The chain of events without a license (e.g. company creation) locks this key.
_NO_LICENSE = b"seedline.audit\x00-"


def _number(value: float) -> str:
    """ECMAScript ``Number.prototype.toString`` (what RFC 8785 prescribes for numbers)."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError("JSON has no NaN or Infinity")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    mantissa, _, exp = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    raw = (whole + frac).lstrip("0")
    digits = raw.rstrip("0")
    # value = int(digits) * 10 ** (n - k), as in ECMA-262 Number::toString
    k = len(digits)
    n = (int(exp) if exp else 0) - len(frac) + (len(raw) - len(digits)) + k
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * -n + digits
    else:
        e = n - 1
        mant = digits if k == 1 else digits[0] + "." + digits[1:]
        out = f"{mant}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + out


# JSON string escaping as RFC 8785 wants it (only ``"``, ``\\`` and control characters, short
# forms where JSON has them, ``\u00xx`` lowercase otherwise; everything else as is) is exactly
# what the standard library's C encoder does without ``ensure_ascii``.
_string: Callable[[str], str] = json.encoder.encode_basestring


def _sorted_keys(obj: dict[str, Any]) -> list[str]:
    """Keys in UTF-16 code unit order (code point order unless a key leaves the BMP)."""
    keys = list(obj)
    if all(k.isascii() for k in keys):
        return sorted(keys)
    return sorted(keys, key=lambda k: k.encode("utf-16-be"))


def canonical_json(value: Any) -> str:
    """RFC 8785 (JCS) canonical JSON of a JSON value (dict, list, str, number, bool, None).

    Numbers are IEEE 754 doubles as the RFC requires: an integer beyond 2**53 is rounded, so
    values that must be exact (int64, decimals) belong in strings, as proto3 JSON puts them.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int | float):
        return _number(float(value))
    if isinstance(value, dict):
        # Keys sort by their UTF-16 code units (RFC 8785 §3.2.3).
        return "{" + ",".join(_string(k) + ":" + canonical_json(value[k]) for k in _sorted_keys(value)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def rfc3339(value: datetime) -> str:
    """proto3 JSON form of a Timestamp: UTC, ``Z``, 0, 3 or 6 fractional digits."""
    t = value.astimezone(UTC)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    us = t.microsecond
    if us == 0:
        return base + "Z"
    if us % 1000 == 0:
        return f"{base}.{us // 1000:03d}Z"
    return f"{base}.{us:06d}Z"


def chain_document(
    *,
    id: str,
    license_id: str | None,
    sequence: int,
    event_time: datetime,
    principal: str,
    request_id: str,
    method: str,
    resource: str,
    action: str,
    before: Any,
    after: Any,
    previous_hash: str,
) -> dict[str, Any]:
    """The document an event's hash is computed over (see the module docstring)."""
    doc: dict[str, Any] = {"id": id, "sequence": str(sequence), "eventTime": rfc3339(event_time)}
    if license_id:
        doc["name"] = f"licenses/{license_id}/auditEvents/{id}"
    for key, text in (
        ("principal", principal),
        ("requestId", request_id),
        ("method", method),
        ("resource", resource),
        ("action", _ACTION_NAMES[action_number(action)] if action else ""),
        ("verb", action),
    ):
        if text:
            doc[key] = text
    if before is not None:
        doc["before"] = before
    if after is not None:
        doc["after"] = after
    doc["previousHash"] = previous_hash
    return doc


def event_hash(document: dict[str, Any]) -> str:
    """SHA-256, lowercase hex, of the document's canonical JSON."""
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def lock_key(license_id: str | None) -> int:
    """The ``pg_advisory_xact_lock`` key of a license's chain: a signed 64-bit hash of its id.

    Two licenses sharing a key (odds 2**-64) only serialise their appends; nothing breaks.
    """
    seed = _NO_LICENSE if license_id is None else b"seedline.audit\x00" + license_id.encode()
    return int.from_bytes(hashlib.sha256(seed).digest()[:8], "big", signed=True)


# How a stored verb shows as ``seedline.audit.v1.AuditAction``: (match, text, enum number), first
# match wins; anything else is a lifecycle step by a custom method (STATE_CHANGE). The list is
# also compiled to SQL for the ``action`` filter, so both always agree.
ACTION_STATE_CHANGE = 4
ACTION_RULES: tuple[tuple[str, str, int], ...] = (
    ("eq", "CREATE", 1),
    ("prefix", "CREATE_", 1),
    ("eq", "TRANSFER_CREATED", 1),
    ("eq", "UPDATE", 2),
    ("eq", "TRANSFER_UPDATED", 2),
    ("eq", "DELETE", 3),
    # Operations confirmed by an electronic signature.
    ("eq", "DESTROYED", 5),
    ("eq", "VOIDED", 5),
    ("prefix", "ACCESS_", 6),
    ("prefix", "REMOTE_", 7),
)


_ACTION_NAMES = {
    1: "AUDIT_ACTION_CREATE",
    2: "AUDIT_ACTION_UPDATE",
    3: "AUDIT_ACTION_DELETE",
    4: "AUDIT_ACTION_STATE_CHANGE",
    5: "AUDIT_ACTION_SIGN",
    6: "AUDIT_ACTION_GRANT",
    7: "AUDIT_ACTION_REMOTE_SYNC",
}


def action_number(verb: str) -> int:
    """The ``AuditAction`` number of a stored verb."""
    for match, pattern, number in ACTION_RULES:
        if verb == pattern if match == "eq" else verb.startswith(pattern):
            return number
    return ACTION_STATE_CHANGE
