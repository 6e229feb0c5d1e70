"""IntegrationService end to end, over gRPC and over REST through Envoy, against a real TLS
webhook receiver on a loopback port: credentials go in and never come out, TestIntegration makes a
real signed call and the exchange log shows it; sync runs, dead letters and inbound events.

Expectations come from the comments in proto/seedline/integration/v1/integration.proto.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import pytest
from aiohttp import web
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from seedline.integration.v1 import integration_pb2 as pb
from seedline.integration.v1 import integration_pb2_grpc
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc

from seedline_server.integrations import signing
from seedline_server.integrations.fakes import _serve
from tests.e2e.test_access_matrix import LICENSE, call, request_for
from tests.e2e.test_grpc import details
from tests.e2e.test_inventory_cycle import refused
from tests.e2e.test_rest import reason
from tests.support import auth
from tests.support.stack import EdgeProcess

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-signing-secret-" + "x" * 24
LIMS_SECRET = "e2e-lims-inbound-signing-secret-" + "y" * 20


@dataclass
class Receiver:
    """A webhook receiver over TLS in a thread of its own: verifies signatures, records bodies."""

    cert: str
    key: str
    secret: str
    bodies: list[bytes] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    port: int = 0

    def _app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            try:
                signing.verify(
                    self.secret.encode(), body, request.headers.get(signing.SIGNATURE_HEADER), now=time.time()
                )
            except signing.SignatureError:
                return web.json_response({"error": "bad signature"}, status=401)
            self.bodies.append(body)
            self.event_ids.append(request.headers.get(signing.EVENT_ID_HEADER, ""))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app

    def __enter__(self) -> Receiver:
        from pathlib import Path

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            _serve.start(self._app(), host="127.0.0.1", port=0, cert=Path(self.cert), key=Path(self.key)),
            self._loop,
        )
        self._running = started.result(10)
        self.port = self._running.port
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._running.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"


@pytest.fixture(scope="module")
def receiver(stack: EdgeProcess) -> Iterator[Receiver]:
    pki = stack.server.integration_pki
    assert pki is not None, "the e2e server trusts a test CA for outbound calls"
    with Receiver(str(pki.server_cert), str(pki.server_key), SECRET) as r:
        yield r


def integrations(channel: grpc.Channel) -> integration_pb2_grpc.IntegrationServiceStub:
    return integration_pb2_grpc.IntegrationServiceStub(channel)


def new_license(channel: grpc.Channel, kind: lic.LicenseType.ValueType = lic.LICENSE_TYPE_GROWER) -> str:
    stub = license_pb2_grpc.LicenseServiceStub(channel)
    company = stub.CreateCompany(lic.CreateCompanyRequest(company=lic.Company(display_name="Hub Farms")))
    return stub.CreateLicense(
        lic.CreateLicenseRequest(
            license=lic.License(
                company=company.name,
                license_number=f"CO-HUB-{uuid.uuid4().hex[:10].upper()}",
                display_name="Hub Farms 1",
                type=kind,
                jurisdiction="US-CO",
                active=True,
            )
        )
    ).name


def webhook(url: str, secret: str = SECRET) -> pb.Integration:
    return pb.Integration(
        kind=pb.INTEGRATION_KIND_WEBHOOK,
        display_name="Partner hooks",
        enabled=True,
        webhook=pb.WebhookConfig(
            url=url, events=[pb.WEBHOOK_EVENT_TRANSFER_COMMITTED, pb.WEBHOOK_EVENT_LOT_UPDATED]
        ),
        credentials=pb.Credentials(webhook=pb.WebhookCredentials(signing_secret=secret)),
    )


def metrc() -> pb.Integration:
    return pb.Integration(
        kind=pb.INTEGRATION_KIND_METRC,
        display_name="Metrc CO",
        endpoint_uri="https://127.0.0.1:9/",
        enabled=True,
        metrc=pb.MetrcConfig(
            state_code="CO", facility_license_number="403-X0001", api_version=pb.METRC_API_VERSION_V2
        ),
        credentials=pb.Credentials(
            metrc=pb.MetrcCredentials(vendor_key="vk-e2e-secret", user_key="uk-e2e-secret")
        ),
    )


# --- gRPC --------------------------------------------------------------------------------------


def test_webhook_crud_test_and_logs_over_grpc(channel: grpc.Channel, receiver: Receiver) -> None:
    stub = integrations(channel)
    license_ = new_license(channel)
    created = stub.CreateIntegration(
        pb.CreateIntegrationRequest(parent=license_, integration=webhook(receiver.url), request_id="c-1")
    )
    assert created.name.startswith(f"{license_}/integrations/")
    assert created.credentials_set
    assert created.HasField("credentials_update_time")
    assert not created.HasField("credentials")
    assert SECRET.encode() not in created.SerializeToString()
    assert created.circuit_breaker_state == pb.CIRCUIT_BREAKER_STATE_CLOSED
    assert list(created.webhook.events) == [pb.WEBHOOK_EVENT_TRANSFER_COMMITTED, pb.WEBHOOK_EVENT_LOT_UPDATED]
    # A retry with the same request id answers as the first call did.
    again = stub.CreateIntegration(
        pb.CreateIntegrationRequest(parent=license_, integration=webhook(receiver.url), request_id="c-1")
    )
    assert again == created

    got = stub.GetIntegration(pb.GetIntegrationRequest(name=created.name))
    assert got == created
    assert got.dead_letter_count == 0
    assert not got.HasField("latest_sync_run")

    before = len(receiver.bodies)
    tested = stub.TestIntegration(pb.TestIntegrationRequest(name=created.name))
    assert (tested.reachable, tested.authenticated, tested.license_visible) == (True, True, True)
    assert tested.HasField("latency")
    assert tested.latency.ToTimedelta().total_seconds() > 0
    assert tested.log.startswith(f"{created.name}/logs/")
    assert SECRET not in tested.detail
    body = receiver.bodies[before]
    assert json.loads(body)["type"] == "ping"

    logs = stub.ListIntegrationLogs(pb.ListIntegrationLogsRequest(parent=created.name)).logs
    (entry,) = logs
    assert entry.name == tested.log
    assert entry.direction == pb.EXCHANGE_DIRECTION_OUTBOUND
    assert entry.status == pb.EXCHANGE_STATUS_SUCCESS
    assert entry.endpoint == "POST /hook"
    assert entry.payload_size_bytes == len(body)
    assert entry.payload_sha256 == hashlib.sha256(body).hexdigest()
    assert entry.request_id == receiver.event_ids[before]
    assert entry.HasField("response_time")
    assert SECRET not in str(entry)
    none = stub.ListIntegrationLogs(
        pb.ListIntegrationLogsRequest(parent=created.name, status=pb.EXCHANGE_STATUS_ERROR)
    )
    assert list(none.logs) == []

    listed = stub.ListIntegrations(
        pb.ListIntegrationsRequest(parent=license_, kind=pb.INTEGRATION_KIND_WEBHOOK)
    )
    assert [i.name for i in listed.integrations] == [created.name]
    assert SECRET.encode() not in listed.SerializeToString()


def test_update_rotates_credentials_only_when_masked(channel: grpc.Channel, receiver: Receiver) -> None:
    stub = integrations(channel)
    license_ = new_license(channel)
    created = stub.CreateIntegration(
        pb.CreateIntegrationRequest(parent=license_, integration=webhook(receiver.url))
    )
    change = pb.Integration()
    change.CopyFrom(created)
    change.display_name = "Renamed"
    change.credentials.webhook.signing_secret = "a-wrong-secret-" + "z" * 30
    renamed = stub.UpdateIntegration(
        pb.UpdateIntegrationRequest(
            integration=change, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
        )
    )
    assert renamed.display_name == "Renamed"
    assert renamed.etag != created.etag
    assert renamed.credentials_update_time == created.credentials_update_time
    # The stored secret is still the one the receiver knows.
    assert stub.TestIntegration(pb.TestIntegrationRequest(name=created.name)).authenticated

    change.etag = created.etag  # stale now
    refused(
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
        stub.UpdateIntegration,
        pb.UpdateIntegrationRequest(
            integration=change, update_mask=field_mask_pb2.FieldMask(paths=["credentials"])
        ),
    )
    change.etag = renamed.etag
    rotated = stub.UpdateIntegration(
        pb.UpdateIntegrationRequest(
            integration=change, update_mask=field_mask_pb2.FieldMask(paths=["credentials"])
        )
    )
    assert rotated.credentials_update_time.ToDatetime() > created.credentials_update_time.ToDatetime()
    # Now the receiver refuses our signature: reachable, not authenticated, and no error.
    tested = stub.TestIntegration(pb.TestIntegrationRequest(name=created.name))
    assert (tested.reachable, tested.authenticated) == (True, False)
    assert "401" in tested.detail
    err = refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UPDATE_MASK",
        stub.UpdateIntegration,
        pb.UpdateIntegrationRequest(integration=change, update_mask=field_mask_pb2.FieldMask(paths=["kind"])),
    )
    assert "kind" in (err.details() or "")


def test_errors_map_to_codes_without_internal(channel: grpc.Channel, stack: EdgeProcess) -> None:
    stub = integrations(channel)
    license_ = new_license(channel)
    bad = metrc()
    bad.ClearField("metrc")
    bad.webhook.url = "https://x.example/"
    bad.webhook.events.append(pb.WEBHOOK_EVENT_LOT_UPDATED)
    err = refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        stub.CreateIntegration,
        pb.CreateIntegrationRequest(parent=license_, integration=bad),
    )
    _, others = details(err)
    violations = [
        v for o in others if isinstance(o, error_details_pb2.BadRequest) for v in o.field_violations
    ]
    assert violations, "field violations expected"

    first = stub.CreateIntegration(pb.CreateIntegrationRequest(parent=license_, integration=metrc()))
    err = refused(
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        stub.CreateIntegration,
        pb.CreateIntegrationRequest(parent=license_, integration=metrc()),
    )
    assert first.name in (err.details() or "")
    missing = f"{license_}/integrations/01JD0000000000000000000000"
    refused(
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        stub.GetIntegration,
        pb.GetIntegrationRequest(name=missing),
    )
    refused(
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        stub.ListDeliveries,
        pb.ListDeliveriesRequest(parent=missing),
    )
    # A caller with a grant on another license learns nothing (the interceptor decides first).
    other = auth.mint(f"other-{uuid.uuid4().hex[:6]}", {"01JE" + "0" * 22: ["admin"]})
    with grpc.insecure_channel(stack.server.target) as raw:
        outsider = integrations(auth.with_bearer(raw, other))
        refused(
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
            outsider.GetIntegration,
            pb.GetIntegrationRequest(name=first.name),
        )
    # A METRC remote that is not there is a report, not an error.
    tested = stub.TestIntegration(pb.TestIntegrationRequest(name=first.name))
    assert not tested.reachable
    assert not tested.HasField("latency")


def test_sync_and_dead_letters_over_grpc(channel: grpc.Channel, receiver: Receiver) -> None:
    stub = integrations(channel)
    license_ = new_license(channel)
    hook = stub.CreateIntegration(
        pb.CreateIntegrationRequest(parent=license_, integration=webhook(receiver.url))
    )
    refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        stub.SyncIntegration,
        pb.SyncIntegrationRequest(
            name=hook.name,
            scopes=[pb.SYNC_SCOPE_TRANSFERS],
            mode=pb.SYNC_MODE_FULL,
            direction=pb.SYNC_DIRECTION_PULL,  # webhooks only push
        ),
    )
    run = stub.SyncIntegration(
        pb.SyncIntegrationRequest(
            name=hook.name,
            scopes=[pb.SYNC_SCOPE_TRANSFERS],
            mode=pb.SYNC_MODE_INCREMENTAL,
            direction=pb.SYNC_DIRECTION_PUSH,
            request_id="s-1",
        )
    )
    assert run.state == pb.SYNC_RUN_STATE_QUEUED
    assert list(run.scopes) == [pb.SYNC_SCOPE_TRANSFERS]
    assert stub.GetIntegration(pb.GetIntegrationRequest(name=hook.name)).latest_sync_run.id == run.id

    off = pb.Integration()
    off.CopyFrom(hook)
    off.enabled = False
    stub.UpdateIntegration(
        pb.UpdateIntegrationRequest(integration=off, update_mask=field_mask_pb2.FieldMask(paths=["enabled"]))
    )
    refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE_TRANSITION",
        stub.SyncIntegration,
        pb.SyncIntegrationRequest(
            name=hook.name,
            scopes=[pb.SYNC_SCOPE_PLANTS],
            mode=pb.SYNC_MODE_FULL,
            direction=pb.SYNC_DIRECTION_PUSH,
        ),
    )
    retried = stub.RetryDeadLetters(pb.RetryDeadLettersRequest(name=hook.name))
    assert retried.retried_count == 0
    refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        stub.RetryDeadLetters,
        pb.RetryDeadLettersRequest(
            name=hook.name,
            deliveries=[
                f"{license_}/integrations/01JD0000000000000000000000/deliveries/01JD0000000000000000000000"
            ],
        ),
    )
    assert list(stub.ListDeliveries(pb.ListDeliveriesRequest(parent=hook.name)).deliveries) == []
    assert list(stub.ListSyncDifferences(pb.ListSyncDifferencesRequest(parent=hook.name)).differences) == []


def _lims(lab_number: str) -> pb.Integration:
    return pb.Integration(
        kind=pb.INTEGRATION_KIND_LIMS,
        display_name="Acme LIMS",
        endpoint_uri="https://127.0.0.1:9/",
        enabled=True,
        lims=pb.LimsConfig(vendor="openthc", lab_license_number=lab_number),
        credentials=pb.Credentials(
            lims=pb.LimsCredentials(api_key="lims-key", webhook_signing_secret=LIMS_SECRET)
        ),
    )


def test_receive_event_passes_raw_bytes_and_signature_headers(
    channel: grpc.Channel, rest: httpx.Client
) -> None:
    stub = integrations(channel)
    license_ = new_license(channel)
    lab_number = f"CO-LAB-{uuid.uuid4().hex[:10].upper()}"
    company = license_pb2_grpc.LicenseServiceStub(channel).CreateCompany(
        lic.CreateCompanyRequest(company=lic.Company(display_name="Acme Testing"))
    )
    license_pb2_grpc.LicenseServiceStub(channel).CreateLicense(
        lic.CreateLicenseRequest(
            license=lic.License(
                company=company.name,
                license_number=lab_number,
                display_name="Acme Lab",
                type=lic.LICENSE_TYPE_LABORATORY,
                jurisdiction="US-CO",
                active=True,
            )
        )
    )
    lims = stub.CreateIntegration(pb.CreateIntegrationRequest(parent=license_, integration=_lims(lab_number)))
    body = b"this is not json, but it is signed"
    good = signing.sign(LIMS_SECRET.encode(), body, int(time.time()))

    # Signed correctly over the raw bytes: past authentication, refused for its content.
    ok = rest.post(
        f"/v1/{lims.name}:receive",
        content=body,
        headers={"Content-Type": "application/json", "Seedline-Signature": good, "Seedline-Event-Id": "ev-1"},
    )
    assert ok.status_code == 400, ok.text
    assert reason(ok.json()) == "VALIDATION_FAILED"
    # The same bytes with a wrong signature: UNAUTHENTICATED, which reveals nothing.
    bad = signing.sign(b"not-the-secret-" + b"q" * 32, body, int(time.time()))
    denied = rest.post(
        f"/v1/{lims.name}:receive",
        content=body,
        headers={"Content-Type": "application/json", "Seedline-Signature": bad, "Seedline-Event-Id": "ev-2"},
    )
    assert denied.status_code == 401, denied.text
    unknown = rest.post(
        f"/v1/{license_}/integrations/01JD0000000000000000000000:receive",
        content=body,
        headers={"Content-Type": "application/json", "Seedline-Signature": good, "Seedline-Event-Id": "ev-3"},
    )
    assert unknown.status_code == 401
    assert unknown.json()["message"] == denied.json()["message"]

    logs = stub.ListIntegrationLogs(
        pb.ListIntegrationLogsRequest(parent=lims.name, direction=pb.EXCHANGE_DIRECTION_INBOUND)
    ).logs
    assert sorted(entry.request_id for entry in logs) == ["ev-1", "ev-2"]
    assert {entry.payload_sha256 for entry in logs} == {hashlib.sha256(body).hexdigest()}
    assert all(entry.status == pb.EXCHANGE_STATUS_ERROR for entry in logs)


# --- REST through Envoy ------------------------------------------------------------------------


def test_webhook_over_rest(rest: httpx.Client, receiver: Receiver) -> None:
    company = rest.post("/v1/companies", json={"displayName": "Rest Hub"}).json()
    made = rest.post(
        "/v1/licenses",
        json={
            "company": company["name"],
            "licenseNumber": f"WA-HUB-{uuid.uuid4().hex[:8]}",
            "displayName": "Rest Hub 1",
            "type": "LICENSE_TYPE_GROWER",
            "jurisdiction": "US-WA",
            "active": True,
        },
    )
    assert made.status_code == 200, made.text
    license_ = made.json()["name"]
    created = rest.post(
        f"/v1/{license_}/integrations",
        json={
            "kind": "INTEGRATION_KIND_WEBHOOK",
            "displayName": "REST hooks",
            "enabled": True,
            "webhook": {"url": receiver.url, "events": ["WEBHOOK_EVENT_TRANSFER_COMMITTED"]},
            "credentials": {"webhook": {"signingSecret": SECRET}},
        },
    )
    assert created.status_code == 200, created.text
    integration = created.json()
    assert integration["credentialsSet"] is True
    assert "credentials" not in integration
    assert SECRET not in created.text
    name = integration["name"]

    got = rest.get(f"/v1/{name}")
    assert got.status_code == 200
    assert SECRET not in got.text
    assert got.json()["circuitBreakerState"] == "CIRCUIT_BREAKER_STATE_CLOSED"

    tested = rest.post(f"/v1/{name}:test", json={})
    assert tested.status_code == 200, tested.text
    report = tested.json()
    assert report["reachable"] is True
    assert report["authenticated"] is True
    assert report["licenseVisible"] is True
    assert report["latency"].endswith("s")

    logs = rest.get(f"/v1/{name}/logs", params={"direction": "EXCHANGE_DIRECTION_OUTBOUND", "pageSize": 5})
    assert logs.status_code == 200, logs.text
    (entry,) = logs.json()["logs"]
    assert entry["name"] == report["log"]
    assert entry["status"] == "EXCHANGE_STATUS_SUCCESS"
    body = receiver.bodies[receiver.event_ids.index(entry["requestId"])]
    assert entry["payloadSha256"] == hashlib.sha256(body).hexdigest()
    assert int(entry["payloadSizeBytes"]) == len(body)
    assert SECRET not in logs.text

    patched = rest.patch(
        f"/v1/{name}",
        params={"updateMask": "displayName"},
        json={"displayName": "REST hooks v2", "etag": got.json()["etag"]},  # only what changes (AIP-134)
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["displayName"] == "REST hooks v2"
    assert patched.json()["webhook"]["url"] == receiver.url  # the rest is kept
    blank = rest.patch(f"/v1/{name}", params={"updateMask": "displayName"}, json={"displayName": ""})
    assert blank.status_code == 400  # what the mask names is still validated
    assert SECRET not in patched.text

    bad_range = rest.get(
        f"/v1/{name}/logs",
        params={"startTime": datetime.now(UTC).isoformat(), "endTime": "2020-01-01T00:00:00Z"},
    )
    assert bad_range.status_code == 400
    assert reason(bad_range.json()) == "VALIDATION_FAILED"

    deleted = rest.request("DELETE", f"/v1/{name}", params={"etag": patched.json()["etag"]})
    assert deleted.status_code == 200, deleted.text
    gone = rest.get(f"/v1/{name}")
    assert gone.status_code == 404
    assert reason(gone.json()) == "RESOURCE_NOT_FOUND"


# --- nothing a caller sends is an INTERNAL -----------------------------------------------------

SERVICE = pb.DESCRIPTOR.services_by_name["IntegrationService"]
METHODS = list(SERVICE.methods)


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_nearly_empty_requests_are_refused_not_internal(stack: EdgeProcess, method: Any) -> None:
    """What the access matrix sends an allowed caller: INVALID_ARGUMENT or NOT_FOUND, never INTERNAL."""
    with grpc.insecure_channel(stack.server.target) as raw:
        code = call(raw, method, auth.mint(f"m-{uuid.uuid4().hex[:6]}", {LICENSE: ["admin"]}))
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), code
    # The same RPC naming a well-formed but unknown integration of that license.
    request = request_for(method)
    target = "parent" if "parent" in request.DESCRIPTOR.fields_by_name else "name"
    if method.name in ("ListIntegrations", "CreateIntegration", "UpdateIntegration"):
        return  # their subject is a license, or a whole integration (covered above)
    setattr(request, target, f"licenses/{LICENSE}/integrations/{LICENSE}")
    with grpc.insecure_channel(stack.server.target) as raw:
        path = f"/{SERVICE.full_name}/{method.name}"
        stub = raw.unary_unary(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as err:
            stub(request, metadata=auth.bearer(auth.mint(grants={LICENSE: ["admin"]})), timeout=10)
    expected = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED)
    assert err.value.code() in expected, err.value.details()
