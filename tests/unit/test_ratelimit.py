"""The direct listener's per-principal token buckets, and RESOURCE_EXHAUSTED + RetryInfo over gRPC."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from hypothesis import given, settings
from hypothesis import strategies as st

from seedline_server.api import errors as api_errors
from seedline_server.api.ratelimit import TokenBuckets
from seedline_server.config import Settings
from seedline_server.domain.errors import DomainError, RateLimited


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _buckets(capacity: float = 3, rate: float = 2.0, **kw: Any) -> tuple[TokenBuckets, FakeClock]:
    clock = FakeClock()
    return TokenBuckets(capacity=capacity, rate=rate, clock=clock, **kw), clock


def _admitted(buckets: TokenBuckets, principal: str) -> bool:
    try:
        buckets.check(principal)
    except RateLimited:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Behaviour


def test_burst_then_refusal_with_the_time_to_the_next_token() -> None:
    buckets, clock = _buckets(capacity=3, rate=2.0)
    for _ in range(3):
        buckets.check("partners/acme")
    with pytest.raises(RateLimited) as info:
        buckets.check("partners/acme")
    assert info.value.reason == "RATE_LIMITED"
    assert info.value.retry_after == pytest.approx(0.5)
    clock.now += 0.25
    with pytest.raises(RateLimited) as info:
        buckets.check("partners/acme")
    assert info.value.retry_after == pytest.approx(0.25)  # refused calls take nothing
    clock.now += 0.25
    buckets.check("partners/acme")


def test_principals_have_separate_buckets() -> None:
    buckets, _ = _buckets(capacity=1, rate=1.0)
    buckets.check("partners/a")
    assert not _admitted(buckets, "partners/a")
    buckets.check("partners/b")


def test_refill_stops_at_capacity() -> None:
    buckets, clock = _buckets(capacity=2, rate=10.0)
    buckets.check("p")
    clock.now += 3600
    assert buckets.tokens("p") == 2
    assert [_admitted(buckets, "p") for _ in range(3)] == [True, True, False]


def test_a_clock_stepping_back_refills_nothing() -> None:
    buckets, clock = _buckets(capacity=1, rate=1.0)
    buckets.check("p")
    clock.now -= 100
    assert not _admitted(buckets, "p")


def test_memory_is_bounded_least_recently_used_evicted() -> None:
    buckets, _ = _buckets(capacity=1, rate=0.001, max_principals=3)
    for name in ("a", "b", "c"):
        buckets.check(name)
    assert not _admitted(buckets, "a")  # "a" becomes the most recently used
    buckets.check("d")  # evicts "b"
    assert len(buckets) == 3
    assert not _admitted(buckets, "a")
    assert not _admitted(buckets, "c")
    assert _admitted(buckets, "b")  # forgotten, so a full bucket again


def test_from_settings() -> None:
    buckets = TokenBuckets.from_settings(
        Settings(grpc_rate_burst=7, grpc_rate_per_minute=30, grpc_rate_max_principals=9)
    )
    assert (buckets.capacity, buckets.rate, buckets.max_principals) == (7, 0.5, 9)
    default = TokenBuckets.from_settings(Settings())
    assert (default.capacity, default.rate * 60, default.max_principals) == (20, 100, 100_000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0.5, "rate": 1},
        {"capacity": 1, "rate": 0},
        {"capacity": 1, "rate": 1, "max_principals": 0},
    ],
)
def test_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBuckets(**kwargs)


# ---------------------------------------------------------------------------------------------
# Properties over arbitrary timed request sequences

_gaps = st.lists(
    st.floats(min_value=0, max_value=5, allow_nan=False, allow_infinity=False), min_size=1, max_size=120
)
_capacity = st.integers(min_value=1, max_value=10)
_rate = st.floats(min_value=0.05, max_value=20, allow_nan=False)


def _run(capacity: int, rate: float, gaps: list[float]) -> list[tuple[float, bool, float]]:
    """(time, admitted, retry_after) for requests at the cumulative gaps."""
    buckets, clock = _buckets(capacity=capacity, rate=rate)
    out = []
    for gap in gaps:
        clock.now += gap
        try:
            buckets.check("p")
            out.append((clock.now, True, 0.0))
        except RateLimited as exc:
            out.append((clock.now, False, exc.retry_after))
    return out


@settings(max_examples=300, deadline=None)
@given(capacity=_capacity, rate=_rate, gaps=_gaps)
def test_admitted_in_any_window_is_at_most_capacity_plus_rate_times_window(
    capacity: int, rate: float, gaps: list[float]
) -> None:
    admitted = [t for t, ok, _ in _run(capacity, rate, gaps) if ok]
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - start
            assert j - i + 1 <= capacity + rate * window + 1e-6


@settings(max_examples=300, deadline=None)
@given(capacity=_capacity, rate=_rate, gaps=_gaps)
def test_the_first_requests_of_a_burst_are_admitted(capacity: int, rate: float, gaps: list[float]) -> None:
    # Whatever the timing, the first `capacity` requests always pass (a fresh bucket is full).
    results = _run(capacity, rate, gaps)
    assert all(ok for _, ok, _ in results[:capacity])


@settings(max_examples=300, deadline=None)
@given(capacity=_capacity, rate=_rate, gaps=_gaps, early=st.floats(min_value=0.01, max_value=0.99))
def test_retry_delay_is_exact(capacity: int, rate: float, gaps: list[float], early: float) -> None:
    """After a refusal, waiting retry_after admits the next call; waiting less does not."""
    buckets, clock = _buckets(capacity=capacity, rate=rate)
    for gap in gaps:
        clock.now += gap
        try:
            buckets.check("p")
        except RateLimited as exc:
            delay = exc.retry_after
            assert 0 < delay <= 1 / rate + 1e-9
            if delay * early > 1e-6:
                probe, probe_clock = _copy(buckets, clock)
                probe_clock.now += delay * (1 - early)
                assert not _admitted(probe, "p")
            clock.now += delay
            buckets.check("p")  # must not raise
            return


def _copy(buckets: TokenBuckets, clock: FakeClock) -> tuple[TokenBuckets, FakeClock]:
    twin_clock = FakeClock(clock.now)
    twin = TokenBuckets(capacity=buckets.capacity, rate=buckets.rate, clock=twin_clock)
    twin._buckets = type(buckets._buckets)(buckets._buckets)
    return twin, twin_clock


# ---------------------------------------------------------------------------------------------
# Over gRPC: a small grpc.aio server whose interceptor calls check() the way CallInterceptor will.

PRINCIPAL_HEADER = "x-test-principal"


class LimitingInterceptor(grpc.aio.ServerInterceptor):
    """Stands in for CallInterceptor: take a token for the caller, map domain errors to statuses."""

    def __init__(self, limits: TokenBuckets) -> None:
        self._limits = limits

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        principal = str(metadata.get(PRINCIPAL_HEADER, "anonymous"))
        inner = handler.unary_unary

        async def behavior(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            try:
                self._limits.check(principal)
                return bytes(await inner(request, context))
            except DomainError as exc:
                await context.abort_with_status(api_errors.to_grpc(api_errors.to_status(exc)))
                raise AssertionError("unreachable") from exc

        return grpc.unary_unary_rpc_method_handler(behavior)


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


@pytest.fixture
async def server_target() -> AsyncIterator[tuple[str, TokenBuckets]]:
    limits = TokenBuckets(capacity=2, rate=0.5)  # real clock: a token every 2 s
    server = grpc.aio.server(interceptors=[LimitingInterceptor(limits)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", limits
    finally:
        await server.stop(None)


async def test_over_grpc_the_call_past_the_burst_is_resource_exhausted_with_retry_info(
    server_target: tuple[str, TokenBuckets],
) -> None:
    target, _ = server_target
    async with grpc.aio.insecure_channel(target) as channel:
        echo = channel.unary_unary("/test.Echo/Echo")
        acme = ((PRINCIPAL_HEADER, "partners/acme"),)
        assert await echo(b"1", metadata=acme) == b"1"
        assert await echo(b"2", metadata=acme) == b"2"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await echo(b"3", metadata=acme)
        # Another principal still has its own bucket.
        assert await echo(b"4", metadata=((PRINCIPAL_HEADER, "partners/other"),)) == b"4"

    error = info.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(error)
    assert isinstance(status, status_pb2.Status)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    by_type = {d.type_url.rsplit("/", 1)[-1]: d for d in status.details}
    info_msg = error_details_pb2.ErrorInfo()
    by_type["google.rpc.ErrorInfo"].Unpack(info_msg)
    assert info_msg.reason == "RATE_LIMITED"
    retry = error_details_pb2.RetryInfo()
    by_type["google.rpc.RetryInfo"].Unpack(retry)
    delay = retry.retry_delay.ToMilliseconds() / 1000
    assert 0 < delay <= 2.0
    assert math.isclose(delay, 2.0, abs_tol=0.5)
