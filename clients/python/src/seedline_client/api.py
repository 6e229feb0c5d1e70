"""The contract's message and enum types, one module per API package.

``from seedline_client.api import license_v1`` then ``license_v1.CreateLicenseRequest(...)``.
They are betterproto2 dataclasses generated from proto/ into ``seedline_client._generated``.
"""

from __future__ import annotations

from seedline_client._generated.google import protobuf, rpc
from seedline_client._generated.seedline.audit import v1 as audit_v1
from seedline_client._generated.seedline.auth import v1 as auth_v1
from seedline_client._generated.seedline.integration import v1 as integration_v1
from seedline_client._generated.seedline.inventory import v1 as inventory_v1
from seedline_client._generated.seedline.lab import v1 as lab_v1
from seedline_client._generated.seedline.license import v1 as license_v1
from seedline_client._generated.seedline.plant import v1 as plant_v1
from seedline_client._generated.seedline.telemetry import v1 as telemetry_v1
from seedline_client._generated.seedline.transfer import v1 as transfer_v1
from seedline_client._generated.seedline.type import v1 as type_v1

__all__ = [
    "audit_v1",
    "auth_v1",
    "integration_v1",
    "inventory_v1",
    "lab_v1",
    "license_v1",
    "plant_v1",
    "protobuf",
    "rpc",
    "telemetry_v1",
    "transfer_v1",
    "type_v1",
]
