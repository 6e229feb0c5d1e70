"""HMAC-SHA256 signatures of webhook bodies, outbound (we sign) and inbound (we verify).

Header ``Seedline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``. The
timestamp is inside the MAC, so a captured delivery cannot be replayed later than the tolerance
(5 minutes), and within it the event id (``Seedline-Event-Id``) is refused the second time.
Several ``v1=`` values may appear (a receiver rotating its secret); one matching is enough.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["EVENT_ID_HEADER", "SIGNATURE_HEADER", "TOLERANCE_SECONDS", "SignatureError", "sign", "verify"]

SIGNATURE_HEADER = "Seedline-Signature"
EVENT_ID_HEADER = "Seedline-Event-Id"
TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """The signature is missing, malformed, stale or does not match."""


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``Seedline-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(
    secret: bytes, body: bytes, header: str | None, *, now: float, tolerance: int = TOLERANCE_SECONDS
) -> int:
    """Check a ``Seedline-Signature`` header; returns its timestamp.

    Raises:
        SignatureError: missing, malformed, outside ``tolerance`` of ``now``, or no MAC matches.

    """
    if not header:
        raise SignatureError("the Seedline-Signature header is missing")
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("the Seedline-Signature header is malformed")
        if key == "t":
            if not value.isdigit() or len(value) > 12:
                raise SignatureError("the Seedline-Signature timestamp is malformed")
            timestamp = int(value)
        elif key == "v1":
            macs.append(value)
    if timestamp is None or not macs:
        raise SignatureError("the Seedline-Signature header needs t= and v1=")
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"the signature timestamp is more than {tolerance} s from the server's clock")
    expected = _mac(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, m) for m in macs):
        raise SignatureError("the signature does not match the body")
    return timestamp
