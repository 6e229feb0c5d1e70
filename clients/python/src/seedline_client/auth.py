"""Credentials the client sends with every call, and idempotency keys for mutations.

The server reads one header, ``authorization: Bearer <credential>``, and tells the credential's
kind by its shape: an API key starts with ``slk_``, a session token with ``sls_``, anything else
is verified as a JWT (see docs/api.md and docs/client.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from seedline_client._calls import Metadata, with_details

__all__ = [
    "API_KEY_PREFIX",
    "ApiKey",
    "BearerToken",
    "Credentials",
    "MetadataInterceptor",
    "SessionToken",
    "new_request_id",
]

API_KEY_PREFIX = "slk_"
SESSION_PREFIX = "sls_"


class Credentials(Protocol):
    """Anything that yields the metadata authenticating a call."""

    def metadata(self) -> Metadata:
        """Metadata entries to send with a call."""
        ...


def _bearer(value: str) -> Metadata:
    if not value or value != value.strip():
        raise ValueError("a credential must be non-empty and have no surrounding whitespace")
    return (("authorization", f"Bearer {value}"),)


@dataclass(frozen=True)
class BearerToken:
    """A bearer JWT, fixed or fetched before each call (so a refreshing source can rotate it).

    Args:
        token: The JWT, or a function returning the current one (called once per attempt).

    """

    token: str | Callable[[], str]

    def metadata(self) -> Metadata:
        """``authorization: Bearer <jwt>``."""
        return _bearer(self.token() if callable(self.token) else self.token)


@dataclass(frozen=True)
class ApiKey:
    """An API key (``slk_<id>_<secret>``, from ``AuthService.CreateApiKey``).

    Args:
        key: The whole key string.

    """

    key: str

    def __post_init__(self) -> None:
        if not self.key.startswith(API_KEY_PREFIX):
            raise ValueError(f"an API key starts with {API_KEY_PREFIX!r}")

    def metadata(self) -> Metadata:
        """``authorization: Bearer slk_…``."""
        return _bearer(self.key)

    def __repr__(self) -> str:
        return "ApiKey(key='slk_…')"  # never print the secret


@dataclass(frozen=True)
class SessionToken:
    """A session token (``sls_…``, from ``AuthService.OpenSession``).

    Args:
        token: The whole token string.

    """

    token: str

    def __post_init__(self) -> None:
        if not self.token.startswith(SESSION_PREFIX):
            raise ValueError(f"a session token starts with {SESSION_PREFIX!r}")

    def metadata(self) -> Metadata:
        """``authorization: Bearer sls_…``."""
        return _bearer(self.token)

    def __repr__(self) -> str:
        return "SessionToken(token='sls_…')"


def new_request_id() -> str:
    """A fresh idempotency key for a mutation's ``request_id`` (a UUID4, 36 characters)."""
    return str(uuid.uuid4())


class MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds credentials (and a default timeout) to every call of every kind.

    Metadata the call sets itself wins over the credentials' entries.

    Args:
        credentials: What to authenticate with; ``None`` sends no credential.
        timeout: Seconds for calls that set none; ``None`` for no deadline.

    """

    def __init__(self, credentials: Credentials | None = None, timeout: float | None = None) -> None:
        self._credentials = credentials
        self._timeout = timeout

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        extra = self._credentials.metadata() if self._credentials is not None else ()
        return with_details(details, extra_metadata=extra, default_timeout=self._timeout)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Unary calls."""
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Server-streaming calls."""
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        """Client-streaming calls."""
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        """Bidirectional calls."""
        return continuation(self._details(client_call_details), request_iterator)
