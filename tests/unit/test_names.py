"""Resource names (AIP-122): ULID ids, collections, license scoping, and the field in violations."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ulid import ULID

from seedline_server.api import names
from seedline_server.domain.errors import InvalidArgument

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LIC = "01JD0000000000000000000000"
OTHER_LIC = "01JD0000000000000000000001"
PLANT = "01JD00000000000000000000PA"

ulids = st.text(CROCKFORD, min_size=26, max_size=26)


def _violation_fields(err: InvalidArgument) -> list[str]:
    return [v.field for v in err.violations]


def _refused(call: object, field: str) -> InvalidArgument:
    assert callable(call)
    with pytest.raises(InvalidArgument) as info:
        call()
    err = info.value
    assert err.reason == "VALIDATION_FAILED"
    assert _violation_fields(err) == [field]
    assert field in err.message
    return err


# ---------------------------------------------------------------------------------------------
# Accepted names


def test_license_id_of_a_real_ulid() -> None:
    lid = str(ULID())
    assert names.license_id(f"licenses/{lid}") == lid


def test_child_returns_license_and_child_ids() -> None:
    assert names.child(f"licenses/{LIC}/plants/{PLANT}", "plants") == (LIC, PLANT)


def test_parse_with_any_pattern() -> None:
    assert names.parse(f"companies/{LIC}", "companies/{}", "name") == (LIC,)
    assert names.parse(
        f"licenses/{LIC}/plants/{PLANT}/notes/{OTHER_LIC}", "licenses/{}/plants/{}/notes/{}", "n"
    ) == (
        LIC,
        PLANT,
        OTHER_LIC,
    )


def test_same_license_returns_the_child_id() -> None:
    assert names.same_license(LIC, f"licenses/{LIC}/sections/{PLANT}", "sections", "plant.section") == PLANT


@settings(max_examples=200)
@given(lic=ulids, cid=ulids)
def test_any_ulid_pair_round_trips(lic: str, cid: str) -> None:
    assert names.license_id(f"licenses/{lic}") == lic
    assert names.child(f"licenses/{lic}/plants/{cid}", "plants") == (lic, cid)
    assert names.same_license(lic, f"licenses/{lic}/varieties/{cid}", "varieties", "variety") == cid


# ---------------------------------------------------------------------------------------------
# Refused names


BAD_IDS = [
    "x",
    "abc",
    "01JD000000000000000000000",  # 25 characters
    "01JD00000000000000000000000",  # 27 characters
    "01jd0000000000000000000000",  # lower case is not the canonical form
    "01JD000000000000000000000I",  # I, L, O, U are not in Crockford base32
    "01JD000000000000000000000L",
    "01JD000000000000000000000O",
    "01JD000000000000000000000U",
    "01JD00000000000000000000-0",
    "01JD 000000000000000000000",
    "0000000000-0000-0000-0000-000000000000",
    "",
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_license_id_rejects_non_ulids(bad: str) -> None:
    _refused(lambda: names.license_id(f"licenses/{bad}"), "parent")


@pytest.mark.parametrize("bad", BAD_IDS)
def test_child_rejects_non_ulid_child_ids(bad: str) -> None:
    _refused(lambda: names.child(f"licenses/{LIC}/plants/{bad}", "plants"), "name")


@pytest.mark.parametrize("bad", BAD_IDS)
def test_child_rejects_non_ulid_license_ids(bad: str) -> None:
    _refused(lambda: names.child(f"licenses/{bad}/plants/{PLANT}", "plants", "plant"), "plant")


@pytest.mark.parametrize(
    "name",
    [
        f"companies/{LIC}",
        f"license/{LIC}",
        f"Licenses/{LIC}",
        f"licenses/{LIC}/",
        f"/licenses/{LIC}",
        f"licenses/{LIC}/plants/{PLANT}",  # extra segments
        f"licenses/{LIC}\n",  # a trailing newline must not slip past `$`
        f" licenses/{LIC}",
        f"licenses//{LIC}",
        LIC,
        "licenses/",
        "",
    ],
)
def test_license_id_rejects_other_shapes(name: str) -> None:
    _refused(lambda: names.license_id(name, "license"), "license")


@pytest.mark.parametrize(
    "name",
    [
        f"licenses/{LIC}/sections/{PLANT}",  # wrong collection
        f"licenses/{LIC}/plant/{PLANT}",
        f"licenses/{LIC}/plantsX/{PLANT}",
        f"licenses/{LIC}/plants",
        f"licenses/{LIC}/plants/",
        f"licenses/{LIC}",
        f"licenses/{LIC}/plants/{PLANT}/notes/{PLANT}",  # extra segments
        f"licenses/{LIC}/plants/{PLANT}/",
        f"licenses/{LIC}/plants/{PLANT}\n",
        f"companies/{LIC}/plants/{PLANT}",
        f"plants/{PLANT}",
    ],
)
def test_child_rejects_wrong_collections_and_extra_segments(name: str) -> None:
    _refused(lambda: names.child(name, "plants", "plants[0]"), "plants[0]")


def test_collection_is_matched_literally_not_as_a_regex() -> None:
    # re.escape keeps a "." in a collection from matching any character.
    assert names.child(f"licenses/{LIC}/a.b/{PLANT}", "a.b") == (LIC, PLANT)
    _refused(lambda: names.child(f"licenses/{LIC}/aXb/{PLANT}", "a.b"), "name")


def test_violation_describes_the_expected_pattern() -> None:
    err = _refused(lambda: names.child("licenses/x/plants/y", "plants", "plant"), "plant")
    assert err.violations[0].description == "must match licenses/{ULID}/plants/{ULID}"
    assert "'licenses/x/plants/y'" in err.message


def test_same_license_refuses_a_reference_into_another_license() -> None:
    err = _refused(
        lambda: names.same_license(
            LIC, f"licenses/{OTHER_LIC}/sections/{PLANT}", "sections", "plant.section"
        ),
        "plant.section",
    )
    assert err.violations[0].description == f"must be under licenses/{LIC}"


@pytest.mark.parametrize(
    "name",
    [f"licenses/{LIC}/varieties/{PLANT}", f"licenses/{LIC}/sections/bad", "sections/x", ""],
)
def test_same_license_refuses_malformed_references(name: str) -> None:
    _refused(lambda: names.same_license(LIC, name, "sections", "section"), "section")


@settings(max_examples=100)
@given(a=ulids, b=ulids, cid=ulids)
def test_same_license_accepts_only_its_own_license(a: str, b: str, cid: str) -> None:
    name = f"licenses/{b}/plants/{cid}"
    if a == b:
        assert names.same_license(a, name, "plants", "plants[0]") == cid
    else:
        _refused(lambda: names.same_license(a, name, "plants", "plants[0]"), "plants[0]")


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_arbitrary_text_is_either_a_license_name_or_refused(text: str) -> None:
    if re.fullmatch(f"licenses/[{CROCKFORD}]{{26}}", text):
        assert names.license_id(text) == text.removeprefix("licenses/")
    else:
        _refused(lambda: names.license_id(text), "parent")
