"""Build-time checks over the generated v1 contract descriptors."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor

from seedline_server.contract import load_services

SERVICES = load_services()
METHODS = [(s, m) for s in SERVICES for m in s.methods]
PACKAGES = {"license", "plant", "inventory", "lab", "transfer", "integration", "telemetry", "auth", "audit"}
VERBS = {"get", "put", "post", "delete", "patch"}


def _method_id(item: tuple[descriptor.ServiceDescriptor, descriptor.MethodDescriptor]) -> str:
    return item[1].full_name


def _rule(method: descriptor.MethodDescriptor) -> http_pb2.HttpRule:
    rule: http_pb2.HttpRule = method.GetOptions().Extensions[annotations_pb2.http]
    return rule


def _path(rule: http_pb2.HttpRule) -> str:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return ""
    if kind == "custom":
        return str(rule.custom.path)
    return str(getattr(rule, kind))


def test_services_are_loaded_sorted_and_unique() -> None:
    names = [s.full_name for s in SERVICES]
    assert names == sorted(names)
    assert len(names) == len(set(names))
    assert len(METHODS) > len(SERVICES)


def test_every_service_is_a_seedline_v1_service_in_a_known_package() -> None:
    for service in SERVICES:
        root, package, version, _ = service.full_name.split(".")
        assert (root, version) == ("seedline", "v1"), service.full_name
        assert package in PACKAGES, service.full_name


def test_every_known_package_has_a_service() -> None:
    assert {s.full_name.split(".")[1] for s in SERVICES} == PACKAGES


@pytest.mark.parametrize("item", METHODS, ids=_method_id)
def test_every_rpc_has_an_http_rule_under_v1(
    item: tuple[descriptor.ServiceDescriptor, descriptor.MethodDescriptor],
) -> None:
    _, method = item
    assert method.GetOptions().HasExtension(annotations_pb2.http), (
        f"{method.full_name} has no google.api.http"
    )
    rule = _rule(method)
    assert rule.WhichOneof("pattern") in VERBS | {"custom"}
    assert _path(rule).startswith("/v1/"), f"{method.full_name}: {_path(rule)!r}"
    for extra in rule.additional_bindings:
        assert _path(extra).startswith("/v1/"), f"{method.full_name} additional binding: {_path(extra)!r}"


@pytest.mark.parametrize("item", METHODS, ids=_method_id)
def test_http_body_names_a_request_field_or_everything(
    item: tuple[descriptor.ServiceDescriptor, descriptor.MethodDescriptor],
) -> None:
    _, method = item
    rule = _rule(method)
    if rule.body and rule.body != "*":
        assert rule.body in method.input_type.fields_by_name, f"{method.full_name} body={rule.body!r}"
    # DELETE may carry a body on purpose (two-step destruction keeps e-signatures out of URLs); GET may not.
    if rule.WhichOneof("pattern") == "get":
        assert not rule.body, f"{method.full_name}: GET must not have a body"


PAGED = [(s, m) for s, m in METHODS if "page_size" in m.input_type.fields_by_name]


def test_there_are_paginated_methods() -> None:
    assert len(PAGED) >= 9  # at least one List per service family


@pytest.mark.parametrize("item", PAGED, ids=_method_id)
def test_paginated_requests_have_token_and_responses_next_token(
    item: tuple[descriptor.ServiceDescriptor, descriptor.MethodDescriptor],
) -> None:
    _, method = item
    request, response = method.input_type, method.output_type
    size = request.fields_by_name["page_size"]
    assert size.type == descriptor.FieldDescriptor.TYPE_INT32
    token = request.fields_by_name.get("page_token")
    assert token is not None, f"{request.full_name} has page_size but no page_token"
    assert token.type == descriptor.FieldDescriptor.TYPE_STRING
    next_token = response.fields_by_name.get("next_page_token")
    assert next_token is not None, f"{response.full_name} has no next_page_token"
    assert next_token.type == descriptor.FieldDescriptor.TYPE_STRING


@pytest.mark.parametrize("item", METHODS, ids=_method_id)
def test_page_token_never_appears_without_page_size(
    item: tuple[descriptor.ServiceDescriptor, descriptor.MethodDescriptor],
) -> None:
    _, method = item
    fields = method.input_type.fields_by_name
    assert ("page_token" in fields) == ("page_size" in fields), method.full_name
