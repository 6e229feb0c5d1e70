"""Hostile input to the parsers the server owns: no crash, only the documented, clear errors.

Quantities, lab values, page tokens (plain and the lab metric keyset), resource names, the
transfer watch resume token and Envoy's ``x-forwarded-client-cert`` header. Each property names
the only exceptions allowed; anything else would surface as INTERNAL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from seedline.type.v1 import quantity_pb2

from seedline_server.api import names
from seedline_server.api.convert import parse_quantity
from seedline_server.api.interceptor import XFCC, principal_from
from seedline_server.domain import lab as lab_rules
from seedline_server.domain import paging
from seedline_server.domain.errors import InvalidArgument, InvalidPageToken, UnitMismatch
from seedline_server.domain.quantity import Unit, parse
from seedline_server.service.context import ANONYMOUS

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONTRACT_VALUE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
PARTNER = re.compile(r"spiffe://seedline\.dev/partner/([A-Za-z0-9._-]{1,64})")
ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

decimalish = st.from_regex(r"\A[0-9]{0,14}(\.[0-9]{0,11})?\Z") | st.text(
    alphabet=string.digits + ".-+eE _,\n\t٣²" + "\u00a0", max_size=30
)
any_text = st.text(max_size=200) | decimalish


# --- quantities --------------------------------------------------------------------------------


@FAST
@given(value=any_text, unit=st.sampled_from(Unit))
@example(value="1e3", unit=Unit.GRAM)
@example(value="١٢", unit=Unit.GRAM)  # Arabic-Indic digits: Decimal() would accept them
@example(value="1\n", unit=Unit.GRAM)
@example(value="999999999999.999999999", unit=Unit.POUND)
@example(value="0.5", unit=Unit.EACH)
def test_quantity_parse_total(value: str, unit: Unit) -> None:
    try:
        q = parse(value, unit)
    except (ValueError, UnitMismatch):
        return
    assert CONTRACT_VALUE.fullmatch(value), value
    text = q.text()
    assert CONTRACT_VALUE.fullmatch(text), text
    assert parse(text, q.unit) == q  # what the server answers is accepted back unchanged


@FAST
@given(value=any_text, unit=st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_wire_quantity_only_invalid_argument(value: str, unit: int) -> None:
    try:
        parse_quantity(quantity_pb2.Quantity(value=value, unit=unit), "quantity")  # type: ignore[arg-type]
    except InvalidArgument as exc:
        assert exc.message  # noqa: PT017
        assert all(v.field == "quantity" for v in exc.violations)  # noqa: PT017


@FAST
@given(text=any_text)
@example(text="\u0661")  # ARABIC-INDIC DIGIT ONE
def test_lab_value_parse_total(text: str) -> None:
    try:
        value = lab_rules.parse_value(text)
    except ValueError:
        return
    assert value.is_finite()
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", text)


# --- page tokens -------------------------------------------------------------------------------

QUERY = {"parent": "01JD0000000000000000000000"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_or_invalid(token: str, query: dict[str, str]) -> str | None:
    try:
        return paging.decode_token(token, query)
    except InvalidPageToken as exc:
        assert "page_token" in exc.message  # noqa: PT017
        return None


@FAST
@given(token=st.text(max_size=1024))
@example(token="=")
@example(token="====")
@example(token="\x00")
@example(token=_encode(b"[" * 768))  # deepest JSON nesting a 1024-character token can carry
def test_page_token_arbitrary_text(token: str) -> None:
    _decode_or_invalid(token, QUERY)


@FAST
@given(raw=st.binary(max_size=768))
@example(raw=b"\xff\xfe")
@example(raw=b'{"k": 1}')
@example(raw=b"[]")
def test_page_token_arbitrary_bytes(raw: bytes) -> None:
    _decode_or_invalid(_encode(raw), QUERY)


@FAST
@given(data=json_values, key=json_values)
def test_page_token_arbitrary_json(data: Any, key: Any) -> None:
    _decode_or_invalid(_encode(json.dumps(data).encode()), QUERY)
    # Well-formed shape, arbitrary key, right fingerprint: the key comes back as text.
    fingerprint = json.loads(base64.urlsafe_b64decode(paging.next_token("x", QUERY) + "=="))["q"]
    token = _encode(json.dumps({"k": key, "q": fingerprint}).encode())
    assert paging.decode_token(token, QUERY) == str(key)


@FAST
@given(last=st.text(max_size=64), a=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
def test_page_token_round_trip_and_binding(last: str, a: dict[str, str]) -> None:
    token = paging.next_token(last, a)
    assert paging.decode_token(token, a) == last
    other = {**a, "\x00other": "1"}
    with pytest.raises(InvalidPageToken, match="different query"):
        paging.decode_token(token, other)


def _lab_metric_key(token: str) -> tuple[int, str, str]:
    """The keyset parsing of ``service.lab.list_metrics`` (kept in step with it)."""
    after = paging.decode_token(token, {"type": "0"})
    assert after is not None
    try:
        sort, name, mid = json.loads(after)
        return int(sort), str(name), str(mid)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidPageToken("page_token is malformed") from exc


def test_lab_metric_token_with_infinity_is_invalid_argument() -> None:
    token = paging.next_token(json.dumps([float("inf"), "a", "b"]), {"type": "0"})
    with pytest.raises(InvalidPageToken):
        _lab_metric_key(token)


def test_lab_metric_keyset_mirror_matches_service() -> None:
    import inspect

    from seedline_server.service import lab as lab_service

    source = inspect.getsource(lab_service.list_metrics)
    assert "sort, name, mid = json.loads(after)" in source
    assert "key = (int(sort), str(name), str(mid))" in source


# --- resource names ----------------------------------------------------------------------------

ulids = st.text(alphabet=ULID_ALPHABET, min_size=26, max_size=26)
collections = st.sampled_from(["plants", "lots", "sections", "transfers", "labResults", "samples"])
name_like = st.builds(
    lambda parts: "/".join(parts),
    st.lists(
        st.one_of(st.sampled_from(["licenses", "plants", "-", ""]), ulids, st.text(max_size=30)), max_size=6
    ),
)


@FAST
@given(name=st.text(max_size=200) | name_like, collection=collections | st.text(max_size=12))
@example(name="licenses/01JD0000000000000000000000\n", collection="plants")
@example(name="licenses/01jd0000000000000000000000", collection="plants")
@example(name="licenses/{}", collection="plants")
def test_names_only_invalid_argument(name: str, collection: str) -> None:
    for call in (
        lambda: names.parse(name, "licenses/{}", "parent"),
        lambda: names.license_id(name),
        lambda: names.child(name, collection, "name"),
    ):
        try:
            ids = call()
        except InvalidArgument as exc:
            assert exc.violations  # noqa: PT017
            assert exc.violations[0].field in {"parent", "name"}  # noqa: PT017
            continue
        ids = (ids,) if isinstance(ids, str) else ids
        for i in ids:
            assert re.fullmatch(f"[{ULID_ALPHABET}]{{26}}", i), i
        assert "\n" not in name


@FAST
@given(lic=ulids, cid=ulids, collection=collections)
def test_names_round_trip(lic: str, cid: str, collection: str) -> None:
    assert names.child(f"licenses/{lic}/{collection}/{cid}", collection) == (lic, cid)


# --- the transfer watch resume token -------------------------------------------------------------


class _Feed:
    """Just enough of a TransferFeed for ``start_after`` with a resume token (no database)."""

    async def head(self) -> int:
        return 10


@FAST
@given(token=st.text(min_size=1, max_size=1024) | st.from_regex(r"\A[0-9]{1,30}\Z"))
@example(token="\u00b2")  # SUPERSCRIPT TWO: str.isdigit() is true, int() refuses it
@example(token="\u0661")  # ARABIC-INDIC DIGIT ONE: int() accepts it
@example(token="9" * 5000)  # beyond int()'s digit limit
@example(token="007")
def test_resume_token_only_invalid_argument(token: str) -> None:
    from seedline_server.service.watch import TransferFeed

    try:
        seq = asyncio.run(TransferFeed.start_after(_Feed(), token, None))  # type: ignore[arg-type]
    except InvalidArgument as exc:
        assert exc.violations[0].field == "resume_token"  # noqa: PT017
        return
    assert 0 <= seq <= 10
    assert token.isascii()
    assert token.isdigit()


# --- x-forwarded-client-cert -----------------------------------------------------------------------

partner_ids = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=64)
xfcc_text = st.lists(
    st.sampled_from([*',;="\\ URIuri=:/.-\n', "URI=", "spiffe://seedline.dev/partner/", "acme"]), max_size=30
).map("".join)


@FAST
@given(value=st.text(max_size=300) | xfcc_text, trust=st.booleans())
@example(value='URI="spiffe://seedline.dev/partner/acme', trust=True)
@example(value="URI=spiffe://seedline.dev/partner/acme,", trust=True)
@example(value="URI=spiffe://seedline.dev/partner/acme,By=x", trust=True)
@example(value='Subject="CN=a\\";URI=spiffe://seedline.dev/partner/evil', trust=True)
@example(value="URI=spiffe://seedline.dev/partner/acme/../evil", trust=True)
@example(value="URI=spiffe://seedline.dev/partner/" + "a" * 65, trust=True)
def test_xfcc_never_raises_and_fails_closed(value: str, trust: bool) -> None:
    who = principal_from({XFCC: value}, trust_forwarded=trust)
    if who == ANONYMOUS:
        return
    assert trust
    uri = who.detail
    match = PARTNER.fullmatch(uri)
    assert match is not None, uri
    assert who.name == f"partners/{match.group(1)}"
    assert who.kind == "PARTNER_CERTIFICATE"
    assert uri in value


def test_xfcc_uri_with_trailing_newline_is_refused() -> None:
    value = 'URI="spiffe://seedline.dev/partner/acme\n"'
    assert principal_from({XFCC: value}, trust_forwarded=True) == ANONYMOUS


def _quote(value: str) -> str:
    """Envoy's XFCC quoting: values with , ; = or quotes are quoted, quotes escaped."""
    if any(c in value for c in ',;="'):
        return '"' + value.replace('"', '\\"') + '"'
    return value


