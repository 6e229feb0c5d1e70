"""What the CLI's gRPC clients share: call metadata and readable error descriptions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` as the bearer credential (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def status_details(err: grpc.aio.AioRpcError) -> Iterator[any_pb2.Any]:
    """The details of the ``google.rpc.Status`` the server attached (none when unreadable)."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            with suppress(Exception):
                yield from status_pb2.Status.FromString(value).details


def describe_error(err: grpc.aio.AioRpcError) -> str:
    """``CODE: message`` plus the reason and field violations the server attached."""
    parts = [f"{err.code().name}: {err.details()}"]
    for detail in status_details(err):
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
    for detail in status_details(err):
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found
