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
    ) == {"readings", "(request)"}


ulids = st.sampled_from(["01JS" + "0" * 22, "01JT" + "1" * 22, "nope", "", "01js" + "0" * 22])
units = st.sampled_from([0, 1, 2, 5, 11])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(ulids, max_size=4),
    st.lists(units, max_size=4),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
)
def test_column_messages(
    ids: list[str], us: list[int], rows: int, times: int, values: int, readings: int
) -> None:
    req = pb.IngestReadingsRequest(sequence=1, readings=[pb.Reading()] * readings)
    req.columns.sensor_ids.extend(ids)
    req.columns.units.extend(us)  # type: ignore[arg-type]
    req.columns.sensor_indexes.extend([0] * rows)
    req.columns.observe_unix_micros.extend([0] * times)
    req.columns.values.extend([0.0] * values)
    assert fields(ingest_violations(req)) == fields(violations_of(req))


def test_column_size_limits() -> None:
    for readings, rows in ((0, 5000), (1, 5000), (0, 5001), (2500, 2500), (2500, 2501)):
        req = pb.IngestReadingsRequest(sequence=1, readings=[pb.Reading()] * readings)
        for column in (req.columns.sensor_indexes, req.columns.observe_unix_micros):
            column.extend([0] * rows)
        req.columns.values.extend([0.0] * rows)
        found = fields(ingest_violations(req))
        assert found == fields(violations_of(req))
        assert ("(request)" in found) == (readings + rows > 5000)
