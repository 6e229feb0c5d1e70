"""Retries against a real grpc server: RetryInfo honoured, unsafe calls not repeated, bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from seedline_client import Client, RetryPolicy, connect, errors
from seedline_client.api import license_v1
from seedline_client.auth import MetadataInterceptor
from seedline_client.errors import ErrorInterceptor
from seedline_client.retry import RequestIdInterceptor, RetryInterceptor, is_read_method

from tests.unit.client.conftest import FakeServer, abort, failing_then

GET = "/seedline.license.v1.LicenseService/GetLicense"
CREATE = "/seedline.license.v1.LicenseService/CreateLicense"
UPDATE = "/seedline.license.v1.LicenseService/UpdateLicense"
LICENSE = license_v1.License(name="licenses/L1", display_name="Green Acres")
ROOT = Path(__file__).resolve().parents[3]


def rate_limited(seconds: float):  # type: ignore[no-untyped-def]
    return lambda ctx: abort(
        ctx, grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", reason="RATE_LIMITED", retry_after=seconds
    )


def unavailable(ctx: grpc.ServicerContext) -> None:
    abort(ctx, grpc.StatusCode.UNAVAILABLE, "database down", reason="DEPENDENCY_UNAVAILABLE")


@pytest.fixture
def recorded(fake: FakeServer) -> Iterator[tuple[Client, list[float]]]:
    """A client whose retry sleeps are recorded (not slept), with jitter fixed at 0.5."""
    slept: list[float] = []
    raw = grpc.insecure_channel(fake.target)
    channel = grpc.intercept_channel(
        raw,
        ErrorInterceptor(),
        RequestIdInterceptor(),
        RetryInterceptor(RetryPolicy(max_attempts=4), sleep=slept.append, jitter=lambda: 0.5),
        MetadataInterceptor(timeout=5),
    )
    try:
        yield Client(channel), slept
    finally:
        raw.close()


def test_a_read_waits_the_advertised_retry_delay_then_succeeds(fake: FakeServer) -> None:
    handler, count = failing_then(2, rate_limited(0.3), bytes(LICENSE))
    fake.handlers[GET] = handler
    with connect(fake.target) as client:
        started = time.monotonic()
        got = client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L1"))
        elapsed = time.monotonic() - started
    assert got.display_name == "Green Acres"
    assert count[0] == 3
    assert 0.6 <= elapsed < 3.0  # two waits of 0.3 s, no more


def test_retry_delays_come_from_retry_info_else_jittered_backoff(
    fake: FakeServer, recorded: tuple[Client, list[float]]
) -> None:
    client, slept = recorded
    handler, _ = failing_then(1, rate_limited(1.25), bytes(LICENSE))
    fake.handlers[GET] = handler
    client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L1"))
    assert slept == [1.25]
    slept.clear()
    handler, count = failing_then(3, unavailable, bytes(LICENSE))
    fake.handlers[GET] = handler
    client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L1"))
    assert count[0] == 4
    # Full jitter (0.5 here) of 0.1, 0.2, 0.4 s.
    assert slept == pytest.approx([0.05, 0.1, 0.2])


def test_attempts_are_bounded_and_the_last_error_is_typed(
    fake: FakeServer, recorded: tuple[Client, list[float]]
) -> None:
    client, slept = recorded
    handler, count = failing_then(99, rate_limited(2), bytes(LICENSE))
    fake.handlers[GET] = handler
    with pytest.raises(errors.ResourceExhausted) as info:
        client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L1"))
    assert count[0] == 4
    assert slept == [2, 2, 2]
    assert info.value.reason == "RATE_LIMITED"
    assert info.value.retry_delay is not None
    assert info.value.retry_delay.total_seconds() == 2
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_delay_beyond_max_delay_is_not_waited_for(fake: FakeServer) -> None:
    handler, count = failing_then(1, rate_limited(120), bytes(LICENSE))
    fake.handlers[GET] = handler
    with connect(fake.target, retry=RetryPolicy(max_delay=60)) as client:
        started = time.monotonic()
        with pytest.raises(errors.ResourceExhausted):
            client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L1"))
    assert count[0] == 1
    assert time.monotonic() - started < 2


def test_a_write_without_request_id_is_not_repeated(fake: FakeServer) -> None:
    handler, count = failing_then(1, unavailable, bytes(LICENSE))
    fake.handlers[CREATE] = handler
    with connect(fake.target, request_ids=False) as client, pytest.raises(errors.Unavailable) as info:
        client.licenses.create_license(license_v1.CreateLicenseRequest(license=LICENSE))
    assert count[0] == 1
    assert info.value.reason == "DEPENDENCY_UNAVAILABLE"


def test_a_write_is_retried_with_one_request_id_for_all_attempts(
    fake: FakeServer, recorded: tuple[Client, list[float]]
) -> None:
    client, _ = recorded
    handler, count = failing_then(2, unavailable, bytes(LICENSE))
    fake.handlers[CREATE] = handler
    request = license_v1.CreateLicenseRequest(license=LICENSE)
    client.licenses.create_license(request)
    assert count[0] == 3
    ids = {license_v1.CreateLicenseRequest.parse(c.request).request_id for c in fake.seen(CREATE)}
    assert len(ids) == 1
    (rid,) = ids
    assert len(rid) == 36
    assert request.request_id == ""  # the caller's message is left alone
    # The caller's own id is kept.
    client.licenses.create_license(license_v1.CreateLicenseRequest(license=LICENSE, request_id="mine-1"))
    assert license_v1.CreateLicenseRequest.parse(fake.seen(CREATE)[-1].request).request_id == "mine-1"


def test_a_rate_limited_write_is_retried_even_without_request_id(fake: FakeServer) -> None:
    handler, count = failing_then(1, rate_limited(0.05), bytes(LICENSE))
    fake.handlers[CREATE] = handler
    with connect(fake.target, request_ids=False) as client:
        client.licenses.create_license(license_v1.CreateLicenseRequest(license=LICENSE))
    assert count[0] == 2  # refused before it ran: safe to send again


def test_an_etag_mismatch_is_not_retried_but_other_aborts_are(
    fake: FakeServer, recorded: tuple[Client, list[float]]
) -> None:
    client, slept = recorded
    # A read, so only the reason keeps it from being retried.
    handler, count = failing_then(
        9, lambda ctx: abort(ctx, grpc.StatusCode.ABORTED, "stale", reason="ETAG_MISMATCH"), bytes(LICENSE)
    )
    fake.handlers[GET] = handler
    with pytest.raises(errors.Aborted) as info:
        client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L1"))
    assert count[0] == 1
    assert slept == []
    assert info.value.reason == "ETAG_MISMATCH"
    handler, count = failing_then(
        1, lambda ctx: abort(ctx, grpc.StatusCode.ABORTED, "conflict"), bytes(LICENSE)
    )
    fake.handlers[GET] = handler
    assert client.licenses.get_license(license_v1.GetLicenseRequest(name="licenses/L1")).name == "licenses/L1"
    assert count[0] == 2


def test_other_codes_are_not_retried(fake: FakeServer, recorded: tuple[Client, list[float]]) -> None:
    client, slept = recorded
    handler, count = failing_then(
        9, lambda ctx: abort(ctx, grpc.StatusCode.INVALID_ARGUMENT, "bad", reason="VALIDATION_FAILED"), b""
    )
    fake.handlers[GET] = handler
    with pytest.raises(errors.InvalidArgument):
        client.licenses.get_license(license_v1.GetLicenseRequest(name="x"))
    assert count[0] == 1
    assert slept == []


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(initial_backoff=2, max_backoff=1)


def test_read_methods_are_exactly_the_contracts_http_get_methods() -> None:
    image = descriptor_pb2.FileDescriptorSet.FromString((ROOT / "gen/seedline.protoset").read_bytes())
    methods = [
        (f"/{f.package}.{s.name}/{m.name}", m.options.Extensions[annotations_pb2.http].WhichOneof("pattern"))
        for f in image.file
        if f.package.startswith("seedline.")
        for s in f.service
        for m in s.method
    ]
    assert len(methods) > 100
    mismatched = [(name, verb) for name, verb in methods if is_read_method(name) != (verb == "get")]
    assert mismatched == []
