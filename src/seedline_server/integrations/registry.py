"""Builds the connector of an integration from its stored row, and keeps it while it is current."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from seedline.integration.v1 import integration_pb2 as pb
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server.config import Settings
from seedline_server.crypto import KeyRing, Secret
from seedline_server.integrations.connector import Connector
from seedline_server.integrations.limits import SharedLimits
from seedline_server.integrations.transport import Http, RemoteError
from seedline_server.store import integration_models as im

__all__ = ["CONFIG_TYPES", "Connectors", "IntegrationRow", "open_row", "parse_config"]

_TTL = 2.0  # seconds a built connector is reused before its row's version is checked again

# The config message of each kind (stored as proto3 JSON in ``integrations.config``).
CONFIG_TYPES: dict[str, type[Message]] = {
    "METRC": pb.MetrcConfig,
    "BIOTRACKTHC": pb.BioTrackConfig,
    "LIMS": pb.LimsConfig,
    "WEBHOOK": pb.WebhookConfig,
}


def parse_config(kind: str, config: dict[str, Any] | None) -> Any:
    """The kind's config message parsed from the stored proto3 JSON."""
    return json_format.ParseDict(config or {}, CONFIG_TYPES[kind](), ignore_unknown_fields=True)


@dataclass(frozen=True)
class IntegrationRow:
    """What a connector is built from: the row, its parsed config and its opened credentials."""

    id: str
    license_id: str
    kind: str
    endpoint_uri: str
    config: dict[str, Any]
    credentials: Secret[bytes] | None
    version: int

    @property
    def name(self) -> str:
        """The integration's resource name."""
        return f"licenses/{self.license_id}/integrations/{self.id}"

    def opened(self) -> pb.Credentials:
        """The credentials message.

        Raises:
            RemoteError: none are stored (not retryable by waiting: someone must set them).

        """
        if self.credentials is None:
            raise RemoteError(
                "no credentials are stored for this integration; set them with UpdateIntegration",
                retryable=False,
                maybe_sent=False,
                counts_for_breaker=False,
            )
        return pb.Credentials.FromString(self.credentials.reveal())

    def config_message(self) -> Any:
        """The kind's config message parsed from the stored proto3 JSON."""
        return parse_config(self.kind, self.config)


def open_row(keyring: KeyRing, row: Any) -> IntegrationRow:
    """An :class:`IntegrationRow` of a stored integration (anything with its columns), credentials opened.

    Raises:
        SecretError: the stored credentials cannot be opened with ``keyring``.

    """
    creds = None
    if row.credentials is not None:
        name = f"licenses/{row.license_id}/integrations/{row.id}"
        creds = Secret(keyring.open(row.credentials, name.encode()))
    return IntegrationRow(
        row.id, row.license_id, row.kind, row.endpoint_uri, row.config or {}, creds, row.version
    )


class Connectors:
    """Connector per integration id, rebuilt when the integration changes."""

    def __init__(
        self, engine: AsyncEngine, keyring: KeyRing, http: Http, limits: SharedLimits, *, settings: Settings
    ) -> None:
        self.settings = settings
        self._engine = engine
        self._keyring = keyring
        self.http = http
        self.limits = limits
        self._cache: dict[str, tuple[int, float, Connector]] = {}
        self._lock = asyncio.Lock()

    async def load(self, integration_id: str) -> IntegrationRow:
        """Read an integration and open its credentials."""
        i = im.Integration
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        i.id, i.license_id, i.kind, i.endpoint_uri, i.config, i.credentials, i.version
                    ).where(i.id == integration_id)
                )
            ).first()
        if row is None:
            raise RemoteError(
                f"integration {integration_id} no longer exists",
                retryable=False,
                maybe_sent=False,
                counts_for_breaker=False,
            )
        return open_row(self._keyring, row)

    async def __call__(self, integration_id: str) -> Connector:
        """The connector of ``integration_id``, built from its current row."""
        cached = self._cache.get(integration_id)
        if cached is not None and time.monotonic() - cached[1] < _TTL:
            return cached[2]
        row = await self.load(integration_id)
        if cached is not None and cached[0] == row.version:
            self._cache[integration_id] = (row.version, time.monotonic(), cached[2])
            return cached[2]
        connector = self.build(row)
        self._cache[integration_id] = (row.version, time.monotonic(), connector)
        return connector

    def build(self, row: IntegrationRow) -> Connector:
        """A new connector for ``row``."""
        if row.kind == "WEBHOOK":
            from seedline_server.integrations.webhook import WebhookConnector

            secret = row.opened().webhook.signing_secret
            return WebhookConnector(self.http, row.config_message().url, Secret(secret))
        if row.kind == "METRC":
            from seedline_server.integrations.metrc import MetrcConnector

            return MetrcConnector(self, row)
        if row.kind == "BIOTRACKTHC":
            from seedline_server.integrations.biotrack import BioTrackConnector

            return BioTrackConnector(self, row)
        if row.kind == "LIMS":
            from seedline_server.integrations.lims import LimsConnector

            return LimsConnector(self, row)
        raise RemoteError(f"unknown integration kind {row.kind}", retryable=False, maybe_sent=False)

    @property
    def engine(self) -> AsyncEngine:
        """The database engine (connectors read names and remote ids through it)."""
        return self._engine
