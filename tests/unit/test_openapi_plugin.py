"""tools/protoc_gen_openapi.py on a small proto compiled on the fly with grpc_tools' protoc."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc_tools
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SCRIPT = ROOT / "tools" / "protoc-gen-openapi"
WKT = Path(grpc_tools.__file__).parent / "_proto"
TEST_FILE = "seedline/plugintest/v1/plugintest.proto"
PKG = "seedline.plugintest.v1"
REF = "#/components/schemas/"

TEST_PROTO = """
syntax = "proto3";

package seedline.plugintest.v1;

import "google/api/annotations.proto";
import "google/api/field_behavior.proto";
import "google/api/httpbody.proto";
import "google/protobuf/timestamp.proto";

// Plants, for the plugin test.
service PlantService {
  // Returns one plant.
  //
  // Also reachable without the license.
  rpc GetPlant(GetPlantRequest) returns (Plant) {
    option (google.api.http) = {
      get: "/v1/{name=licenses/*/plants/*}"
      additional_bindings {get: "/v1/{name=plants/*}"}
    };
  }
  // Harvests a plant. The plant must be flowering.
  rpc HarvestPlant(HarvestPlantRequest) returns (Plant) {
    option (google.api.http) = {
      post: "/v1/{name=licenses/*/plants/*}:harvest"
      body: "*"
    };
  }
  // Lists a license's plants.
  rpc ListPlants(ListPlantsRequest) returns (ListPlantsResponse) {
    option (google.api.http) = {get: "/v1/{parent=licenses/*}/plants"};
  }
  // Records a lab result.
  rpc CreateLabResult(CreateLabResultRequest) returns (LabResult) {
    option (google.api.http) = {
      post: "/v1/{parent=licenses/*}/labResults"
      body: "lab_result"
    };
  }
  // Returns one lab result.
  rpc GetLabResult(GetLabResultRequest) returns (LabResult) {
    option (google.api.http) = {get: "/v1/{name=licenses/*/labResults/*}"};
  }
  // Streams changes to plants.
  rpc WatchPlants(ListPlantsRequest) returns (stream Plant) {
    option (google.api.http) = {get: "/v1/{parent=licenses/*}/plants:watch"};
  }
  // Exports a plant report as a file.
  rpc ExportReport(ExportReportRequest) returns (google.api.HttpBody) {
    option (google.api.http) = {get: "/v1/reports/{report_id}"};
  }
  // Has no REST binding.
  rpc Internal(GetPlantRequest) returns (Plant);
}

// The growth phase of a plant.
enum PlantPhase {
  // Not set.
  PLANT_PHASE_UNSPECIFIED = 0;
  // Growing leaves.
  PLANT_PHASE_VEGETATIVE = 1;
  // Growing flowers.
  PLANT_PHASE_FLOWERING = 2;
}

// An amount of material.
message Quantity {
  // Decimal string.
  string value = 1;
  // The unit, e.g. grams.
  string unit = 2;
}

// A plant.
message Plant {
  // Where a plant came from.
  message Origin {
    // The source lot.
    string lot = 1;
  }
  // Resource name, `licenses/{license}/plants/{plant}`.
  string name = 1;
  // The current phase.
  PlantPhase phase = 2;
  // How many times the plant was counted.
  int64 count = 3;
  // When the plant was created.
  google.protobuf.Timestamp create_time = 4 [(google.api.field_behavior) = OUTPUT_ONLY];
  // Current wet weight.
  Quantity weight = 5 [(google.api.field_behavior) = REQUIRED];
  // Free-form labels.
  map<string, string> labels = 6;
  // Tags.
  repeated string tags = 7;
  // The mother plant, if cloned.
  Plant mother = 8;
  // A secret only ever sent.
  string secret = 9 [(google.api.field_behavior) = INPUT_ONLY];
  // Where it came from.
  Origin origin = 10;
}

// Request for GetPlant.
message GetPlantRequest {
  // `licenses/{license}/plants/{plant}`.
  string name = 1 [(google.api.field_behavior) = REQUIRED];
}

