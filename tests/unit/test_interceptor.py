"""The call interceptor: principal from XFCC, contract validation, and error mapping (no network)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from seedline.license.v1 import license_pb2
from seedline.plant.v1 import plant_pb2
from seedline.type.v1 import quantity_pb2

from seedline_server.api import interceptor
from seedline_server.api.interceptor import CallInterceptor, principal_from, validate, violations_of
from seedline_server.domain.errors import InvalidArgument, NotFound
from seedline_server.service.context import ANONYMOUS, CallContext, Principal

LIC = "licenses/01JD0000000000000000000000"
PLANT = f"{LIC}/plants/01JD0000000000000000000001"
ACME = "spiffe://seedline.dev/partner/acme"
XFCC = f'By=spiffe://x;Hash=abc;Subject="CN=acme";URI={ACME}'


def _xfcc(value: str) -> dict[str, str]:
    return {"x-forwarded-client-cert": value}


# ---------------------------------------------------------------------------------------------
# principal_from


def test_partner_certificate_behind_envoy() -> None:
    assert principal_from(_xfcc(XFCC), trust_forwarded=True) == Principal(
        name="partners/acme", kind="PARTNER_CERTIFICATE", detail=ACME
    )


def test_forwarded_certificate_is_ignored_on_the_direct_listener() -> None:
    assert principal_from(_xfcc(XFCC), trust_forwarded=False) == ANONYMOUS


@pytest.mark.parametrize("metadata", [{}, _xfcc(""), {"x-other": XFCC}])
def test_no_forwarded_certificate_is_anonymous(metadata: dict[str, str]) -> None:
    assert principal_from(metadata, trust_forwarded=True) == ANONYMOUS


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://evil.dev/partner/acme",
        "spiffe://seedline.dev.evil.dev/partner/acme",
        "spiffe://seedline.dev/partners/acme",
        "spiffe://seedline.dev/service/edge",
        "spiffe://seedline.dev/partner/",
        "spiffe://seedline.dev/partner/acme/extra",
        "spiffe://seedline.dev/partner/ac me",
        "spiffe://seedline.dev/partner/" + "a" * 65,
        "https://seedline.dev/partner/acme",
        "spiffe://seedlineXdev/partner/acme",
        "",
    ],
)
def test_uri_outside_the_partner_namespace_is_anonymous(uri: str) -> None:
    value = f'By=spiffe://x;Hash=abc;Subject="CN=acme";URI={uri}'
    assert principal_from(_xfcc(value), trust_forwarded=True) == ANONYMOUS


def test_element_without_uri_is_anonymous() -> None:
    assert (
        principal_from(_xfcc('By=spiffe://x;Hash=abc;Subject="CN=acme"'), trust_forwarded=True) == ANONYMOUS
    )


def test_longest_partner_name_is_accepted() -> None:
    name = "a" * 64
    principal = principal_from(_xfcc(f"URI=spiffe://seedline.dev/partner/{name}"), trust_forwarded=True)
    assert principal.name == f"partners/{name}"


@pytest.mark.parametrize(
    "value",
    [
        f'By=spiffe://x;Hash=abc;URI="{ACME}"',  # quoted value
        f"By=spiffe://x;Hash=abc;uri={ACME}",  # key is case-insensitive
        f"By=spiffe://x; URI = {ACME} ",  # whitespace around parts
        f'By=spiffe://x;Hash=abc;Subject="CN=acme,O=Acme Inc";URI={ACME}',  # comma inside quotes
        f"URI={ACME};DNS=acme.example",
    ],
)
def test_xfcc_variants_of_the_same_partner(value: str) -> None:
    assert principal_from(_xfcc(value), trust_forwarded=True).name == "partners/acme"


def test_last_element_counts() -> None:
    value = f"By=spiffe://a;URI=spiffe://seedline.dev/partner/evil,By=spiffe://b;URI={ACME}"
    assert principal_from(_xfcc(value), trust_forwarded=True).name == "partners/acme"


def test_earlier_element_is_not_used_when_the_last_has_no_partner_uri() -> None:
    value = f"By=spiffe://a;URI={ACME},By=spiffe://b;Hash=abc"
    assert principal_from(_xfcc(value), trust_forwarded=True) == ANONYMOUS
    value = f"By=spiffe://a;URI={ACME},By=spiffe://b;URI=spiffe://evil.dev/partner/acme"
    assert principal_from(_xfcc(value), trust_forwarded=True) == ANONYMOUS


@pytest.mark.parametrize(
    "subject",
    [
        '"CN=x;URI=spiffe://seedline.dev/partner/evil"',  # ';' inside quotes
        '"CN=x,URI=spiffe://seedline.dev/partner/evil"',  # ',' inside quotes
        r'"CN=x\";URI=spiffe://seedline.dev/partner/evil"',  # escaped quote stays inside the value
    ],
)
def test_uri_inside_a_quoted_subject_is_not_the_uri(subject: str) -> None:
    value = f"By=spiffe://x;Hash=abc;Subject={subject};URI={ACME}"
    assert principal_from(_xfcc(value), trust_forwarded=True).name == "partners/acme"


# ---------------------------------------------------------------------------------------------
# violations_of / validate on generated messages


def _fields(request: Any) -> list[str]:
    return [v.field for v in violations_of(request)]


def test_negative_page_size_is_a_violation() -> None:
    found = violations_of(plant_pb2.ListPlantsRequest(parent="licenses/x", page_size=-1))
    assert [v.field for v in found] == ["page_size"]
    assert "int32.gte" in found[0].description


def test_cel_rules_on_a_message_field_are_reported_on_that_field() -> None:
    found = violations_of(license_pb2.CreateSectionRequest(parent=LIC, section=license_pb2.Section()))
    assert {v.field for v in found} == {"section"}
    descriptions = " | ".join(v.description for v in found)
    assert "display_name is required" in descriptions
    assert "type is required" in descriptions
    assert len(found) == 2


def test_required_message_field() -> None:
    found = violations_of(license_pb2.CreateSectionRequest(parent=LIC))
    assert [v.field for v in found] == ["section"]
    assert "required" in found[0].description


def test_repeated_item_violation_has_an_indexed_path() -> None:
    found = violations_of(plant_pb2.AddPlantNoteRequest(parent=LIC, plants=[PLANT, "bad"], text="x"))
    assert [v.field for v in found] == ["plants[1]"]
    assert "string.pattern" in found[0].description


def test_nested_message_in_repeated_field_has_an_indexed_dotted_path() -> None:
    ok = quantity_pb2.Quantity(value="1", unit=quantity_pb2.UNIT_GRAM)
    bad = quantity_pb2.Quantity(value="1e3", unit=quantity_pb2.UNIT_GRAM)
    request = plant_pb2.CollectRawRequest(
        parent=LIC,
        weights=[
            plant_pb2.RawWeight(plant=PLANT, wet_weight=ok),
            plant_pb2.RawWeight(plant=PLANT, wet_weight=bad),
        ],
    )
    assert _fields(request) == ["weights[1].wet_weight.value"]


def test_nested_singular_message_has_a_dotted_path() -> None:
    request = plant_pb2.UpdatePlantRequest(plant=plant_pb2.Plant(display_name="x" * 129))
    assert sorted(_fields(request)) == ["plant.display_name", "update_mask"]


def test_every_violation_is_collected_not_just_the_first() -> None:
    request = plant_pb2.ListPlantsRequest(parent="bad", page_size=-1, section="nope", page_token="t" * 1025)
    assert sorted(_fields(request)) == ["page_size", "page_token", "parent", "section"]


@pytest.mark.parametrize(
    "request_message",
    [
        plant_pb2.ListPlantsRequest(parent=LIC, page_size=10),
        plant_pb2.ListPlantsRequest(parent=LIC),
        plant_pb2.AddPlantNoteRequest(parent=LIC, plants=[PLANT], text="x"),
        license_pb2.CreateSectionRequest(
            parent=LIC, section=license_pb2.Section(display_name="Flower room", type=1)
        ),
        plant_pb2.GetPlantRequest(name=PLANT),
    ],
)
def test_valid_requests_have_no_violations(request_message: Any) -> None:
    assert violations_of(request_message) == []
    validate(request_message)  # does not raise


def test_validate_raises_invalid_argument_listing_every_field() -> None:
    request = plant_pb2.AddPlantNoteRequest(parent="nope", plants=["bad", "bad"], text="")
    with pytest.raises(InvalidArgument) as info:
        validate(request)
    err = info.value
    fields = {v.field for v in err.violations}
    assert {"parent", "plants[0]", "plants[1]", "plants", "text"} <= fields
    assert err.reason == "VALIDATION_FAILED"
    # The message names every distinct field, sorted.
    assert err.message == "invalid request: " + ", ".join(sorted(fields))
    assert err.violations == violations_of(request)


# ---------------------------------------------------------------------------------------------
# CallInterceptor, driven without a server


@dataclass
class _Details:
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


class _Aborted(grpc.aio.AbortError):
    pass


class _Context:
    """Records the status a handler aborts with, and raises like grpc.aio does."""

    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    async def abort_with_status(self, status: grpc.Status) -> None:
        assert self.status is None, "aborted twice"
        self.status = status
        raise _Aborted()


def _rich(status: grpc.Status | None) -> status_pb2.Status:
    assert status is not None
    return status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])


async def _wrap(behavior: Any, method: str = "/seedline.plant.v1.PlantService/GetPlant", **kw: Any) -> Any:
    async def continuation(_: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(behavior)

    metadata = tuple(kw.pop("metadata", ()))
    handler = await CallInterceptor(**kw).intercept_service(continuation, _Details(method, metadata))
    return handler


async def test_interceptor_sets_the_call_context_for_the_handler() -> None:
    seen: list[CallContext] = []

    async def behavior(request: Any, context: Any) -> str:
        seen.append(interceptor.current())
        return "ok"

    handler = await _wrap(
        behavior,
        trust_forwarded=True,
        metadata=[("x-forwarded-client-cert", XFCC), ("x-request-id", "r-1"), ("bin-bin", b"\x00")],
    )
    assert await handler.unary_unary(plant_pb2.GetPlantRequest(name=PLANT), _Context()) == "ok"
    assert seen == [
        CallContext(
            principal=Principal("partners/acme", "PARTNER_CERTIFICATE", ACME),
            method="seedline.plant.v1.PlantService.GetPlant",
            request_id="r-1",
        )
    ]
    with pytest.raises(LookupError):
        interceptor.current()  # reset after the call


async def test_interceptor_ignores_xfcc_on_the_direct_listener() -> None:
    seen: list[Principal] = []

    async def behavior(request: Any, context: Any) -> str:
        seen.append(interceptor.current().principal)
        return "ok"

    handler = await _wrap(behavior, trust_forwarded=False, metadata=[("x-forwarded-client-cert", XFCC)])
    await handler.unary_unary(plant_pb2.GetPlantRequest(name=PLANT), _Context())
    assert seen == [ANONYMOUS]


async def test_interceptor_refuses_invalid_requests_before_the_handler() -> None:
    called = False

    async def behavior(request: Any, context: Any) -> str:
        nonlocal called
        called = True
        return "ok"

    handler = await _wrap(behavior, trust_forwarded=False)
    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary(plant_pb2.ListPlantsRequest(parent="x", page_size=-1), context)
    assert not called
    assert context.status is not None
    assert context.status.code is grpc.StatusCode.INVALID_ARGUMENT
    rich = _rich(context.status)
    bad = error_details_pb2.BadRequest()
    assert rich.details[1].Unpack(bad)
    assert sorted(v.field for v in bad.field_violations) == ["page_size", "parent"]


async def test_interceptor_maps_domain_errors() -> None:
    async def behavior(request: Any, context: Any) -> str:
        raise NotFound("plant", PLANT)

    handler = await _wrap(behavior, trust_forwarded=False)
    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary(plant_pb2.GetPlantRequest(name=PLANT), context)
    assert context.status is not None
    assert context.status.code is grpc.StatusCode.NOT_FOUND
    assert _rich(context.status).code == code_pb2.NOT_FOUND


async def test_interceptor_hides_unexpected_errors() -> None:
    async def behavior(request: Any, context: Any) -> str:
        raise RuntimeError("password=hunter2 at db.internal:5432")

    handler = await _wrap(behavior, trust_forwarded=False, metadata=[("x-request-id", "req-9")])
    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary(plant_pb2.GetPlantRequest(name=PLANT), context)
    assert context.status is not None
    assert context.status.code is grpc.StatusCode.INTERNAL
    assert "req-9" in context.status.details
    assert "hunter2" not in context.status.details
    assert b"hunter2" not in _rich(context.status).SerializeToString()


async def test_interceptor_does_not_remap_an_abort_by_the_handler() -> None:
    async def behavior(request: Any, context: Any) -> str:
        raise _Aborted()

    handler = await _wrap(behavior, trust_forwarded=False)
    context = _Context()
    with pytest.raises(_Aborted):
        await handler.unary_unary(plant_pb2.GetPlantRequest(name=PLANT), context)
    assert context.status is None


async def test_interceptor_wraps_server_streaming_handlers() -> None:
    async def behavior(request: Any, context: Any) -> AsyncIterator[str]:
        yield interceptor.current().method
        raise NotFound("plant", PLANT)

    async def continuation(_: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_stream_rpc_method_handler(behavior)

    handler = await CallInterceptor(trust_forwarded=False).intercept_service(
        continuation, _Details("/seedline.telemetry.v1.TelemetryService/Watch")
    )
    context = _Context()
    items: list[str] = []

    async def drain() -> None:
        async for item in handler.unary_stream(plant_pb2.GetPlantRequest(name=PLANT), context):
            items.append(item)

    with pytest.raises(grpc.aio.AbortError):
        await drain()
    assert items == ["seedline.telemetry.v1.TelemetryService.Watch"]
    assert context.status is not None
    assert context.status.code is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "method", ["/grpc.health.v1.Health/Check", "/grpc.reflection.v1.ServerReflection/Info"]
)
async def test_health_and_reflection_are_not_wrapped(method: str) -> None:
    original = grpc.unary_unary_rpc_method_handler(lambda r, c: r)

    async def continuation(_: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return original

    handler = await CallInterceptor(trust_forwarded=False).intercept_service(continuation, _Details(method))
    assert handler is original


async def test_unknown_methods_pass_through_as_none() -> None:
    async def continuation(_: Any) -> None:
        return None

    handler = await CallInterceptor(trust_forwarded=False).intercept_service(continuation, _Details("/x.Y/Z"))
    assert handler is None