@FAST
@given(
    subject=st.text(
        alphabet=st.characters(blacklist_characters="\\", blacklist_categories=["Cs"]), max_size=60
    ),
    uri=partner_ids.map(lambda p: f"spiffe://seedline.dev/partner/{p}") | st.text(max_size=60),
    dns=st.text(alphabet=string.ascii_lowercase + ".", max_size=20),
)
@example(
    subject="CN=x;URI=spiffe://seedline.dev/partner/evil", uri="spiffe://seedline.dev/partner/acme", dns=""
)
@example(subject='CN="x",URI=spiffe://seedline.dev/partner/evil', uri="https://other", dns="")
def test_xfcc_envoy_element(subject: str, uri: str, dns: str) -> None:
    """An element as Envoy's SANITIZE_SET writes it: the subject never decides the identity."""
    element = f"Hash=abc;Subject={_quote(subject)};URI={_quote(uri)}"
    if dns:
        element += f";DNS={dns}"
    who = principal_from({XFCC: element}, trust_forwarded=True)
    expected = PARTNER.fullmatch(uri.strip())
    if expected is None:
        assert who == ANONYMOUS
    else:
        assert who.name == f"partners/{expected.group(1)}"


@FAST
@given(
    prefix=st.lists(st.text(alphabet=string.ascii_letters + ";=:/.", max_size=40), max_size=3), p=partner_ids
)
def test_xfcc_last_element_decides(prefix: list[str], p: str) -> None:
    """Earlier (client-forwarded) elements never decide; only the one Envoy appended last."""
    last = f"By=spiffe://seedline.dev/server;URI=spiffe://seedline.dev/partner/{p}"
    who = principal_from({XFCC: ",".join([*prefix, last])}, trust_forwarded=True)
    assert who.name == f"partners/{p}"
    spoof = ",".join([f"URI=spiffe://seedline.dev/partner/{p}", "By=x;URI=https://not-a-partner"])
    assert principal_from({XFCC: spoof}, trust_forwarded=True) == ANONYMOUS
