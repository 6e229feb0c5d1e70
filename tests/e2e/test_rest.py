"""The REST face through the real Envoy over mutual TLS, with httpx."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from seedline_server.certs import issue_client_cert, write_ca
from tests.support import auth
from tests.support.stack import EdgeProcess

pytestmark = pytest.mark.e2e
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def reason(body: dict[str, object]) -> str:
    infos = [d for d in body["details"] if d.get("@type") == ERROR_INFO]  # type: ignore[union-attr]
    assert infos, body
    return str(infos[0]["reason"])


def setup_license(rest: httpx.Client, number: str) -> tuple[str, str, str]:
    company = rest.post("/v1/companies", json={"displayName": "Rest Farms"}).json()
    license_ = rest.post(
        "/v1/licenses",
        json={
            "company": company["name"],
            "licenseNumber": number,
            "displayName": "Rest Farms 1",
            "type": "LICENSE_TYPE_GROWER",
            "jurisdiction": "US-WA",
            "active": True,
        },
    )
    assert license_.status_code == 200, license_.text
    lic = license_.json()["name"]
    section = rest.post(
        f"/v1/{lic}/sections", json={"displayName": "Veg", "type": "SECTION_TYPE_CROP"}
    ).json()
    variety = rest.post(f"/v1/{lic}/varieties", json={"displayName": "OG Kush"}).json()
    return lic, section["name"], variety["name"]


def test_plant_crud_over_rest(rest: httpx.Client) -> None:
    lic, section, variety = setup_license(rest, "WA-REST-1")
    created = rest.post(
        f"/v1/{lic}/plants", json={"variety": variety, "section": section, "displayName": "R1"}
    )
    assert created.status_code == 200, created.text
    assert "grpc-status" not in created.headers
    assert "grpc-message" not in created.headers
    plant = created.json()
    assert plant["state"] == "PLANT_STATE_ACTIVE"
    assert plant["phase"] == "PLANT_PHASE_CLONE"

    got = rest.get(f"/v1/{plant['name']}")
    assert got.status_code == 200
    assert got.json()["name"] == plant["name"]

    patched = rest.patch(
        f"/v1/{plant['name']}",
        params={"updateMask": "displayName"},
        json={"displayName": "R1b", "etag": plant["etag"]},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["displayName"] == "R1b"

    listed = rest.get(f"/v1/{lic}/plants", params={"pageSize": 1})
    assert listed.status_code == 200
    assert len(listed.json()["plants"]) == 1

    first = rest.request(
        "DELETE",
        f"/v1/{plant['name']}",
        json={
            "waste": {"value": "12", "unit": "UNIT_GRAM"},
            "reason": "mites",
            "method": "DESTRUCTION_METHOD_COMPOST",
        },
    )
    assert first.status_code == 200, first.text
    assert first.json()["state"] == "PLANT_STATE_DESTRUCTION_PENDING"
    confirm = rest.request(
        "DELETE",
        f"/v1/{plant['name']}",
        json={
            "confirm": True,
            "esignature": {
                "credential": auth.mint(auth.PARTNER),
                "meaning": "SIGNATURE_MEANING_APPROVED",
                "reason": "witnessed",
            },
        },
    )
    assert confirm.status_code == 200
    assert confirm.json()["state"] == "PLANT_STATE_DESTROYED"
    again = rest.request(
        "DELETE",
        f"/v1/{plant['name']}",
        json={
            "confirm": True,
            "esignature": {
                "credential": auth.mint(auth.PARTNER),
                "meaning": "SIGNATURE_MEANING_APPROVED",
                "reason": "witnessed",
            },
        },
    )
    assert again.status_code == 400
    assert reason(again.json()) == "RESOURCE_LOCKED"


def test_missing_plant_is_json_404(rest: httpx.Client) -> None:
    lic, _, _ = setup_license(rest, "WA-REST-404")
    response = rest.get(f"/v1/{lic}/plants/01JD0000000000000000000000")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == 5
    assert "was not found" in body["message"]
    assert reason(body) == "RESOURCE_NOT_FOUND"


def test_invalid_input_is_400_with_field_violations(rest: httpx.Client) -> None:
    lic, _, _ = setup_license(rest, "WA-REST-400")
    response = rest.post(f"/v1/{lic}/sections", json={"displayName": "", "type": "SECTION_TYPE_UNSPECIFIED"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 3
    assert reason(body) == "VALIDATION_FAILED"
    bad = [d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    fields = {v["field"] for v in bad[0]["fieldViolations"]}
    assert fields == {"section"}
    text = " ".join(v["description"] for v in bad[0]["fieldViolations"])
    assert "display_name is required" in text
    assert "type is required" in text


def test_unknown_query_parameter_is_json_400(rest: httpx.Client) -> None:
    response = rest.get("/v1/companies", params={"colour": "green"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 3
    assert body["message"]


def test_unknown_path_is_json_404(rest: httpx.Client) -> None:
    response = rest.get("/v1/no/such/thing")
    assert response.status_code == 404
    assert response.json()["code"] == 5


def test_partner_identity_reaches_server_and_forged_header_does_not(rest: httpx.Client) -> None:
    forged = {"x-forwarded-client-cert": "By=x;URI=spiffe://seedline.dev/partner/evil"}
    ping = rest.get("/v1/sessions:ping", headers=forged)
    assert ping.status_code == 200, ping.text
    body = ping.json()
    assert body["principal"] == "partners/acme"
    assert body["principalKind"] == "PRINCIPAL_KIND_PARTNER_CERTIFICATE"


def _client(stack: EdgeProcess, cert: Path | None, key: Path | None) -> httpx.Client:
    assert stack.pki is not None
    ctx = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return httpx.Client(base_url=stack.base_url, verify=ctx, timeout=5)


def test_no_client_certificate_is_refused_at_handshake(stack: EdgeProcess) -> None:
    with (
        _client(stack, None, None) as client,
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        client.get("/v1/companies")


def test_certificate_from_another_ca_is_refused_at_handshake(stack: EdgeProcess, tmp_path: Path) -> None:
    ca_cert, ca_key = write_ca(tmp_path, "Mallory Root CA")
    cert, key = issue_client_cert(
        ca_cert, ca_key, tmp_path, "acme", san_uri="spiffe://seedline.dev/partner/acme"
    )
    with (
        _client(stack, cert, key) as client,
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        client.get("/v1/companies")


def test_server_internals_are_not_reachable_through_the_edge(rest: httpx.Client) -> None:
    # A gRPC call to the server's reflection service, sent by a partner through Envoy.
    response = rest.post(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        headers={"content-type": "application/grpc", "te": "trailers"},
        content=b"\x00\x00\x00\x00\x00",
    )
    # gRPC callers get a gRPC error written by the edge route itself: the server never saw it.
    assert response.headers["grpc-status"] == "12"  # UNIMPLEMENTED
    assert response.headers["grpc-message"] == "no such method on the partner edge"
    # The same method as a REST path is not a route at all.
    rest_style = rest.get("/grpc.health.v1.Health/Check")
    assert rest_style.status_code == 404
    assert rest_style.json()["code"] == 5
