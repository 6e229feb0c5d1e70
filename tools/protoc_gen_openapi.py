"""protoc plugin: writes ``openapi.json``, an OpenAPI document of the REST/JSON face of the API.

The REST face is what Envoy's gRPC-JSON transcoder serves from the ``google.api.http`` rules, so
the document is derived from those rules and the proto3 JSON mapping only: one operation per rule
(additional bindings included) of every service in a ``seedline.*`` package, and one schema per
message or enum reachable from them, named by its full proto name.

Path variables with a pattern (``{name=licenses/*/plants/*}``) become one path parameter per
``*``, named after the collection before it (``/v1/licenses/{license}/plants/{plant}``); the
parameter's description says which request field they make up. Plain ``{field}`` variables stay.

The version is OpenAPI 3.1.0, not 3.0.x: the ``mutualTLS`` security scheme exists only from 3.1.
Output is JSON (valid YAML too) with sorted keys, so it is byte-for-byte deterministic.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

FDP = descriptor_pb2.FieldDescriptorProto
Schema = dict[str, Any]

OUTPUT = "openapi.json"
OPENAPI_VERSION = "3.1.0"
PACKAGE_PREFIX = "seedline."
REF = "#/components/schemas/"
STATUS = "google.rpc.Status"
HTTP_BODY = ".google.api.HttpBody"
BINARY: Schema = {"type": "string", "format": "binary"}
OPENAPI_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

_INT64: Schema = {"type": "string", "format": "int64"}
_UINT64: Schema = {"type": "string", "format": "uint64"}
_INT32: Schema = {"type": "integer", "format": "int32"}
_UINT32: Schema = {"type": "integer", "format": "uint32"}
_SCALARS: dict[int, Schema] = {
    FDP.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FDP.TYPE_FLOAT: {"type": "number", "format": "float"},
    **dict.fromkeys((FDP.TYPE_INT64, FDP.TYPE_SINT64, FDP.TYPE_SFIXED64), _INT64),
    **dict.fromkeys((FDP.TYPE_UINT64, FDP.TYPE_FIXED64), _UINT64),
    **dict.fromkeys((FDP.TYPE_INT32, FDP.TYPE_SINT32, FDP.TYPE_SFIXED32), _INT32),
    **dict.fromkeys((FDP.TYPE_UINT32, FDP.TYPE_FIXED32), _UINT32),
    FDP.TYPE_BOOL: {"type": "boolean"},
    FDP.TYPE_STRING: {"type": "string"},
    FDP.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_ANY: Schema = {
    "type": "object",
    "description": "Any message, with `@type` naming its type (proto3 JSON mapping of Any).",
    "properties": {"@type": {"type": "string", "description": "Type URL of the embedded message."}},
    "required": ["@type"],
    "additionalProperties": True,
}
_WP = ".google.protobuf."
# Well-known types that the JSON mapping writes as a single JSON value: usable as query parameters.
_WKT_SCALARS: dict[str, Schema] = {
    _WP + "Timestamp": {"type": "string", "format": "date-time"},
    _WP + "Duration": {"type": "string", "description": 'Seconds with an "s" suffix.', "example": "3.5s"},
    _WP + "FieldMask": {
        "type": "string",
        "description": "Comma-separated lowerCamelCase field paths.",
        "example": "displayName,active",
    },
    _WP + "DoubleValue": _SCALARS[FDP.TYPE_DOUBLE],
    _WP + "FloatValue": _SCALARS[FDP.TYPE_FLOAT],
    _WP + "Int64Value": _INT64,
    _WP + "UInt64Value": _UINT64,
    _WP + "Int32Value": _INT32,
    _WP + "UInt32Value": _UINT32,
    _WP + "BoolValue": _SCALARS[FDP.TYPE_BOOL],
    _WP + "StringValue": _SCALARS[FDP.TYPE_STRING],
    _WP + "BytesValue": _SCALARS[FDP.TYPE_BYTES],
}
_WKT: dict[str, Schema] = {
    **_WKT_SCALARS,
    _WP + "Struct": {"type": "object", "additionalProperties": True},
    _WP + "Value": {},
    _WP + "ListValue": {"type": "array", "items": {}},
    _WP + "NullValue": {"type": "null"},
    _WP + "Any": _ANY,
    _WP + "Empty": {"type": "object"},
}
_STATUS_SCHEMA: Schema = {
    "type": "object",
    "description": "An error (google.rpc.Status); `details` carry e.g. a google.rpc.ErrorInfo.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "The google.rpc.Code value."},
        "message": {"type": "string", "description": "A developer-facing error message."},
        "details": {"type": "array", "items": _ANY, "description": "Typed error details."},
    },
}
_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")


def _clean(comment: str) -> str:
    """Turns a raw proto comment into description text (no lint directives, no indent)."""
    lines = [line.rstrip() for line in comment.splitlines()]
    lines = [line[1:] if line.startswith(" ") else line for line in lines]
    return "\n".join(line for line in lines if not line.startswith("buf:lint:")).strip()


def _summary(comment: str) -> str:
    """The first sentence of a comment's first paragraph."""
    paragraph = " ".join(comment.split("\n\n")[0].split())
    head, dot, _ = paragraph.partition(". ")
    return head + dot.strip()


