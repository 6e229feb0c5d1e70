"""Call details an interceptor can rewrite (grpc only offers an abstract ``ClientCallDetails``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

__all__ = ["Metadata", "with_details"]

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str | bytes], ...] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def with_details(
    details: grpc.ClientCallDetails,
    *,
    extra_metadata: Metadata = (),
    default_timeout: float | None = None,
) -> grpc.ClientCallDetails:
    """``details`` plus metadata entries whose keys it lacks, and a timeout if it has none.

    Args:
        details: The call's details as grpc hands them to an interceptor.
        extra_metadata: Entries to add; a key the call already sets is left as the call set it.
        default_timeout: Seconds, used when the call has no timeout of its own.

    Returns:
        New details; ``details`` is not changed.

    """
    metadata = list(details.metadata or ())
    present = {key for key, _ in metadata}
    metadata.extend((key, value) for key, value in extra_metadata if key not in present)
    return _Details(
        method=details.method,
        timeout=details.timeout if details.timeout is not None else default_timeout,
        metadata=tuple(metadata),
        credentials=details.credentials,
        wait_for_ready=getattr(details, "wait_for_ready", None),
        compression=getattr(details, "compression", None),
    )
