"""The one map from domain errors to ``google.rpc.Status`` (code, ErrorInfo, and details).

Details beyond ErrorInfo: BadRequest, ResourceInfo or RetryInfo where they apply.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from seedline_server.domain import errors as e

DOMAIN = "seedline.dev"

# Most specific class first: the first isinstance match wins.
_CODES: list[tuple[type[e.DomainError], int]] = [
    (e.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (e.NotFound, code_pb2.NOT_FOUND),
    (e.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (e.RequestIdReused, code_pb2.ALREADY_EXISTS),
    (e.EtagMismatch, code_pb2.ABORTED),
    (e.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (e.NotImplementedYet, code_pb2.UNIMPLEMENTED),
    (e.DependencyUnavailable, code_pb2.UNAVAILABLE),
    (e.CredentialsMissing, code_pb2.UNAUTHENTICATED),
    (e.CredentialsInvalid, code_pb2.UNAUTHENTICATED),
    (e.PermissionDenied, code_pb2.PERMISSION_DENIED),
    (e.RateLimited, code_pb2.RESOURCE_EXHAUSTED),
]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(exc: e.DomainError) -> status_pb2.Status:
    """The rich status for a domain error."""
    code = next((c for cls, c in _CODES if isinstance(exc, cls)), code_pb2.INTERNAL)
    status = status_pb2.Status(code=code, message=exc.message)
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=exc.metadata)
    status.details.append(_pack(info))
    if isinstance(exc, e.InvalidArgument) and exc.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in exc.violations
            ]
        )
        status.details.append(_pack(bad))
    if isinstance(exc, e.NotFound):
        status.details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=f"seedline.dev/{exc.resource.type.title().replace(' ', '')}",
                    resource_name=exc.resource.name,
                    description=exc.message,
                )
            )
        )
    if isinstance(exc, e.RateLimited):
        delay = duration_pb2.Duration()
        # Whole milliseconds, rounded up: retrying at the advertised time must succeed.
        delay.FromMilliseconds(math.ceil(exc.retry_after * 1000))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


def internal_status(request_id: str) -> status_pb2.Status:
    """The status for an unexpected failure: no internals leak, the log has the rest."""
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error; it was logged (request id {request_id or 'none'})",
    )
    status.details.append(_pack(error_details_pb2.ErrorInfo(reason="INTERNAL_ERROR", domain=DOMAIN)))
    return status


def to_grpc(status: status_pb2.Status) -> grpc.Status:
    """Convert for ``context.abort_with_status``."""
    converted: grpc.Status = rpc_status.to_status(status)
    return converted
