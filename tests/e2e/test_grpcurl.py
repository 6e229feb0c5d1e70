"""Engineers' tools: grpcurl against server reflection, no proto files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import auth
from tests.support.stack import EdgeProcess

pytestmark = pytest.mark.e2e
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def test_list_shows_every_v1_service(stack: EdgeProcess) -> None:
    out = subprocess.run(
        [GRPCURL, "-plaintext", stack.server.target, "list"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    for name in (
        "License",
        "Plant",
        "Inventory",
        "LabResult",
        "Transfer",
        "Integration",
        "Telemetry",
        "Auth",
        "Audit",
    ):
        domain = {"LabResult": "lab"}.get(name, name.lower())
        assert f"seedline.{domain}.v1.{name}Service" in services, services
    assert "grpc.health.v1.Health" in services


def test_describe_plant_service(stack: EdgeProcess) -> None:
    out = subprocess.run(
        [GRPCURL, "-plaintext", stack.server.target, "describe", "seedline.plant.v1.PlantService"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert (
        "rpc GetPlant ( .seedline.plant.v1.GetPlantRequest ) returns ( .seedline.plant.v1.Plant )"
        in out.stdout
    )


def test_call_and_health(stack: EdgeProcess) -> None:
    out = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-H",
            f"authorization: Bearer {auth.mint()}",
            "-d",
            '{"company": {"display_name": "grpcurl Co"}}',
            stack.server.target,
            "seedline.license.v1.LicenseService/CreateCompany",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["name"].startswith("companies/")
    # Without the bearer token the same call is refused with a rich status grpcurl can show.
    anonymous = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-d",
            "{}",
            stack.server.target,
            "seedline.license.v1.LicenseService/CreateCompany",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert anonymous.returncode != 0
    assert "Unauthenticated" in anonymous.stderr
    assert "CREDENTIALS_MISSING" in anonymous.stderr
    health = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-d",
            '{"service": "seedline.plant.v1.PlantService"}',
            stack.server.target,
            "grpc.health.v1.Health/Check",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "SERVING"
