"""The hand-written checks of the ingest messages agree with protovalidate on the contract."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from seedline.telemetry.v1 import telemetry_pb2 as pb

from seedline_server.api.interceptor import violations_of
from seedline_server.api.telemetry import ingest_violations

texts = st.one_of(
    st.sampled_from(
        ["", "licenses/01JD", "licenses/a/b", "licenses/", "x", "gw-1", "-gw", "a" * 64, "a" * 65]
    ),
    st.text(alphabet="abAB09._:-/ é", max_size=70),
)


def fields(found: list) -> set[str]:  # type: ignore[type-arg]
    return {v.field for v in found}


@settings(max_examples=200, deadline=None)
@given(texts, texts, st.integers(0, 2**64 - 1), st.integers(0, 3))
def test_stream_messages(parent: str, gateway: str, sequence: int, n: int) -> None:
    req = pb.IngestReadingsRequest(parent=parent, gateway_id=gateway, sequence=sequence)
    req.readings.extend([pb.Reading()] * n)
    assert fields(ingest_violations(req)) == fields(violations_of(req))


@settings(max_examples=200, deadline=None)
@given(texts, texts, st.integers(0, 3), texts)
def test_batch_messages(parent: str, gateway: str, n: int, request_id: str) -> None:
    req = pb.BatchIngestReadingsRequest(parent=parent, gateway_id=gateway, request_id=request_id)
    req.readings.extend([pb.Reading()] * n)
    assert fields(ingest_violations(req)) == fields(violations_of(req))


def test_batch_size_limits() -> None:
    for n in (5000, 5001):
        stream = pb.IngestReadingsRequest(sequence=1, readings=[pb.Reading()] * n)
        batch = pb.BatchIngestReadingsRequest(parent="licenses/x", readings=[pb.Reading()] * n)
        for req in (stream, batch):
            assert fields(ingest_violations(req)) == fields(violations_of(req))
    assert fields(
        ingest_violations(pb.IngestReadingsRequest(sequence=1, readings=[pb.Reading()] * 5001))
    ) == {"readings"}
