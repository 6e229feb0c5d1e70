"""Paging, credentials and typed errors against a real grpc server."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from seedline_client import ApiKey, BearerToken, SessionToken, connect, errors, items, pages
from seedline_client.api import license_v1

from tests.unit.client.conftest import FakeServer, abort

LIST = "/seedline.license.v1.LicenseService/ListLicenses"
GET = "/seedline.license.v1.LicenseService/GetLicense"
NAMES = [f"licenses/L{i}" for i in range(7)]


def serve_pages(fake: FakeServer, names: list[str]) -> None:
    """ListLicenses over ``names``: the token is the index of the page's first item."""

    def handler(raw: bytes, context: grpc.ServicerContext) -> bytes:
        request = license_v1.ListLicensesRequest.parse(raw)
        start = int(request.page_token or 0)
        end = start + (request.page_size or 20)
        page = names[start:end]
        token = str(end) if end < len(names) else ""
        return bytes(
            license_v1.ListLicensesResponse(
                licenses=[license_v1.License(name=n) for n in page], next_page_token=token
            )
        )

    fake.handlers[LIST] = handler


def test_items_follow_next_page_token_across_pages(fake: FakeServer) -> None:
    serve_pages(fake, NAMES)
    request = license_v1.ListLicensesRequest(page_size=3, company="companies/C1")
    with connect(fake.target) as client:
        got = [lic.name for lic in items(client.licenses.list_licenses, request, lambda page: page.licenses)]
    assert got == NAMES
    sent = [license_v1.ListLicensesRequest.parse(c.request) for c in fake.seen(LIST)]
    assert [r.page_token for r in sent] == ["", "3", "6"]
    assert {(r.page_size, r.company) for r in sent} == {(3, "companies/C1")}  # the query is kept
    assert request.page_token == ""  # the caller's request is left alone


def test_pages_are_fetched_lazily(fake: FakeServer) -> None:
    serve_pages(fake, NAMES)
    with connect(fake.target) as client:
        first = next(pages(client.licenses.list_licenses, license_v1.ListLicensesRequest(page_size=2)))
    assert [lic.name for lic in first.licenses] == NAMES[:2]
    assert len(fake.seen(LIST)) == 1


def test_an_empty_list_is_one_call(fake: FakeServer) -> None:
    serve_pages(fake, [])
    with connect(fake.target) as client:
        assert (
            list(items(client.licenses.list_licenses, license_v1.ListLicensesRequest(), lambda p: p.licenses))
            == []
        )
    assert len(fake.seen(LIST)) == 1


def test_a_repeated_token_stops_the_iteration(fake: FakeServer) -> None:
    fake.handlers[LIST] = lambda raw, ctx: bytes(license_v1.ListLicensesResponse(next_page_token="same"))
    with connect(fake.target) as client, pytest.raises(RuntimeError, match="again"):
        list(pages(client.licenses.list_licenses, license_v1.ListLicensesRequest()))
    assert len(fake.seen(LIST)) == 2


def test_credentials_travel_as_bearer_authorization(fake: FakeServer) -> None:
    fake.handlers[GET] = lambda raw, ctx: bytes(license_v1.License(name="licenses/L1"))
    tokens = iter(["jwt-1", "jwt-2"])
    key = "slk_01JD0000000000000000000000_secret"
    for credentials, expected in [
        (BearerToken("header.body.sig"), "Bearer header.body.sig"),
        (BearerToken(lambda: next(tokens)), "Bearer jwt-1"),
        (ApiKey(key), f"Bearer {key}"),
        (SessionToken("sls_abc"), "Bearer sls_abc"),
    ]:
        with connect(fake.target, credentials=credentials) as client:
            client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L1"))
        assert fake.seen(GET)[-1].metadata["authorization"] == expected
    with connect(fake.target) as client:
        client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L1"))
    assert "authorization" not in fake.seen(GET)[-1].metadata


def test_credentials_are_checked_and_not_printed() -> None:
    with pytest.raises(ValueError, match="slk_"):
        ApiKey("not-a-key")
    with pytest.raises(ValueError, match="sls_"):
        SessionToken("jwt")
    with pytest.raises(ValueError, match="whitespace"):
        BearerToken(" padded ").metadata()
    assert "secret" not in repr(ApiKey("slk_01JD0000000000000000000000_secret"))


def test_not_found_is_a_typed_error_with_its_details(fake: FakeServer) -> None:
    resource = error_details_pb2.ResourceInfo(
        resource_type="seedline.dev/License", resource_name="licenses/L9"
    )
    fake.handlers[GET] = lambda raw, ctx: abort(  # type: ignore[arg-type,return-value]
        ctx,
        grpc.StatusCode.NOT_FOUND,
        "licenses/L9 not found",
        reason="RESOURCE_NOT_FOUND",
        extra=(resource,),
    )
    with connect(fake.target) as client, pytest.raises(errors.NotFound) as info:
        client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L9"))
    error = info.value
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == error.message == "licenses/L9 not found"
    assert error.reason == "RESOURCE_NOT_FOUND"
    assert error.error_info is not None
    assert error.error_info.domain == "seedline.dev"
    assert error.resource_info is not None
    assert error.resource_info.resource_name == "licenses/L9"
    assert error.retry_delay is None
    assert len(fake.seen(GET)) == 1


def test_field_violations_are_listed(fake: FakeServer) -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="name", description="required"),
            error_details_pb2.BadRequest.FieldViolation(field="page_size", description=">= 0"),
        ]
    )
    fake.handlers[GET] = lambda raw, ctx: abort(  # type: ignore[arg-type,return-value]
        ctx, grpc.StatusCode.INVALID_ARGUMENT, "invalid", reason="VALIDATION_FAILED", extra=(bad,)
    )
    with connect(fake.target) as client, pytest.raises(errors.InvalidArgument) as info:
        client.licenses.get_license(license_v1.GetLicenseRequest())
    assert [(v.field, v.description) for v in info.value.field_violations] == [
        ("name", "required"),
        ("page_size", ">= 0"),
    ]


def test_an_error_without_details_is_still_typed(fake: FakeServer) -> None:
    def handler(raw: bytes, ctx: grpc.ServicerContext) -> bytes:
        ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
        return b""

    fake.handlers[GET] = handler
    with connect(fake.target) as client, pytest.raises(errors.PermissionDenied) as info:
        client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L1"))
    assert info.value.reason == ""
    assert info.value.error_details == []


def test_an_unknown_method_is_unimplemented(fake: FakeServer) -> None:
    with connect(fake.target) as client, pytest.raises(errors.Unimplemented):
        client.licenses.get_company(license_v1.GetCompanyRequest(name="companies/C1"))
