"""Server process lifecycle: graceful shutdown with calls in flight, embedded data across restarts."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.plant.v1 import plant_pb2 as pl
from seedline.plant.v1 import plant_pb2_grpc

from tests.e2e.test_grpc import make_license
from tests.support import auth
from tests.support.stack import ServerProcess

pytestmark = pytest.mark.e2e


def test_sigterm_lets_in_flight_calls_finish(e2e_pg_url: str, tmp_path: Path) -> None:
    server = ServerProcess(
        database_url=e2e_pg_url, data_dir=tmp_path, extra_env={"SEEDLINE_SHUTDOWN_GRACE_SECONDS": "20"}
    )
    server.start()
    try:
        with grpc.insecure_channel(server.target) as raw:
            channel = auth.with_bearer(raw, auth.mint())
            license_, section, variety = make_license(channel, "CO-SHUTDOWN")
            stub = plant_pb2_grpc.PlantServiceStub(channel)
            request = pl.BatchCreatePlantsRequest(
                parent=license_, plant=pl.Plant(variety=variety, section=section), count=300
            )

            def call() -> str:
                try:
                    return f"ok:{len(stub.BatchCreatePlants(request, timeout=60).plants)}"
                except grpc.RpcError as err:
                    return err.code().name

            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(call) for _ in range(8)]
                time.sleep(0.5)  # calls are in flight (each creates 300 audited plants)
                assert server.proc is not None
                server.proc.send_signal(signal.SIGTERM)
                outcomes = [f.result() for f in futures]
    finally:
        code = server.stop()
    assert code == 0
    # Every call that started finished with its full result, or was refused before it began.
    assert all(o == "ok:300" or o == "UNAVAILABLE" for o in outcomes), outcomes
    assert any(o == "ok:300" for o in outcomes), outcomes


def test_embedded_postgres_keeps_data_across_restarts(tmp_path: Path) -> None:
    first = ServerProcess(database_url="", data_dir=tmp_path / "state")
    first.start()
    try:
        with grpc.insecure_channel(first.target) as raw:
            channel = auth.with_bearer(raw, auth.mint())
            company = license_pb2_grpc.LicenseServiceStub(channel).CreateCompany(
                lic.CreateCompanyRequest(company=lic.Company(display_name="Persistent Co"))
            )
    finally:
        assert first.stop() == 0
    second = ServerProcess(database_url="", data_dir=tmp_path / "state")
    second.start()
    try:
        with grpc.insecure_channel(second.target) as raw:
            channel = auth.with_bearer(raw, auth.mint())
            again = license_pb2_grpc.LicenseServiceStub(channel).GetCompany(
                lic.GetCompanyRequest(name=company.name)
            )
        assert again == company
    finally:
        assert second.stop() == 0
    assert (tmp_path / "state" / "postgres" / "PG_VERSION").exists()
