"""The audit chain's pure rules: RFC 8785 canonical JSON, chain documents, hashes, filters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql

from seedline_server.domain.audit import (
    GENESIS_HASH,
    action_number,
    canonical_json,
    chain_document,
    event_hash,
    lock_key,
    rfc3339,
)
from seedline_server.domain.errors import InvalidArgument
from seedline_server.service.audit import parse_filter

ACTIONS = {"AUDIT_ACTION_CREATE": 1, "AUDIT_ACTION_UPDATE": 2, "AUDIT_ACTION_SIGN": 5}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 8785 Appendix B and §3.2.2.3 examples
        (0.0, "0"),
        (-0.0, "0"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740992, "9007199254740992"),
        (295147905179352830000.0, "295147905179352830000"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (333333333.3333333, "333333333.3333333"),
        (4.5, "4.5"),
        (0.002, "0.002"),
        (1e-27, "1e-27"),
        (1e30, "1e+30"),
        (-1.5, "-1.5"),
        (100, "100"),
        (1.0, "1"),
        (123.456e5, "12345600"),
    ],
)
def test_numbers_print_as_ecmascript(value: float, expected: str) -> None:
    assert canonical_json(value) == expected


def test_rfc8785_sample_object() -> None:
    # RFC 8785 §3.2.2 example, minus the lone-surrogate string.
    data = json.loads(
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        '"string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        '"literals": [null, true, false]}'
    )
    assert canonical_json(data) == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )


def test_keys_sort_by_utf16_code_units() -> None:
    # U+1F600 (surrogates D83D DE00) sorts before U+FB01 in UTF-16, after it by code point.
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb01":1}'


def test_integral_values_hash_alike_whatever_their_json_type() -> None:
    """JSONB may give back 1.0 as 1 or 1e21 as an int: the canonical form does not care."""
    assert canonical_json({"a": 1.0, "b": 1e21}) == canonical_json({"a": 1, "b": 10**21})


def test_rfc3339_matches_proto3_json() -> None:
    base = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert rfc3339(base) == "2026-01-02T03:04:05Z"
    assert rfc3339(base.replace(microsecond=120000)) == "2026-01-02T03:04:05.120Z"
    assert rfc3339(base.replace(microsecond=123456)) == "2026-01-02T03:04:05.123456Z"
    assert rfc3339(base.astimezone(timezone(timedelta(hours=-7)))) == "2026-01-02T03:04:05Z"


def _doc(**over: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "id": "01JD0000000000000000000001",
        "license_id": "01JD0000000000000000000002",
        "sequence": 3,
        "event_time": datetime(2026, 1, 2, tzinfo=UTC),
        "principal": "users/alice",
        "request_id": "",
        "method": "/seedline.plant.v1.PlantService/CreatePlant",
        "resource": "licenses/01JD0000000000000000000002/plants/01JD0000000000000000000003",
        "action": "CREATE",
        "before": None,
        "after": {"phase": "CLONE", "count": 1},
        "previous_hash": GENESIS_HASH,
    }
    fields.update(over)
    return chain_document(**fields)  # type: ignore[arg-type]


def test_chain_document_is_the_proto3_json_shape() -> None:
    doc = _doc()
    assert doc == {
        "name": "licenses/01JD0000000000000000000002/auditEvents/01JD0000000000000000000001",
        "id": "01JD0000000000000000000001",
        "sequence": "3",
        "eventTime": "2026-01-02T00:00:00Z",
        "principal": "users/alice",
        "method": "/seedline.plant.v1.PlantService/CreatePlant",
        "resource": "licenses/01JD0000000000000000000002/plants/01JD0000000000000000000003",
        "action": "AUDIT_ACTION_CREATE",
        "verb": "CREATE",
        "after": {"phase": "CLONE", "count": 1},
        "previousHash": GENESIS_HASH,
    }
    assert "name" not in _doc(license_id=None)


@pytest.mark.parametrize(
    "change",
    [
        {"id": "01JD0000000000000000000009"},
        {"license_id": "01JD0000000000000000000009"},
        {"license_id": None},
        {"sequence": 4},
        {"event_time": datetime(2026, 1, 2, 0, 0, 0, 1, tzinfo=UTC)},
        {"principal": "users/mallory"},
        {"request_id": "r-1"},
        {"method": "/x"},
        {"resource": "licenses/x"},
        {"action": "UPDATE"},
        {"before": {}},
        {"after": {"phase": "CLONE", "count": 2}},
        {"after": None},
        {"previous_hash": "1" * 64},
    ],
)
def test_hash_covers_every_stored_column(change: dict[str, object]) -> None:
    assert event_hash(_doc(**change)) != event_hash(_doc())


def test_lock_keys_are_signed_64_bit_and_distinct() -> None:
    keys = {lock_key(None), lock_key("01JD0000000000000000000001"), lock_key("01JD0000000000000000000002")}
    assert len(keys) == 3
    assert all(-(2**63) <= k < 2**63 for k in keys)
    assert lock_key("01JD0000000000000000000001") == lock_key("01JD0000000000000000000001")


@pytest.mark.parametrize(
    ("verb", "number"),
    [
        ("CREATE", 1),
        ("CREATE_BY_TRANSFER", 1),
        ("TRANSFER_CREATED", 1),
        ("UPDATE", 2),
        ("DELETE", 3),
        ("PHASE_CHANGED", 4),
        ("TRANSFER_ACCEPTED", 4),
        ("DESTROYED", 5),
        ("VOIDED", 5),
        ("ACCESS_GRANTED", 6),
        ("REMOTE_SYNCED", 7),
    ],
)
def test_stored_verbs_map_to_audit_actions(verb: str, number: int) -> None:
    assert action_number(verb) == number


def _sql(expression: str) -> list[str]:
    return [
        str(c.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        for c in parse_filter(expression, ACTIONS)
    ]


def test_filter_parses_the_documented_subset() -> None:
    assert parse_filter("", ACTIONS) == []
    sql = _sql(
        'resource = "licenses/A/plants/B" AND event_time >= "2025-01-01T00:00:00Z" AND '
        'event_time < "2025-02-01T00:00:00Z" AND sequence > 3 AND action = AUDIT_ACTION_SIGN AND '
        'principal = "users/a\\"b" AND request_id = r1 AND method="/m"'
    )
    assert sql[0] == "audit_events.resource = 'licenses/A/plants/B'"
    assert sql[1].startswith("audit_events.event_time >= '2025-01-01 00:00:00+00:00'")
    assert sql[3] == "audit_events.sequence > 3"
    assert "CASE WHEN" in sql[4]
    assert sql[4].endswith("= 5")
    assert sql[5] == "audit_events.principal = 'users/a\"b'"
    assert sql[6] == "audit_events.request_id = 'r1'"
    assert sql[7] == "audit_events.method = '/m'"


@pytest.mark.parametrize(
    "expression",
    [
        "colour = red",
        "resource > x",
        "sequence >= many",
        'event_time > "yesterday"',
        'event_time > "2025-01-01T00:00:00"',
        "action = AUDIT_ACTION_NOPE",
        "sequence > 1 OR sequence < 0",
        "sequence > 1 AND",
        "sequence",
    ],
)
def test_bad_filters_are_invalid_argument(expression: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_filter(expression, ACTIONS)
    assert err.value.violations[0].field == "filter"
