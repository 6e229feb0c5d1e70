"""Keyset pagination: page sizes and opaque page tokens bound to their query."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from seedline_server.domain.errors import InvalidArgument, InvalidPageToken

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    """Apply the convention: 0 → 20, above 100 → 100, negative → INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(query: dict[str, str]) -> str:
    canonical = json.dumps(query, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class PageToken:
    """Where the next page starts: after ``last_key``, for the query fingerprinted in ``query``."""

    last_key: str
    query: str

    def encode(self) -> str:
        """Opaque URL-safe form."""
        raw = json.dumps({"k": self.last_key, "q": self.query}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def next_token(last_key: str, query: dict[str, str]) -> str:
    """Token for the page after ``last_key`` of ``query``."""
    return PageToken(last_key, _fingerprint(query)).encode()


def decode_token(token: str, query: dict[str, str]) -> str | None:
    """Return the key to resume after, or None for the first page.

    Raises:
        InvalidPageToken: the token is malformed or was issued for a different query.

    """
    if not token:
        return None
    if len(token) > 1024:  # what the contract admits; also bounds the JSON decoder's nesting
        raise InvalidPageToken("page_token is malformed")
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        key, fingerprint = str(data["k"]), str(data["q"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidPageToken("page_token is malformed") from exc
    if fingerprint != _fingerprint(query):
        raise InvalidPageToken("page_token was issued for a different query; keep the other fields unchanged")
    return key
