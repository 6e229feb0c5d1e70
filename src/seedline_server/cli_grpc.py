"""What the CLI's gRPC clients share: call metadata and readable error descriptions."""

from __future__ import annotations

from contextlib import suppress

import grpc
from google.rpc import error_details_pb2, status_pb2


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` as the bearer credential (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def describe_error(err: grpc.aio.AioRpcError) -> str:
    """``CODE: message`` plus the reason and field violations the server attached."""
    parts = [f"{err.code().name}: {err.details()}"]
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        with suppress(Exception):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(info):
                    parts.append(f"reason {info.reason}")
                elif detail.Unpack(bad):
                    parts.extend(f"{v.field}: {v.description}" for v in bad.field_violations)
    return "; ".join(parts)


def field_violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of the error's BadRequest detail, if any."""
    found: list[tuple[str, str]] = []
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        with suppress(Exception):
            for detail in status_pb2.Status.FromString(value).details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    found.extend((v.field, v.description) for v in bad.field_violations)
    return found
