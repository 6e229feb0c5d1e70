"""seedline_client against the real server process: create, page, typed errors, RetryInfo retries."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from seedline_client import ApiKey, BearerToken, Client, RetryPolicy, connect, errors, items, pages
from seedline_client.api import auth_v1, license_v1

from tests.support import auth
from tests.support.stack import EdgeProcess, ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(stack: EdgeProcess) -> Iterator[Client]:
    with connect(stack.server.target, credentials=BearerToken(auth.mint())) as client:
        yield client


def _license(company: str, n: int) -> license_v1.License:
    return license_v1.License(
        company=company,
        license_number=f"CL-{uuid.uuid4().hex[:10]}",
        display_name=f"Client test {n}",
        type=license_v1.LicenseType.GROWER,
        jurisdiction="US-CO",
        active=True,
    )


def test_create_then_list_every_page(client: Client) -> None:
    company = client.licenses.create_company(
        license_v1.CreateCompanyRequest(company=license_v1.Company(display_name="Client Co"))
    )
    assert company.name.startswith("companies/")
    created = [
        client.licenses.create_license(license_v1.CreateLicenseRequest(license=_license(company.name, n)))
        for n in range(5)
    ]
    assert all(lic.company == company.name for lic in created)
    request = license_v1.ListLicensesRequest(company=company.name, page_size=2)
    seen_pages = list(pages(client.licenses.list_licenses, request))
    assert [len(p.licenses) for p in seen_pages] == [2, 2, 1]
    assert seen_pages[-1].next_page_token == ""
    listed = list(items(client.licenses.list_licenses, request, lambda page: page.licenses))
    assert [lic.name for lic in listed] == sorted(lic.name for lic in created)  # ordered by id
    assert {lic.display_name for lic in listed} == {f"Client test {n}" for n in range(5)}


def test_a_repeated_request_id_returns_the_first_result(client: Client) -> None:
    company = client.licenses.create_company(
        license_v1.CreateCompanyRequest(
            company=license_v1.Company(display_name="Idem Co"), request_id="idem-1-" + uuid.uuid4().hex
        )
    )
    request = license_v1.CreateLicenseRequest(license=_license(company.name, 0), request_id=uuid.uuid4().hex)
    first = client.licenses.create_license(request)
    again = client.licenses.create_license(request)
    assert again.name == first.name


def test_not_found_is_a_typed_error(client: Client) -> None:
    name = "licenses/01JD0000000000000000000000"
    with pytest.raises(errors.NotFound) as info:
        client.licenses.get_license(license_v1.GetLicenseRequest(name=name))
    assert info.value.reason == "RESOURCE_NOT_FOUND"
    assert info.value.resource_info is not None
    assert info.value.resource_info.resource_name == name


def test_invalid_argument_lists_field_violations(client: Client) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        client.licenses.list_licenses(license_v1.ListLicensesRequest(page_size=-1))
    assert info.value.reason == "VALIDATION_FAILED"
    assert "page_size" in {v.field for v in info.value.field_violations}


def test_no_credential_is_refused_as_unauthenticated(stack: EdgeProcess) -> None:
    with connect(stack.server.target) as anonymous:
        assert anonymous.auth.ping_session(auth_v1.PingSessionRequest()).principal == "anonymous"
        with pytest.raises(errors.Unauthenticated) as info:
            anonymous.licenses.list_companies(license_v1.ListCompaniesRequest())
    assert info.value.reason == "CREDENTIALS_MISSING"


@pytest.fixture(scope="module")
def limited_server(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose direct listener admits 2 calls at once, then one per second."""
    server = ServerProcess(
        database_url=e2e_pg_url,
        data_dir=Path(tmp_path_factory.mktemp("client-limited")),
        extra_env={"SEEDLINE_GRPC_RATE_BURST": "2", "SEEDLINE_GRPC_RATE_PER_MINUTE": "60"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_rate_limited_call_is_retried_after_retry_info(limited_server: ServerProcess) -> None:
    token = BearerToken(auth.mint(sub=f"client-rl-{uuid.uuid4().hex[:8]}"))  # a bucket of its own
    ping = auth_v1.PingSessionRequest()
    with (
        connect(limited_server.target, credentials=token, retry=RetryPolicy(max_attempts=1)) as once,
        connect(limited_server.target, credentials=token) as patient,
    ):
        once.auth.ping_session(ping)
        once.auth.ping_session(ping)
        with pytest.raises(errors.ResourceExhausted) as info:  # burst spent; no retries here
            once.auth.ping_session(ping)
        assert info.value.reason == "RATE_LIMITED"
        delay = info.value.retry_delay
        assert delay is not None
        assert 0 < delay.total_seconds() <= 1.0
        # The bucket is still empty: the default client is refused, waits the delay, and succeeds.
        started = time.monotonic()
        who = patient.auth.ping_session(ping)
        elapsed = time.monotonic() - started
    assert who.principal.startswith("users/client-rl-")
    assert elapsed >= 0.5  # it waited for a token rather than failing at once
    assert elapsed < 5


def test_an_api_key_authenticates(client: Client, stack: EdgeProcess) -> None:
    company = client.licenses.create_company(
        license_v1.CreateCompanyRequest(company=license_v1.Company(display_name="Key Co"))
    )
    lic = client.licenses.create_license(license_v1.CreateLicenseRequest(license=_license(company.name, 0)))
    key = client.auth.create_api_key(
        auth_v1.CreateApiKeyRequest(
            api_key=auth_v1.ApiKey(
                display_name="client test",
                scopes=["inventory.read"],
                licenses=[lic.name],
                expire_time=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1),
            )
        )
    )
    with connect(stack.server.target, credentials=ApiKey(key.key)) as as_key:
        who = as_key.auth.ping_session(auth_v1.PingSessionRequest())
    assert who.principal == key.name
    assert who.authentication_method == auth_v1.AuthenticationMethod.API_KEY
