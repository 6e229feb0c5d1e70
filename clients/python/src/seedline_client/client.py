"""``connect()``: one channel with auth, retries and typed errors, and a typed stub per service."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from seedline_client._generated.seedline.audit.v1 import AuditServiceStub
from seedline_client._generated.seedline.auth.v1 import AuthServiceStub
from seedline_client._generated.seedline.integration.v1 import IntegrationServiceStub
from seedline_client._generated.seedline.inventory.v1 import InventoryServiceStub
from seedline_client._generated.seedline.lab.v1 import LabResultServiceStub
from seedline_client._generated.seedline.license.v1 import LicenseServiceStub
from seedline_client._generated.seedline.plant.v1 import PlantServiceStub
from seedline_client._generated.seedline.telemetry.v1 import TelemetryServiceStub
from seedline_client._generated.seedline.transfer.v1 import TransferServiceStub
from seedline_client.auth import Credentials, MetadataInterceptor
from seedline_client.errors import ErrorInterceptor
from seedline_client.retry import RequestIdInterceptor, RetryInterceptor, RetryPolicy

__all__ = ["Client", "connect"]


class Client:
    """Typed stubs for every Seedline service over one channel; close it (or use ``with``).

    Each stub method takes the request dataclass and returns the response dataclass, e.g.
    ``client.licenses.get_license(license_v1.GetLicenseRequest(name=...))``.

    Args:
        channel: The channel calls go through (``connect`` builds one with the interceptors).

    """

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.audit = AuditServiceStub(channel)
        self.auth = AuthServiceStub(channel)
        self.integrations = IntegrationServiceStub(channel)
        self.inventory = InventoryServiceStub(channel)
        self.lab = LabResultServiceStub(channel)
        self.licenses = LicenseServiceStub(channel)
        self.plants = PlantServiceStub(channel)
        self.telemetry = TelemetryServiceStub(channel)
        self.transfers = TransferServiceStub(channel)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def connect(
    target: str,
    *,
    credentials: Credentials | None = None,
    tls: grpc.ChannelCredentials | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = 30.0,
    request_ids: bool = True,
    options: Sequence[tuple[str, Any]] = (),
) -> Client:
    """A :class:`Client` for the Seedline gRPC server at ``target``.

    Args:
        target: ``host:port`` of the server's gRPC listener.
        credentials: :class:`~seedline_client.auth.BearerToken`, ``ApiKey`` or ``SessionToken``.
        tls: Channel credentials for TLS (e.g. ``grpc.ssl_channel_credentials(ca)``); ``None``
            for plaintext h2c (local development only).
        retry: The retry policy; ``None`` for the default :class:`RetryPolicy`.
            ``RetryPolicy(max_attempts=1)`` disables retries.
        timeout: Deadline in seconds of each attempt of a call; ``None`` for none.
        request_ids: Give mutations without a ``request_id`` a fresh one, so they can be retried.
        options: grpc channel options.

    Returns:
        The client; failed unary calls raise :class:`~seedline_client.errors.SeedlineError`.

    """
    if tls is None:
        raw = grpc.insecure_channel(target, options=list(options))
    else:
        raw = grpc.secure_channel(target, tls, options=list(options))
    interceptors: list[Any] = [ErrorInterceptor()]  # outermost first
    if request_ids:
        interceptors.append(RequestIdInterceptor())
    interceptors += [RetryInterceptor(retry or RetryPolicy()), MetadataInterceptor(credentials, timeout)]
    # Closing the intercepted channel closes ``raw`` under it.
    return Client(grpc.intercept_channel(raw, *interceptors))
