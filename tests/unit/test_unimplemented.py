"""A contract method without a servicer answers UNIMPLEMENTED with reason NOT_IMPLEMENTED.

Every v1 service is served today; the mechanism stays for methods a later contract adds, so it is
tested here against a real in-process gRPC server on loopback.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from seedline.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from seedline_server.api import unimplemented

pytestmark = pytest.mark.asyncio


async def test_unserved_methods_answer_not_implemented_with_the_method_named() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        unimplemented.handlers([telemetry_pb2.DESCRIPTOR.services_by_name["TelemetryService"]])
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetSensor(telemetry_pb2.GetSensorRequest(name="licenses/L/sensors/S"))
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "issue #7" in (err.value.details() or "")
            raw = dict(err.value.trailing_metadata() or ()).get("grpc-status-details-bin")
            assert isinstance(raw, bytes)
            status = status_pb2.Status.FromString(raw)
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            assert info.reason == "NOT_IMPLEMENTED"
            assert info.metadata["method"] == "seedline.telemetry.v1.TelemetryService.GetSensor"
    finally:
        await server.stop(None)