// Request for HarvestPlant.
message HarvestPlantRequest {
  // The plant.
  string name = 1 [(google.api.field_behavior) = REQUIRED];
  // Waste produced.
  Quantity waste = 2 [(google.api.field_behavior) = REQUIRED];
  // Idempotency key.
  string request_id = 3;
}

// A self-referencing filter.
message Filter {
  // Text to match.
  string text = 1;
  // A narrower filter.
  Filter child = 2;
}

// Request for ListPlants.
message ListPlantsRequest {
  // The license.
  string parent = 1 [(google.api.field_behavior) = REQUIRED];
  // Page size.
  int32 page_size = 2;
  // Page token.
  string page_token = 3;
  // Only plants in this phase.
  PlantPhase phase = 4;
  // Only plants with this much waste.
  Quantity waste = 5;
  // A filter.
  Filter filter = 6;
  // Only these plant ids.
  repeated string ids = 7;
  // Not expressible in a query.
  repeated Quantity weights = 8;
  // Not expressible in a query either.
  map<string, string> labels = 9;
  // Only plants created after this.
  google.protobuf.Timestamp after = 10;
}

// Response for ListPlants.
message ListPlantsResponse {
  // The plants.
  repeated Plant plants = 1;
}

// A lab result.
message LabResult {
  // Resource name.
  string name = 1;
  // Total THC.
  double thc = 2;
}

// Request for CreateLabResult.
message CreateLabResultRequest {
  // The license.
  string parent = 1;
  // The result to record.
  LabResult lab_result = 2;
  // Idempotency key.
  string request_id = 3;
}

// Request for GetLabResult.
message GetLabResultRequest {
  // The lab result.
  string name = 1;
}

