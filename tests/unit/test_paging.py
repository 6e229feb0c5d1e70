"""Page sizes and opaque page tokens bound to their query."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedline_server.domain.errors import InvalidArgument, InvalidPageToken
from seedline_server.domain.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    PageToken,
    decode_token,
    next_token,
    page_size,
)

QUERY = {"parent": "licenses/01JD0000000000000000000000", "phase": "FLOWERING"}
KEY = "01JD0000000000000000000042"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# ---------------------------------------------------------------------------------------------
# page_size


def test_constants() -> None:
    assert DEFAULT_PAGE_SIZE == 20
    assert MAX_PAGE_SIZE == 100


@pytest.mark.parametrize(
    ("requested", "effective"),
    [(0, 20), (1, 1), (2, 2), (20, 20), (99, 99), (100, 100), (101, 100), (1000, 100), (2**31 - 1, 100)],
)
def test_page_size_convention(requested: int, effective: int) -> None:
    assert page_size(requested) == effective


@pytest.mark.parametrize("requested", [-1, -20, -(2**31)])
def test_negative_page_size_is_invalid_argument(requested: int) -> None:
    with pytest.raises(InvalidArgument, match="page_size") as info:
        page_size(requested)
    assert info.value.reason == "VALIDATION_FAILED"


@given(st.integers(min_value=1, max_value=2**31 - 1))
def test_page_size_is_always_between_1_and_100(requested: int) -> None:
    size = page_size(requested)
    assert 1 <= size <= MAX_PAGE_SIZE
    assert size == min(requested, 100)


# ---------------------------------------------------------------------------------------------
# Tokens


def test_token_round_trip() -> None:
    token = next_token(KEY, QUERY)
    assert decode_token(token, QUERY) == KEY


def test_token_is_url_safe_and_unpadded() -> None:
    token = next_token("key/with+odd?chars~" * 5, QUERY)
    assert token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_token_does_not_depend_on_query_key_order() -> None:
    reordered = dict(reversed(list(QUERY.items())))
    assert next_token(KEY, QUERY) == next_token(KEY, reordered)
    assert decode_token(next_token(KEY, QUERY), reordered) == KEY


def test_page_token_encode_matches_next_token() -> None:
    token = next_token(KEY, QUERY)
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert data["k"] == KEY
    assert PageToken(KEY, data["q"]).encode() == token


@pytest.mark.parametrize("token", ["", None])
def test_empty_token_means_first_page(token: str | None) -> None:
    assert decode_token(token or "", QUERY) is None


@pytest.mark.parametrize(
    "other",
    [
        {**QUERY, "phase": "VEGETATIVE"},
        {"parent": QUERY["parent"]},  # a filter dropped
        {**QUERY, "section": "licenses/x/sections/y"},  # a filter added
        {**QUERY, "parent": "licenses/01JD0000000000000000000001"},
        {},
    ],
)
def test_token_for_one_query_is_refused_for_another(other: dict[str, str]) -> None:
    token = next_token(KEY, QUERY)
    with pytest.raises(InvalidPageToken, match="different query") as info:
        decode_token(token, other)
    assert info.value.reason == "INVALID_PAGE_TOKEN"
    assert isinstance(info.value, InvalidArgument)


def test_token_with_a_swapped_key_and_value_is_refused() -> None:
    # The fingerprint binds keys to values, not just the multiset of strings.
    token = next_token(KEY, {"a": "b"})
    with pytest.raises(InvalidPageToken):
        decode_token(token, {"b": "a"})


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "!!!!",
        "abc",  # base64 of non-JSON bytes
        _b64(b"not json"),
        _b64(b"[]"),  # JSON, but not an object
        _b64(b'"string"'),
        _b64(b"42"),
        _b64(b"null"),
        _b64(b'{"k": "x"}'),  # no query fingerprint
        _b64(b'{"q": "x"}'),  # no key
        _b64(b"\xff\xfe\xfd"),  # not UTF-8
        "%%%%====",
    ],
)
def test_garbage_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidPageToken, match="malformed"):
        decode_token(token, QUERY)


def test_forged_fingerprint_is_refused() -> None:
    forged = PageToken(KEY, "0000000000000000").encode()
    with pytest.raises(InvalidPageToken, match="different query"):
        decode_token(forged, QUERY)


def test_truncated_token_is_refused() -> None:
    token = next_token(KEY, QUERY)
    with pytest.raises(InvalidPageToken):
        decode_token(token[: len(token) // 2], QUERY)


queries = st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6)


@settings(max_examples=200)
@given(key=st.text(max_size=100), query=queries)
def test_any_key_round_trips_for_its_query(key: str, query: dict[str, str]) -> None:
    assert decode_token(next_token(key, query), query) == key


@settings(max_examples=200)
@given(key=st.text(min_size=1, max_size=50), query=queries, other=queries)
def test_a_token_is_refused_for_any_different_query(
    key: str, query: dict[str, str], other: dict[str, str]
) -> None:
    token = next_token(key, query)
    if other == query:
        assert decode_token(token, other) == key
    else:
        with pytest.raises(InvalidPageToken):
            decode_token(token, other)
