"""Restore buf/validate/validate.proto's descriptor from the npm package and vendor it.

No registry reachable from this project ships ``buf/validate/validate.proto`` as source, but
npm's ``@bufbuild/protovalidate`` embeds its ``FileDescriptorProto`` (protobuf-es "embedded"
form). That form elides what can be derived: the dependency list, the ``type`` of fields that
carry a ``type_name``, and default JSON names. This script restores the first two (protoc
recomputes JSON names) and writes a ``FileDescriptorSet`` to
``third_party/buf/validate/validate.protoset``.

Usage: ``python tools/vendor_protovalidate.py path/to/validate_pb.js``
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

_WELL_KNOWN_FILES = {
    ".google.protobuf.Duration": "google/protobuf/duration.proto",
    ".google.protobuf.Timestamp": "google/protobuf/timestamp.proto",
    ".google.protobuf.FieldMask": "google/protobuf/field_mask.proto",
}
_DESCRIPTOR_FILE = "google/protobuf/descriptor.proto"
_OUT = Path(__file__).resolve().parent.parent / "third_party/buf/validate/validate.protoset"


def _collect_types(
    prefix: str,
    messages: list[descriptor_pb2.DescriptorProto],
    enums: list[descriptor_pb2.EnumDescriptorProto],
    found: dict[str, int],
) -> None:
    for enum in enums:
        found[f"{prefix}.{enum.name}"] = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
    for message in messages:
        name = f"{prefix}.{message.name}"
        found[name] = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
        _collect_types(name, list(message.nested_type), list(message.enum_type), found)


def _fix_fields(
    fields: list[descriptor_pb2.FieldDescriptorProto], types: dict[str, int], deps: set[str]
) -> None:
    for field in fields:
        if field.type_name:
            if field.type_name in _WELL_KNOWN_FILES:
                deps.add(_WELL_KNOWN_FILES[field.type_name])
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
            elif not field.HasField("type"):
                field.type = types[field.type_name]  # type: ignore[assignment]
        if field.extendee.startswith(".google.protobuf."):
            deps.add(_DESCRIPTOR_FILE)


def _walk(messages: list[descriptor_pb2.DescriptorProto], types: dict[str, int], deps: set[str]) -> None:
    for message in messages:
        _fix_fields(list(message.field), types, deps)
        _fix_fields(list(message.extension), types, deps)
        _walk(list(message.nested_type), types, deps)


def restore(embedded: bytes) -> descriptor_pb2.FileDescriptorProto:
    """Return the complete descriptor for an embedded (compact) one."""
    fd = descriptor_pb2.FileDescriptorProto.FromString(embedded)
    types: dict[str, int] = {}
    _collect_types(f".{fd.package}", list(fd.message_type), list(fd.enum_type), types)
    deps: set[str] = set()
    _walk(list(fd.message_type), types, deps)
    _fix_fields(list(fd.extension), types, deps)
    del fd.dependency[:]
    fd.dependency.extend(sorted(deps))
    return fd


def main(argv: list[str]) -> int:
    """Entry point."""
    source = Path(argv[1]).read_text()
    match = re.search(r'fileDesc\("([^"]*)"', source)
    if match is None:
        print("no fileDesc(...) found", file=sys.stderr)
        return 1
    b64 = match.group(1)
    fd = restore(base64.b64decode(b64 + "=" * (-len(b64) % 4)))
    _OUT.parent.mkdir(parents=True, exist_ok=True)
    _OUT.write_bytes(descriptor_pb2.FileDescriptorSet(file=[fd]).SerializeToString(deterministic=True))
    print(f"wrote {_OUT} ({len(fd.message_type)} messages, deps {list(fd.dependency)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