// Request for ExportReport.
message ExportReportRequest {
  // Which report.
  string report_id = 1;
}
"""


def _load_plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protoc_gen_openapi", ROOT / "tools/protoc_gen_openapi.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plugin = _load_plugin()


def _protoc(src: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{src}", f"-I{ROOT / 'third_party'}", f"-I{WKT}"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([*cmd, *args, TEST_FILE], check=True, capture_output=True, env=env)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("proto")
    (root / TEST_FILE).parent.mkdir(parents=True)
    (root / TEST_FILE).write_text(TEST_PROTO)
    return root


@pytest.fixture(scope="module")
def request_(src: Path) -> plugin_pb2.CodeGeneratorRequest:
    out = src / "set.binpb"
    _protoc(src, f"--descriptor_set_out={out}", "--include_imports", "--include_source_info")
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return plugin_pb2.CodeGeneratorRequest(file_to_generate=[TEST_FILE], proto_file=files)


def _run(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin.generate(request)
    assert isinstance(response, plugin_pb2.CodeGeneratorResponse)
    return response


@pytest.fixture(scope="module")
def doc(request_: plugin_pb2.CodeGeneratorRequest) -> dict[str, Any]:
    response = _run(request_)
    assert not response.error
    assert [f.name for f in response.file] == ["openapi.json"]
    assert response.supported_features == plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    result: dict[str, Any] = json.loads(response.file[0].content)
    return result


def _params(op: dict[str, Any], where: str) -> list[dict[str, Any]]:
    return [p for p in op.get("parameters", []) if p["in"] == where]


def test_header_info_servers_and_mutual_tls(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "Seedline API"
    assert doc["info"]["version"] == "v1"
    assert doc["servers"] == [{"url": "https://localhost:8443"}]
    assert doc["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"
    assert doc["security"] == [{"mutualTLS": []}]
    assert doc["tags"] == [{"name": "PlantService", "description": "Plants, for the plugin test."}]


def test_one_operation_per_http_rule_with_operation_ids(doc: dict[str, Any]) -> None:
    ops = {
        (verb, path): op["operationId"] for path, item in doc["paths"].items() for verb, op in item.items()
    }
    assert ops == {
        ("get", "/v1/licenses/{license}/plants/{plant}"): "PlantService_GetPlant",
        ("get", "/v1/plants/{plant}"): "PlantService_GetPlant_2",
        ("post", "/v1/licenses/{license}/plants/{plant}:harvest"): "PlantService_HarvestPlant",
        ("get", "/v1/licenses/{license}/plants"): "PlantService_ListPlants",
        ("post", "/v1/licenses/{license}/labResults"): "PlantService_CreateLabResult",
        ("get", "/v1/licenses/{license}/labResults/{labResult}"): "PlantService_GetLabResult",
        ("get", "/v1/licenses/{license}/plants:watch"): "PlantService_WatchPlants",
        ("get", "/v1/reports/{report_id}"): "PlantService_ExportReport",
    }
    for item in doc["paths"].values():
        for op in item.values():
            assert op["tags"] == ["PlantService"]


def test_resource_pattern_becomes_one_path_parameter_per_segment(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/licenses/{license}/plants/{plant}"]["get"]
    params = _params(op, "path")
    assert [p["name"] for p in params] == ["license", "plant"]
    for p in params:
        assert p["required"] is True
        assert p["schema"] == {"type": "string"}
        assert "`name`" in p["description"]
        assert "`licenses/{license}/plants/{plant}`" in p["description"]
    assert _params(op, "query") == []
    lab = doc["paths"]["/v1/licenses/{license}/labResults/{labResult}"]["get"]
    assert [p["name"] for p in _params(lab, "path")] == ["license", "labResult"]


def test_plain_variable_stays_and_takes_the_field_schema(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/reports/{report_id}"]["get"]
    assert _params(op, "path") == [
        {
            "name": "report_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "Which report.",
        }
    ]


def test_body_star_is_request_without_path_fields(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/licenses/{license}/plants/{plant}:harvest"]["post"]
    assert _params(op, "query") == []
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"waste", "requestId"}
    assert schema["required"] == ["waste"]
    assert schema["properties"]["waste"]["allOf"] == [{"$ref": f"{REF}{PKG}.Quantity"}]
    assert schema["properties"]["waste"]["description"] == "Waste produced."


def test_query_parameters_flatten_messages_with_dotted_names(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/licenses/{license}/plants"]["get"]
    assert "requestBody" not in op
    query = {p["name"]: p for p in _params(op, "query")}
    # parent is bound by the path; repeated messages and maps have no query form; the
    # self-referencing Filter.child is cut; the Timestamp is a scalar.
    assert list(query) == [
        "pageSize",
        "pageToken",
        "phase",
        "waste.value",
        "waste.unit",
        "filter.text",
        "ids",
        "after",
    ]
    assert query["pageSize"]["schema"] == {"type": "integer", "format": "int32"}
    assert query["phase"]["schema"] == {"$ref": f"{REF}{PKG}.PlantPhase"}
    assert query["waste.unit"]["description"] == "The unit, e.g. grams."
    assert query["ids"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert query["after"]["schema"] == {"type": "string", "format": "date-time"}


def test_body_field_is_that_fields_schema_and_the_rest_are_query(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/licenses/{license}/labResults"]["post"]
    body = op["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": f"{REF}{PKG}.LabResult"}
    assert body["description"] == "The result to record."
    assert [p["name"] for p in _params(op, "query")] == ["requestId"]


def test_message_schema_follows_proto3_json_mapping(doc: dict[str, Any]) -> None:
    plant = doc["components"]["schemas"][f"{PKG}.Plant"]
    props = plant["properties"]
    assert plant["description"] == "A plant."
    assert plant["required"] == ["weight"]
    assert props["count"] == {
        "type": "string",
        "format": "int64",
        "description": "How many times the plant was counted.",
    }
    assert props["createTime"] == {
        "type": "string",
        "format": "date-time",
        "readOnly": True,
        "description": "When the plant was created.",
    }
    assert props["secret"]["writeOnly"] is True
    assert "readOnly" not in props["name"]
    assert props["labels"]["additionalProperties"] == {"type": "string"}
    assert props["tags"]["items"] == {"type": "string"}
    assert props["mother"]["allOf"] == [{"$ref": f"{REF}{PKG}.Plant"}]
    assert props["origin"]["allOf"] == [{"$ref": f"{REF}{PKG}.Plant.Origin"}]
    origin = doc["components"]["schemas"][f"{PKG}.Plant.Origin"]
    assert origin["properties"]["lot"]["description"] == "The source lot."
    assert doc["components"]["schemas"][f"{PKG}.LabResult"]["properties"]["thc"]["type"] == "number"


def test_enum_is_a_string_of_value_names(doc: dict[str, Any]) -> None:
    phase = doc["components"]["schemas"][f"{PKG}.PlantPhase"]
    assert phase["type"] == "string"
    assert phase["enum"] == ["PLANT_PHASE_UNSPECIFIED", "PLANT_PHASE_VEGETATIVE", "PLANT_PHASE_FLOWERING"]
    assert phase["description"].startswith("The growth phase of a plant.")
    assert "- `PLANT_PHASE_FLOWERING`: Growing flowers." in phase["description"]


def test_only_reachable_schemas_are_emitted(doc: dict[str, Any]) -> None:
    names = set(doc["components"]["schemas"])
    assert f"{PKG}.GetPlantRequest" not in names  # only its path field is used
    assert f"{PKG}.HarvestPlantRequest" not in names  # inlined without its path field
    assert "google.protobuf.Timestamp" not in names
    assert "google.rpc.Status" in names
    assert all(name.startswith((PKG, "google.rpc.")) for name in names)


def test_summary_and_description_come_from_comments(doc: dict[str, Any]) -> None:
    get = doc["paths"]["/v1/licenses/{license}/plants/{plant}"]["get"]
    assert get["summary"] == "Returns one plant."
    assert get["description"] == "Returns one plant.\n\nAlso reachable without the license."
    harvest = doc["paths"]["/v1/licenses/{license}/plants/{plant}:harvest"]["post"]
    assert harvest["summary"] == "Harvests a plant."
    assert harvest["description"] == "Harvests a plant. The plant must be flowering."


def test_responses_ok_and_status(doc: dict[str, Any]) -> None:
    get = doc["paths"]["/v1/licenses/{license}/plants/{plant}"]["get"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": f"{REF}{PKG}.Plant"}
    assert get["responses"]["default"]["content"]["application/json"]["schema"] == {
        "$ref": f"{REF}google.rpc.Status"
    }
    status = doc["components"]["schemas"]["google.rpc.Status"]
    assert status["properties"]["code"]["type"] == "integer"
    assert status["properties"]["message"]["type"] == "string"
    assert "@type" in status["properties"]["details"]["items"]["properties"]
    watch = doc["paths"]["/v1/licenses/{license}/plants:watch"]["get"]
    assert "stream of JSON messages" in watch["responses"]["200"]["description"]
    assert "stream" not in get["responses"]["200"]["description"]
    export = doc["paths"]["/v1/reports/{report_id}"]["get"]
    assert export["responses"]["200"]["content"] == {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
    }


def test_output_is_deterministic(request_: plugin_pb2.CodeGeneratorRequest) -> None:
    first = _run(request_).file[0].content
    second = _run(request_).file[0].content
    assert first == second
    # Canonical form: sorted keys, two-space indent, one trailing newline.
    assert first == json.dumps(json.loads(first), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_unknown_path_field_is_an_error(request_: plugin_pb2.CodeGeneratorRequest) -> None:
    broken = plugin_pb2.CodeGeneratorRequest()
    broken.CopyFrom(request_)
    file = next(f for f in broken.proto_file if f.name == TEST_FILE)
    method = file.service[0].method[0]
    method.options.Extensions[annotations_pb2.http].get = "/v1/{nope=licenses/*}"
    response = _run(broken)
    assert "nope" in response.error
    assert not response.file


def test_files_outside_seedline_packages_are_ignored(request_: plugin_pb2.CodeGeneratorRequest) -> None:
    other = plugin_pb2.CodeGeneratorRequest()
    other.CopyFrom(request_)
    other.file_to_generate[:] = ["google/api/httpbody.proto"]
    doc = json.loads(_run(other).file[0].content)
    assert doc["paths"] == {}
    assert list(doc["components"]["schemas"]) == ["google.rpc.Status"]


def test_protoc_runs_the_plugin_script(src: Path, doc: dict[str, Any]) -> None:
    out = src / "out"
    out.mkdir()
    _protoc(src, f"--plugin=protoc-gen-openapi={PLUGIN_SCRIPT}", f"--openapi_out={out}")
    assert json.loads((out / "openapi.json").read_text()) == doc
