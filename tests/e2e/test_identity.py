"""Identity over a real server: API keys, sessions, grants, and e-signatures that re-prove identity."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from seedline.auth.v1 import auth_pb2 as au
from seedline.auth.v1 import auth_pb2_grpc
from seedline.inventory.v1 import inventory_pb2 as inv
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.type.v1 import esignature_pb2

from tests.e2e.test_grpc import details
from tests.e2e.test_inventory_cycle import make_farm, new_lot, q
from tests.support import auth
from tests.support.stack import EdgeProcess


def in_days(days: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(datetime.now(UTC) + timedelta(days=days))
    return t


def code_and_reason(fn: object, *args: object, **kw: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kw)  # type: ignore[operator]
    return err.value.code(), details(err.value)[0].reason


def test_api_key_lifecycle_and_sessions(stack: EdgeProcess, channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    admin = auth_pb2_grpc.AuthServiceStub(channel)
    key = admin.CreateApiKey(
        au.CreateApiKeyRequest(
            api_key=au.ApiKey(
                display_name="scale sync",
                scopes=["inventory.read"],
                licenses=[farm.license],
                expire_time=in_days(30),
            )
        )
    )
    assert key.key.startswith("slk_")
    assert key.state == au.API_KEY_STATE_ACTIVE
    # Shown once: reading it back never returns the secret.
    assert admin.GetApiKey(au.GetApiKeyRequest(name=key.name)).key == ""
    with grpc.insecure_channel(stack.server.target) as raw:
        as_key = auth.with_bearer(raw, key.key)
        lots = inventory_pb2_grpc.InventoryServiceStub(as_key)
        assert lots.ListLots(inv.ListLotsRequest(parent=farm.license)) is not None
        ping = auth_pb2_grpc.AuthServiceStub(as_key).PingSession(au.PingSessionRequest())
        assert ping.principal == key.name
        assert ping.authentication_method == au.AUTHENTICATION_METHOD_API_KEY
        # Its scope is read-only, and only on its license.
        assert code_and_reason(
            lots.AdjustLot,
            inv.AdjustLotRequest(
                name=f"{farm.license}/lots/{'01JD' + '0' * 22}", decrease_by=q("1"), reason=3
            ),
        ) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
        assert code_and_reason(lots.ListLots, inv.ListLotsRequest(parent=make_farm(channel).license)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        )
        # A session opened with the key acts like it; shutting it ends it at once.
        session = auth_pb2_grpc.AuthServiceStub(raw).OpenSession(au.OpenSessionRequest(api_key=key.key))
        assert session.token.startswith("sls_")
        assert session.state == au.SESSION_STATE_ACTIVE
        as_session = auth.with_bearer(raw, session.token)
        pinged = auth_pb2_grpc.AuthServiceStub(as_session).PingSession(au.PingSessionRequest())
        assert pinged.session.name == session.name
        inventory_pb2_grpc.InventoryServiceStub(as_session).ListLots(inv.ListLotsRequest(parent=farm.license))
        auth_pb2_grpc.AuthServiceStub(as_session).ShutSession(au.ShutSessionRequest())
        time.sleep(0.1)
        assert code_and_reason(
            inventory_pb2_grpc.InventoryServiceStub(as_session).ListLots,
            inv.ListLotsRequest(parent=farm.license),
        ) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID")
        # Revoking the key refuses it (and any session opened with it).
        revoked = admin.RevokeApiKey(au.RevokeApiKeyRequest(name=key.name))
        assert revoked.state == au.API_KEY_STATE_REVOKED
        time.sleep(2.1)  # other processes' caches expire within 2 s; this one forgot at once
        assert code_and_reason(lots.ListLots, inv.ListLotsRequest(parent=farm.license)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "CREDENTIALS_INVALID",
        )
    # last_use_time was recorded.
    assert admin.GetApiKey(au.GetApiKeyRequest(name=key.name)).HasField("last_use_time")


def test_a_key_cannot_exceed_its_creators_grants(stack: EdgeProcess, channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lic_id = farm.license.split("/")[1]
    with grpc.insecure_channel(stack.server.target) as raw:
        viewer = auth_pb2_grpc.AuthServiceStub(
            auth.with_bearer(raw, auth.mint(f"v-{uuid.uuid4().hex[:6]}", {lic_id: ["owner"]}))
        )
        viewer.CreateApiKey(
            au.CreateApiKeyRequest(
                api_key=au.ApiKey(
                    display_name="ok", scopes=["inventory.*"], licenses=[farm.license], expire_time=in_days(1)
                )
            )
        )
        assert code_and_reason(
            viewer.CreateApiKey,
            au.CreateApiKeyRequest(
                api_key=au.ApiKey(
                    display_name="too much",
                    scopes=["inventory.read"],
                    licenses=[make_farm(channel).license],
                    expire_time=in_days(1),
                )
            ),
        ) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


def test_an_esignature_must_reprove_the_callers_identity(channel: grpc.Channel) -> None:
    farm = make_farm(channel)
    lots = inventory_pb2_grpc.InventoryServiceStub(channel)

    def pending() -> inv.Lot:
        lot = new_lot(lots, farm, q("5"))
        return lots.DeleteLot(
            inv.DeleteLotRequest(
                name=lot.name,
                reason=inv.DESTRUCTION_REASON_DAMAGED,
                method=inv.DESTRUCTION_METHOD_COMPOST,
                waste=q("5"),
            )
        )

    def confirm(lot: inv.Lot, credential: str) -> inv.Lot:
        return lots.DeleteLot(
            inv.DeleteLotRequest(
                name=lot.name,
                confirm=True,
                esignature=esignature_pb2.ESignatureInput(
                    credential=credential,
                    meaning=esignature_pb2.SIGNATURE_MEANING_APPROVED,
                    reason="destroyed per SOP",
                ),
            )
        )

    refusals = {
        "someone else's token": auth.mint("someone-else"),
        "a stale token": auth.mint(issued=time.time() - 7200, ttl=86400),
        "garbage": "not-a-credential",
    }
    for why, credential in refusals.items():
        lot = pending()
        assert code_and_reason(confirm, lot, credential) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "ESIGNATURE_REQUIRED",
        ), why
        assert lots.GetLot(inv.GetLotRequest(name=lot.name)).status == inv.LOT_STATUS_DESTRUCTION_PENDING
    done = confirm(pending(), auth.mint())
    assert done.status == inv.LOT_STATUS_DESTROYED
    assert done.destruction.confirmation.signer == f"users/{auth.ADMIN}"
    assert done.destruction.confirmation.audit_event_id