def _camel(name: str) -> str:
    """The proto3 JSON name of a field, for descriptors without ``json_name``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _singular(collection: str) -> str:
    """A collection id in singular form: ``licenses`` → ``license``, ``varieties`` → ``variety``."""
    if collection.endswith("ies"):
        return collection[:-3] + "y"
    if collection.endswith(("sses", "shes", "ches", "xes", "uses")):
        return collection[:-2]
    if collection.endswith("s") and not collection.endswith("ss"):
        return collection[:-1]
    return collection


def _with(schema: Schema, extras: Schema) -> Schema:
    """Adds keywords to a schema, wrapping a ``$ref`` in ``allOf`` so they are not ignored."""
    if not extras:
        return schema
    if "$ref" in schema:
        return {"allOf": [schema], **extras}
    return {**schema, **extras}


def _behaviors(field: descriptor_pb2.FieldDescriptorProto) -> set[int]:
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])


class _Generator:
    """Builds the document from the files of one CodeGeneratorRequest."""

    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.comments: dict[str, str] = {}
        self.schemas: dict[str, Schema] = {STATUS: copy.deepcopy(_STATUS_SCHEMA)}
        self.paths: dict[str, dict[str, Any]] = {}
        self.tags: list[Schema] = []
        for file in files:
            self._index(file)

    def _index(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        """Records every message, enum, service and method of a file, with its comment."""
        locations = {
            tuple(loc.path): _clean(loc.leading_comments or loc.trailing_comments)
            for loc in file.source_code_info.location
        }
        prefix = f".{file.package}" if file.package else ""

        def enum(desc: descriptor_pb2.EnumDescriptorProto, name: str, path: tuple[int, ...]) -> None:
            self.enums[name] = desc
            self.comments[name] = locations.get(path, "")
            for i, value in enumerate(desc.value):
                self.comments[f"{name}.{value.name}"] = locations.get((*path, 2, i), "")

        def message(desc: descriptor_pb2.DescriptorProto, name: str, path: tuple[int, ...]) -> None:
            self.messages[name] = desc
            self.comments[name] = locations.get(path, "")
            for i, field in enumerate(desc.field):
                self.comments[f"{name}.{field.name}"] = locations.get((*path, 2, i), "")
            for i, nested in enumerate(desc.nested_type):
                message(nested, f"{name}.{nested.name}", (*path, 3, i))
            for i, nested_enum in enumerate(desc.enum_type):
                enum(nested_enum, f"{name}.{nested_enum.name}", (*path, 4, i))

        for i, msg in enumerate(file.message_type):
            message(msg, f"{prefix}.{msg.name}", (4, i))
        for i, top_enum in enumerate(file.enum_type):
            enum(top_enum, f"{prefix}.{top_enum.name}", (5, i))
        for i, service in enumerate(file.service):
            self.comments[f"{prefix}.{service.name}"] = locations.get((6, i), "")
            for j, method in enumerate(service.method):
                self.comments[f"{prefix}.{service.name}.{method.name}"] = locations.get((6, i, 2, j), "")

    # Schemas.

    def ref(self, type_name: str) -> Schema:
        """The schema of a message or enum type: inline for well-known types, else a ``$ref``."""
        if type_name in _WKT:
            return copy.deepcopy(_WKT[type_name])
        name = type_name.lstrip(".")
        if name not in self.schemas:
            self.schemas[name] = {}  # A placeholder first, so recursive types terminate.
            if type_name in self.enums:
                self.schemas[name] = self._enum_schema(type_name)
            else:
                self.schemas[name] = self.message_schema(type_name)
        return {"$ref": REF + name}

    def _enum_schema(self, type_name: str) -> Schema:
        desc = self.enums[type_name]
        lines = [self.comments[type_name], ""] if self.comments[type_name] else []
        for value in desc.value:
            text = " ".join(self.comments[f"{type_name}.{value.name}"].split())
            lines.append(f"- `{value.name}`: {text}" if text else f"- `{value.name}`")
        return {"type": "string", "enum": [v.name for v in desc.value], "description": "\n".join(lines)}

    def message_schema(self, type_name: str, exclude: frozenset[str] = frozenset()) -> Schema:
        """An object schema of a message, leaving out the fields named in ``exclude``."""
        properties: Schema = {}
        required: list[str] = []
        for field in self.messages[type_name].field:
            if field.name in exclude:
                continue
            json_name = field.json_name or _camel(field.name)
            properties[json_name] = self.field_schema(type_name, field)
            if field_behavior_pb2.REQUIRED in _behaviors(field):
                required.append(json_name)
        schema: Schema = {"type": "object", "properties": properties}
        if self.comments.get(type_name):
            schema["description"] = self.comments[type_name]
        if required:
            schema["required"] = required
        return schema

    def field_schema(
        self, parent: str, field: descriptor_pb2.FieldDescriptorProto, annotate: bool = True
    ) -> Schema:
        """A field's schema, with its description, readOnly/writeOnly and deprecation if ``annotate``."""
        entry = self.messages.get(field.type_name)
        if entry is not None and entry.options.map_entry:
            schema: Schema = {"type": "object", "additionalProperties": self._value_schema(entry.field[1])}
        elif field.label == FDP.LABEL_REPEATED:
            schema = {"type": "array", "items": self._value_schema(field)}
        else:
            schema = self._value_schema(field)
        if not annotate:
            return schema
        extras: Schema = {}
        if self.comments.get(f"{parent}.{field.name}"):
            extras["description"] = self.comments[f"{parent}.{field.name}"]
        behaviors = _behaviors(field)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            extras["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            extras["writeOnly"] = True
        if field.options.deprecated:
            extras["deprecated"] = True
        return _with(schema, extras)

    def _value_schema(self, field: descriptor_pb2.FieldDescriptorProto) -> Schema:
        if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_GROUP, FDP.TYPE_ENUM):
            return self.ref(field.type_name)
        return copy.deepcopy(_SCALARS[field.type])

    # Operations.

    def resolve(self, type_name: str, dotted: str) -> tuple[str, descriptor_pb2.FieldDescriptorProto]:
        """The field a dotted request path names, with the full name of the message holding it."""
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            fields = {f.name: f for f in self.messages[type_name].field}
            if part not in fields:
                raise ValueError(f"{type_name.lstrip('.')} has no field {dotted!r}")
            if i == len(parts) - 1:
                return type_name, fields[part]
            type_name = fields[part].type_name
        raise ValueError(f"empty field path in {type_name}")

    def _path(self, template: str, request: str) -> tuple[str, list[Schema], set[str]]:
        """Turns an http rule template into an OpenAPI path, its parameters and the bound fields."""
        params: list[Schema] = []
        bound: set[str] = set()
        taken: set[str] = set()

        def unique(name: str) -> str:
            candidate, n = name, 1
            while candidate in taken:
                n += 1
                candidate = f"{name}{n}"
            taken.add(candidate)
            return candidate

        def variable(match: re.Match[str]) -> str:
            field_path, pattern = match.group(1).strip(), match.group(2)
            parent, field = self.resolve(request, field_path)
            bound.add(field_path)
            comment = self.comments.get(f"{parent}.{field.name}", "")
            if pattern is None:
                name = unique(field_path)
                params.append(self._path_param(name, self.field_schema(parent, field, False), comment))
                return "{" + name + "}"
            segments = pattern.split("/")
            names = []
            for i, segment in enumerate(segments):
                if segment in ("*", "**"):
                    before = segments[i - 1] if i and segments[i - 1] not in ("*", "**") else field.name
                    names.append(unique(_singular(before)))
                    segments[i] = "{" + names[-1] + "}"
            resource = "/".join(segments)
            for name in names:
                text = f"Part of the request field `{field_path}`, which is `{resource}`."
                params.append(self._path_param(name, {"type": "string"}, text))
            return resource

        return _VARIABLE.sub(variable, template), params, bound

    @staticmethod
    def _path_param(name: str, schema: Schema, description: str) -> Schema:
        param: Schema = {"name": name, "in": "path", "required": True, "schema": schema}
        if description:
            param["description"] = description
        return param

    def query_params(
        self,
        type_name: str,
        skip: set[str],
        prefix: tuple[str, str] = ("", ""),
        seen: frozenset[str] = frozenset(),
    ) -> list[Schema]:
        """Query parameters for every field not in ``skip``, flattening singular message fields."""
        params: list[Schema] = []
        for field in self.messages[type_name].field:
            proto_path = prefix[0] + field.name
            json_path = prefix[1] + (field.json_name or _camel(field.name))
            if proto_path in skip:
                continue
            repeated = field.label == FDP.LABEL_REPEATED
            if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_GROUP) and field.type_name not in _WKT_SCALARS:
                if repeated or field.type_name in _WKT or field.type_name in seen | {type_name}:
                    continue  # Maps, lists of messages, JSON-only types and cycles have no query form.
                nested_prefix = (proto_path + ".", json_path + ".")
                params += self.query_params(field.type_name, skip, nested_prefix, seen | {type_name})
                continue
            param: Schema = {
                "name": json_path,
                "in": "query",
                "schema": self.field_schema(type_name, field, False),
            }
            if self.comments.get(f"{type_name}.{field.name}"):
                param["description"] = self.comments[f"{type_name}.{field.name}"]
            if field.options.deprecated:
                param["deprecated"] = True
            if not prefix[0] and field_behavior_pb2.REQUIRED in _behaviors(field):
                param["required"] = True
            params.append(param)
        return params

    def _content(self, type_name: str, schema: Callable[[], Schema]) -> Schema:
        """A media type map: raw bytes for google.api.HttpBody, else JSON of ``schema()``."""
        if type_name == HTTP_BODY:
            return {"application/octet-stream": {"schema": dict(BINARY)}}
        return {"application/json": {"schema": schema()}}

    def operation(
        self, service: str, method: descriptor_pb2.MethodDescriptorProto, rule: http_pb2.HttpRule, op_id: str
    ) -> tuple[str, str, Schema]:
        """One (path, HTTP method, Operation Object) of an http rule."""
        kind = rule.WhichOneof("pattern")
        if kind is None:
            raise ValueError(f"{op_id}: http rule without a pattern")
        verb, template = (
            (rule.custom.kind.lower(), rule.custom.path) if kind == "custom" else (kind, getattr(rule, kind))
        )
        if verb not in OPENAPI_METHODS:
            raise ValueError(f"{op_id}: HTTP method {verb!r} has no OpenAPI form")
        request, response = method.input_type, method.output_type
        path, params, bound = self._path(template, request)
        comment = self.comments.get(f"{service}.{method.name}", "")
        op: Schema = {"operationId": op_id, "tags": [service.rsplit(".", 1)[-1]]}
        if comment:
            op["summary"], op["description"] = _summary(comment), comment
        if method.options.deprecated:
            op["deprecated"] = True
        if rule.body == "*":
            top = frozenset(b for b in bound if "." not in b)
            whole = partial(self.message_schema, request, top) if top else partial(self.ref, request)
            op["requestBody"] = {"required": True, "content": self._content(request, whole)}
        elif rule.body:
            parent, field = self.resolve(request, rule.body)
            content = self._content(field.type_name, partial(self.field_schema, parent, field, False))
            body: Schema = {"required": True, "content": content}
            if self.comments.get(f"{parent}.{field.name}"):
                body["description"] = self.comments[f"{parent}.{field.name}"]
            op["requestBody"] = body
        if rule.body != "*":
            params += self.query_params(request, bound | {rule.body})
        if params:
            op["parameters"] = params
        if rule.response_body:
            parent, field = self.resolve(response, rule.response_body)
            ok = self._content(field.type_name, partial(self.field_schema, parent, field, False))
        else:
            ok = self._content(response, partial(self.ref, response))
        text = "OK."
        if method.server_streaming:
            text += " Server streaming: the body is a stream of JSON messages, each one as below."
        if method.client_streaming:
            text += " Client streaming: the request body is a stream of JSON messages."
        op["responses"] = {
            "200": {"description": text, "content": ok},
            "default": {
                "description": "An error.",
                "content": {"application/json": {"schema": {"$ref": REF + STATUS}}},
            },
        }
        return path, verb, op

    def add_file(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        """Adds the operations of every http rule of every service in a file."""
        prefix = f".{file.package}" if file.package else ""
        for service in file.service:
            full = f"{prefix}.{service.name}"
            tag: Schema = {"name": service.name}
            if self.comments.get(full):
                tag["description"] = self.comments[full]
            self.tags.append(tag)
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                rules = [rule, *rule.additional_bindings]
                for i, binding in enumerate(rules):
                    op_id = f"{service.name}_{method.name}" + (f"_{i + 1}" if i else "")
                    path, verb, op = self.operation(full, method, binding, op_id)
                    item = self.paths.setdefault(path, {})
                    if verb in item:
                        raise ValueError(
                            f"{op_id}: {verb.upper()} {path} is already {item[verb]['operationId']}"
                        )
                    item[verb] = op

    def document(self) -> Schema:
        """The whole OpenAPI document."""
        return {
            "openapi": OPENAPI_VERSION,
            "info": {
                "title": "Seedline API",
                "version": "v1",
                "description": "The REST/JSON face of the Seedline gRPC API (generated from proto/).",
            },
            "servers": [{"url": "https://localhost:8443"}],
            "security": [{"mutualTLS": []}],
            "tags": sorted(self.tags, key=lambda tag: str(tag["name"])),
            "paths": self.paths,
            "components": {
                "schemas": self.schemas,
                "securitySchemes": {
                    "mutualTLS": {"type": "mutualTLS", "description": "A client certificate."}
                },
            },
        }


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    """Runs the plugin on a request: one ``openapi.json`` for the ``seedline.*`` files in it."""
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    generator = _Generator(list(request.proto_file))
    wanted = set(request.file_to_generate)
    try:
        for file in request.proto_file:
            if file.name in wanted and file.package.startswith(PACKAGE_PREFIX):
                generator.add_file(file)
    except ValueError as err:
        response.error = str(err)
        return response
    text = json.dumps(generator.document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    response.file.add(name=OUTPUT, content=text)
    return response


def main() -> int:
    """Reads a CodeGeneratorRequest on stdin and writes the CodeGeneratorResponse to stdout."""
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
