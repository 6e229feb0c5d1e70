"""AuditService over gRPC and REST against the real server: listing, filtering, paging, chain."""

from __future__ import annotations

import itertools
import json
import uuid
from urllib.parse import quote

import grpc
import httpx
import pytest
from seedline.audit.v1 import audit_pb2 as pb
from seedline.audit.v1 import audit_pb2_grpc

from seedline_server.domain.audit import GENESIS_HASH
from tests.e2e.test_grpc import make_license

pytestmark = pytest.mark.e2e


def test_list_and_get_audit_events_over_grpc(channel: grpc.Channel) -> None:
    lic, section, _ = make_license(channel, f"CO-AUD-{uuid.uuid4().hex[:8]}")
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    events = list(stub.ListAuditEvents(pb.ListAuditEventsRequest(parent=lic)).audit_events)
    assert [e.sequence for e in events] == [1, 2, 3]  # license, section, variety
    assert events[0].previous_hash == GENESIS_HASH
    assert all(b.previous_hash == a.hash for a, b in itertools.pairwise(events))
    assert events[0].action == pb.AUDIT_ACTION_CREATE
    assert events[0].resource == lic
    assert events[0].principal
    assert events[0].method.endswith("CreateLicense")
    assert (
        events[1].after["displayName" if "displayName" in events[1].after else "display_name"] == "Flower 1"
    )
    assert events[1].name == f"{lic}/auditEvents/{events[1].id}"

    got = stub.GetAuditEvent(pb.GetAuditEventRequest(name=events[1].name))
    assert got == events[1]

    newest = stub.ListAuditEvents(
        pb.ListAuditEventsRequest(parent=lic, order_by="sequence desc", page_size=2)
    )
    assert [e.sequence for e in newest.audit_events] == [3, 2]
    rest = stub.ListAuditEvents(
        pb.ListAuditEventsRequest(
            parent=lic, order_by="sequence desc", page_size=2, page_token=newest.next_page_token
        )
    )
    assert [e.sequence for e in rest.audit_events] == [1]
    assert not rest.next_page_token

    only = stub.ListAuditEvents(
        pb.ListAuditEventsRequest(
            parent=lic, filter=f'resource = "{section}" AND action = AUDIT_ACTION_CREATE'
        )
    )
    assert [e.resource for e in only.audit_events] == [section]
    later = stub.ListAuditEvents(
        pb.ListAuditEventsRequest(parent=lic, filter="sequence >= 2 AND sequence < 3")
    )
    assert [e.sequence for e in later.audit_events] == [2]
    none = stub.ListAuditEvents(
        pb.ListAuditEventsRequest(parent=lic, filter='event_time < "2000-01-01T00:00:00Z"')
    )
    assert not none.audit_events

    with pytest.raises(grpc.RpcError) as err:
        stub.ListAuditEvents(pb.ListAuditEventsRequest(parent=lic, filter="colour = red"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    other, _, _ = make_license(channel, f"CO-AUD-{uuid.uuid4().hex[:8]}")
    with pytest.raises(grpc.RpcError) as err:
        stub.GetAuditEvent(pb.GetAuditEventRequest(name=f"{other}/auditEvents/{events[1].id}"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_audit_events_over_rest(rest: httpx.Client, channel: grpc.Channel) -> None:
    lic, _section, _ = make_license(channel, f"CO-AUDR-{uuid.uuid4().hex[:8]}")
    # Spaces as %20: Envoy's transcoder does not read "+" in a query string as a space.
    flt = quote("sequence > 0")
    page = rest.get(f"/v1/{lic}/auditEvents?pageSize=2&filter={flt}")
    assert page.status_code == 200, page.text
    body = page.json()
    assert [e["sequence"] for e in body["auditEvents"]] == ["1", "2"]
    assert body["auditEvents"][0]["action"] == "AUDIT_ACTION_CREATE"
    assert body["auditEvents"][0]["previousHash"] == GENESIS_HASH
    nxt = rest.get(f"/v1/{lic}/auditEvents?pageSize=2&filter={flt}&pageToken={body['nextPageToken']}").json()
    assert [e["sequence"] for e in nxt["auditEvents"]] == ["3"]
    one = rest.get(f"/v1/{nxt['auditEvents'][0]['name']}")
    assert one.status_code == 200
    assert one.json()["hash"] == nxt["auditEvents"][0]["hash"]
    bad = rest.get(f"/v1/{lic}/auditEvents?filter={quote('sequence ~ 1')}")
    assert bad.status_code == 400


def test_a_client_recomputes_every_hash_from_the_rest_json(rest: httpx.Client) -> None:
    """The contract's promise: hash = SHA-256 of the canonical JSON of the event without `hash`."""
    from seedline_server.domain.audit import GENESIS_HASH, event_hash

    company = rest.post("/v1/companies", json={"displayName": "Hash Check Co"}).json()
    lic = rest.post(
        "/v1/licenses",
        json={
            "company": company["name"],
            "licenseNumber": f"HC-{uuid.uuid4().hex[:8]}",
            "displayName": "Hash Check",
            "type": "LICENSE_TYPE_GROWER",
            "jurisdiction": "US-CO",
            "active": True,
        },
    ).json()
    rest.post(f"/v1/{lic['name']}/sections", json={"displayName": "Vault", "type": "SECTION_TYPE_INVENTORY"})
    events = rest.get(f"/v1/{lic['name']}/auditEvents").json()["auditEvents"]
    assert len(events) >= 2
    previous = GENESIS_HASH
    for event in events:
        # proto3 JSON without `hash`, default (empty) fields left out as the canonical form does
        # (the REST face prints them).
        body = {k: v for k, v in event.items() if k != "hash" and v not in ("", None)}
        assert event["previousHash"] == previous
        assert event_hash(body) == event["hash"], json.dumps(body, sort_keys=True)
        previous = event["hash"]
