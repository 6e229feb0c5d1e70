"""Typed errors: a failed call as a :class:`SeedlineError` with its ``google.rpc.Status`` decoded.

The server puts a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer: always an
``ErrorInfo`` (domain ``seedline.dev``, a ``reason`` from ``seedline.type.v1.ErrorReason``), and
``BadRequest``, ``ResourceInfo`` or ``RetryInfo`` where they apply (docs/api.md, "Errors").
Branch on the class (the gRPC code) and on :attr:`SeedlineError.reason`, never on the message.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, TypeVar

import betterproto2
import grpc

from seedline_client._generated.google import rpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "ErrorInterceptor",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SeedlineError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_Detail = TypeVar("_Detail", bound=betterproto2.Message)


class SeedlineError(grpc.RpcError):
    """A call that failed, with the server's error details decoded.

    It is a ``grpc.RpcError`` with grpc's ``code()``, ``details()`` and ``trailing_metadata()``,
    so code written against plain grpc errors keeps working.

    Attributes:
        status_code: The gRPC status code (also ``code()``).
        message: The status message, for people, not for branching (also ``details()``).
        error_details: The decoded ``google.rpc`` detail messages (unknown types are skipped).

    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: Sequence[betterproto2.Message] = (),
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.status_code = code
        self.message = message
        self.error_details = list(details)
        self._trailing = tuple(trailing_metadata)

    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self.status_code

    def details(self) -> str:
        """The status message (grpc's name for it)."""
        return self.message

    def trailing_metadata(self) -> tuple[Any, ...]:
        """The call's trailing metadata, as (key, value) pairs."""
        return self._trailing

    def _first(self, kind: type[_Detail]) -> _Detail | None:
        return next((d for d in self.error_details if isinstance(d, kind)), None)

    @property
    def error_info(self) -> rpc.ErrorInfo | None:
        """The ``google.rpc.ErrorInfo`` detail, if any."""
        return self._first(rpc.ErrorInfo)

    @property
    def reason(self) -> str:
        """``ErrorInfo.reason`` (e.g. ``RESOURCE_NOT_FOUND``, ``RATE_LIMITED``), or ``""``."""
        info = self.error_info
        return info.reason if info is not None else ""

    @property
    def retry_delay(self) -> datetime.timedelta | None:
        """How long the server asks the caller to wait (``google.rpc.RetryInfo``), if it says."""
        info = self._first(rpc.RetryInfo)
        return info.retry_delay if info is not None else None

    @property
    def field_violations(self) -> list[rpc.BadRequestFieldViolation]:
        """Every field problem the server listed (``google.rpc.BadRequest``)."""
        return [v for d in self.error_details if isinstance(d, rpc.BadRequest) for v in d.field_violations]

    @property
    def resource_info(self) -> rpc.ResourceInfo | None:
        """The missing or conflicting resource (``google.rpc.ResourceInfo``), if named."""
        return self._first(rpc.ResourceInfo)


class Cancelled(SeedlineError):
    """CANCELLED."""


class InvalidArgument(SeedlineError):
    """INVALID_ARGUMENT: the request is wrong (see :attr:`~SeedlineError.field_violations`)."""


class DeadlineExceeded(SeedlineError):
    """DEADLINE_EXCEEDED."""


class NotFound(SeedlineError):
    """NOT_FOUND: see :attr:`~SeedlineError.resource_info`."""


class AlreadyExists(SeedlineError):
    """ALREADY_EXISTS (also ``REQUEST_ID_REUSED``)."""


class PermissionDenied(SeedlineError):
    """PERMISSION_DENIED."""


class ResourceExhausted(SeedlineError):
    """RESOURCE_EXHAUSTED: rate limited; see :attr:`~SeedlineError.retry_delay`."""


class FailedPrecondition(SeedlineError):
    """FAILED_PRECONDITION: the resource's state does not allow the change."""


class Aborted(SeedlineError):
    """ABORTED (``ETAG_MISMATCH``: read again, then retry the update)."""


class Unimplemented(SeedlineError):
    """UNIMPLEMENTED."""


class Internal(SeedlineError):
    """INTERNAL: a server bug; the message carries the request id."""


class Unavailable(SeedlineError):
    """UNAVAILABLE: the server or a dependency is down; retry later."""


class Unauthenticated(SeedlineError):
    """UNAUTHENTICATED: no or an invalid credential."""


_BY_CODE: dict[grpc.StatusCode, type[SeedlineError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def _decode_details(trailing: Sequence[tuple[str, str | bytes]]) -> list[betterproto2.Message]:
    raw = next((v for k, v in trailing if k == STATUS_DETAILS_KEY and isinstance(v, bytes)), None)
    if raw is None:
        return []
    try:
        status = rpc.Status.parse(raw)
    except Exception:  # a malformed trailer must not hide the real error
        return []
    out: list[betterproto2.Message] = []
    for packed in status.details:
        try:
            message = packed.unpack()
        except Exception:  # noqa: S112 - a detail type this client does not know
            continue
        if message is not None:
            out.append(message)
    return out


def from_rpc_error(error: grpc.RpcError) -> SeedlineError:
    """The typed error for a failed call (``error`` must also be a ``grpc.Call``, as grpc's are).

    Args:
        error: What a stub raised.

    Returns:
        An instance of the :class:`SeedlineError` subclass for its code, details decoded.

    """
    if isinstance(error, SeedlineError):
        return error
    if not isinstance(error, grpc.Call):
        return SeedlineError(grpc.StatusCode.UNKNOWN, str(error))
    code = error.code() or grpc.StatusCode.UNKNOWN
    trailing = tuple(error.trailing_metadata() or ())
    cls = _BY_CODE.get(code, SeedlineError)
    return cls(code, error.details() or "", _decode_details(trailing), trailing)


class ErrorInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Raises :class:`SeedlineError` subclasses instead of bare ``grpc.RpcError`` from unary calls."""

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Runs the call; a failure is raised as its typed error."""
        outcome = continuation(client_call_details, request)
        error = outcome.exception()
        if isinstance(error, grpc.RpcError):
            raise from_rpc_error(error) from error
        return outcome
