"""`seedline integration sync` against the real server (with its worker) and the fake METRC.

A full pull finds the plants only the fake METRC has and the command prints them as differences
and exits 0; a run the remote refuses (credentials without access to the facility) ends FAILED
and the command exits 1; a request the API refuses exits 2 with the server's reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from seedline.integration.v1 import integration_pb2 as ig
from seedline.integration.v1 import integration_pb2_grpc
from typer.testing import CliRunner

from seedline_server.cli import app
from tests.e2e.test_integrations_flow import fake, license_number
from tests.e2e.test_inventory_cycle import make_farm
from tests.support import auth
from tests.support.fakes import FakeProcess
from tests.support.stack import EdgeProcess

VENDOR, USER = "cli-vendor-key", "cli-user-key"
STRANGERS = ["1A4FF0100000022000077701", "1A4FF0100000022000077702"]


@dataclass
class Synced:
    name: str
    metrc: FakeProcess


@pytest.fixture
def started(stack: EdgeProcess, tmp_path: Path) -> Iterator[list[FakeProcess]]:
    """The fakes a test started; all stopped after it."""
    processes: list[FakeProcess] = []
    yield processes
    for process in processes:
        process.stop()


def metrc_integration(
    stack: EdgeProcess, channel: grpc.Channel, started: list[FakeProcess], tmp: Path, *, user_key: str
) -> Synced:
    """A new license with a METRC integration, and a fake METRC that knows its facility."""
    farm = make_farm(channel)
    facility = license_number(channel, farm.license)
    config = {
        "vendor_keys": [VENDOR],
        "users": {USER: [facility]},
        "facilities": [{"Number": facility, "Name": "CLI Farm", "LicenseType": "Cultivator"}],
    }
    metrc = fake(stack, "metrc", config, tmp)
    started.append(metrc)
    integration = integration_pb2_grpc.IntegrationServiceStub(channel).CreateIntegration(
        ig.CreateIntegrationRequest(
            parent=farm.license,
            integration=ig.Integration(
                kind=ig.INTEGRATION_KIND_METRC,
                display_name="METRC (fake)",
                endpoint_uri=metrc.base_url,
                enabled=True,
                metrc=ig.MetrcConfig(
                    state_code="CO", facility_license_number=facility, api_version=ig.METRC_API_VERSION_V2
                ),
                credentials=ig.Credentials(metrc=ig.MetrcCredentials(vendor_key=VENDOR, user_key=user_key)),
            ),
        )
    )
    return Synced(integration.name, metrc)


def sync(stack: EdgeProcess, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        ["integration", "sync", *args, "--target", stack.server.target, "--timeout", "120"],
        env={"SEEDLINE_TOKEN": auth.mint()},
    )
    return result.exit_code, result.output


def test_a_full_pull_prints_the_differences_and_exits_0(
    stack: EdgeProcess, channel: grpc.Channel, started: list[FakeProcess], tmp_path: Path
) -> None:
    synced = metrc_integration(stack, channel, started, tmp_path, user_key=USER)
    name, metrc = synced.name, synced.metrc
    now = datetime.now(UTC).isoformat()
    metrc.post(
        "/_fake/seed",
        {
            "plants": [
                {"Label": label, "GrowthPhase": "Vegetative", "LastModified": now} for label in STRANGERS
            ]
        },
    )
    code, out = sync(stack, name, "--scope", "plants", "--direction", "pull")
    assert code == 0, out
    assert "SUCCEEDED" in out
    assert "differences 2: missing_local 2" in out
    assert "records pulled" in out
    run = integration_pb2_grpc.IntegrationServiceStub(channel).GetIntegration(
        ig.GetIntegrationRequest(name=name)
    )
    assert run.latest_sync_run.id in out
    assert run.latest_sync_run.state == ig.SYNC_RUN_STATE_SUCCEEDED

    # The id with --license names the same integration; another run follows.
    license_id = name.split("/")[1]
    code, out = sync(stack, name.rsplit("/", 1)[1], "--license", license_id, "--scope", "plants")
    assert code == 0, out
    assert "plants" in out


def test_a_failed_run_exits_1_and_a_refused_start_exits_2(
    stack: EdgeProcess, channel: grpc.Channel, started: list[FakeProcess], tmp_path: Path
) -> None:
    name = metrc_integration(stack, channel, started, tmp_path, user_key="a-key-metrc-does-not-know").name
    code, out = sync(stack, name, "--scope", "plants", "--direction", "pull")
    assert code == 1, out
    assert "FAILED" in out
    assert "error:" in out

    code, out = sync(stack, name, "--scope", "everything")
    assert code == 2
    assert "--scope must be one of" in out

    code, out = sync(stack, "/".join(name.split("/")[:2]) + "/integrations/01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert code == 2
    assert "NOT_FOUND" in out
