"""Build-time check: every RPC of every Seedline service declares who may call it."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor
from seedline.type.v1 import access_pb2

from seedline_server import contract
from seedline_server.domain import access

METHODS = [m for s in contract.load_services() for m in s.methods]


def test_there_are_rpcs_to_check() -> None:
    assert len(METHODS) > 100


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
def test_every_rpc_declares_an_access_rule(method: descriptor.MethodDescriptor) -> None:
    options = method.GetOptions()
    assert options.HasExtension(access_pb2.access), f"{method.full_name} has no (seedline.type.v1.access)"
    rule = options.Extensions[access_pb2.access]
    assert rule.scope != access_pb2.ACCESS_SCOPE_UNSPECIFIED
    if rule.scope in (access_pb2.ACCESS_SCOPE_LICENSE, access_pb2.ACCESS_SCOPE_GLOBAL):
        assert rule.permission in access.PERMISSIONS, f"unknown permission {rule.permission!r}"
    if rule.scope == access_pb2.ACCESS_SCOPE_LICENSE:
        # The license field exists and is a string naming licenses/{license}/...
        message = method.input_type
        parts = rule.license_field.split(".")
        for part in parts[:-1]:
            message = message.fields_by_name[part].message_type
        leaf = message.fields_by_name[parts[-1]]
        assert leaf.type == descriptor.FieldDescriptor.TYPE_STRING
