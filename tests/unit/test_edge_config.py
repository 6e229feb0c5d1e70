"""The Envoy edge configuration: rendering, `envoy --mode validate`, and the process wrapper."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from seedline_server.certs import DevPki, write_dev_pki
from seedline_server.config import Settings
from seedline_server.edge import (
    DEFAULT_TEMPLATE,
    REGULATORY_METHODS,
    EdgeRateLimits,
    EnvoyError,
    EnvoyProcess,
    RouteClass,
    envoy_binary,
    render_envoy_config,
    services_in_descriptor,
    streaming_methods,
    validate_envoy_config,
)

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR = ROOT / "gen" / "seedline.protoset"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return write_dev_pki(tmp_path / "pki")


def _render(pki: DevPki, **overrides: Any) -> str:
    args: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "listen_port": _free_port(),
        "admin_port": _free_port(),
        "upstream_host": "127.0.0.1",
        "upstream_port": _free_port(),
        "descriptor": DESCRIPTOR,
        "pki": pki,
        "services": services_in_descriptor(DESCRIPTOR),
    }
    args.update(overrides)
    return render_envoy_config(**args)


def _filter(hcm: dict[str, Any], name: str) -> dict[str, Any]:
    config: dict[str, Any] = next(f for f in hcm["http_filters"] if f["name"] == name)["typed_config"]
    return config


def test_template_is_found_via_the_repo_layout() -> None:
    assert DEFAULT_TEMPLATE == ROOT / "envoy" / "envoy.yaml.tmpl"
    assert DEFAULT_TEMPLATE.is_file()


def test_services_in_descriptor_finds_the_license_service() -> None:
    services = services_in_descriptor(DESCRIPTOR)
    assert "seedline.license.v1.LicenseService" in services
    assert all(s.startswith("seedline.") for s in services)
    assert services == sorted(set(services))
    assert services_in_descriptor(DESCRIPTOR, package_prefix="google.") == []


def test_envoy_binary_exists() -> None:
    binary = Path(envoy_binary())
    assert binary.is_file()
    assert os.access(binary, os.X_OK)


def test_rendered_config_passes_envoy_validate(pki: DevPki) -> None:
    output = validate_envoy_config(_render(pki))
    assert "OK" in output
    assert "deprecated" not in output.lower()


def test_rendered_config_has_the_edge_policies(pki: DevPki) -> None:
    text = _render(pki, listen_port=8443, admin_port=9901, upstream_port=50051)
    assert "${" not in text
    config = yaml.safe_load(text)

    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8443}
    (chain,) = listener["filter_chains"]

    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    common = tls["common_tls_context"]
    assert common["alpn_protocols"] == ["h2", "http/1.1"]
    assert common["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2"
    assert common["tls_certificates"] == [
        {
            "certificate_chain": {"filename": str(pki.server_cert.resolve())},
            "private_key": {"filename": str(pki.server_key.resolve())},
        }
    ]
    validation = common["validation_context"]
    assert validation["trusted_ca"] == {"filename": str(pki.ca_cert.resolve())}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://seedline.dev/partner/"}}
    ]

    (hcm_filter,) = chain["filters"]
    hcm = hcm_filter["typed_config"]
    assert hcm["forward_client_cert_details"] == "SANITIZE_SET"
    assert hcm["set_current_client_cert_details"] == {"subject": True, "uri": True, "dns": True}
    assert hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]

    transcoder = _filter(hcm, "envoy.filters.http.grpc_json_transcoder")
    assert transcoder["proto_descriptor"] == str(DESCRIPTOR.resolve())
    assert transcoder["services"] == services_in_descriptor(DESCRIPTOR)
    assert "seedline.license.v1.LicenseService" in transcoder["services"]
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["case_insensitive_enum_parsing"] is True
    assert transcoder["print_options"] == {
        "add_whitespace": False,
        "always_print_primitive_fields": True,
        "always_print_enums_as_ints": False,
        "preserve_proto_field_names": False,
    }
    assert transcoder["request_validation_options"] == {
        "reject_unknown_method": True,
        "reject_unknown_query_parameters": True,
    }
    names = [f["name"] for f in hcm["http_filters"]]
    # The header scrubber must come before the transcoder so that it sees its responses; the rate
    # limiter after it, so that it sees gRPC paths (and after Lua, which names the partner).
    assert names == [
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]

    (cluster,) = config["static_resources"]["clusters"]
    assert cluster["name"] == "seedline_grpc"
    assert cluster["connect_timeout"] == "2s"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 50051}
    assert cluster["health_checks"][0]["grpc_health_check"] == {}
    assert cluster["health_checks"][0]["interval"] == "5s"


def test_streaming_methods_get_routes_without_timeout(pki: DevPki) -> None:
    services = services_in_descriptor(DESCRIPTOR)
    streaming = streaming_methods(DESCRIPTOR, services)
    assert streaming_methods(DESCRIPTOR, ["seedline.license.v1.LicenseService"]) == []
    config = yaml.safe_load(_render(pki, services=services))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    *stream_routes, default, refuse = vhost["routes"]
    assert [r["match"]["path"] for r in stream_routes] == streaming
    assert all(r["route"] == {"cluster": "seedline_grpc", "timeout": "0s"} for r in stream_routes)
    assert default["match"] == {"prefix": "/seedline."}
    # No max_stream_duration: it would switch the 30s timeout off for transcoded REST calls.
    assert default["route"] == {"cluster": "seedline_grpc", "timeout": "30s"}
    # Anything else (the server's health and reflection services) is not forwarded.
    assert refuse["match"] == {"prefix": "/"}
    assert refuse["direct_response"]["status"] == 404


def test_config_without_streaming_methods_is_valid(pki: DevPki) -> None:
    text = _render(pki, services=["seedline.license.v1.LicenseService"])
    routes = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"] for r in routes] == [{"prefix": "/seedline."}, {"prefix": "/"}]
    validate_envoy_config(text)


def test_local_replies_map_http_status_to_google_rpc_codes(pki: DevPki) -> None:
    config = yaml.safe_load(_render(pki))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    local_reply = hcm["local_reply_config"]
    by_status: dict[int, tuple[int, str]] = {}
    for mapper in local_reply["mappers"]:
        status_filter = mapper["filter"].get("status_code_filter")
        if status_filter is None:  # the gRPC passthrough mapper
            continue
        body = mapper["body_format_override"]
        assert body["content_type"] == "application/json"
        status = status_filter["comparison"]["value"]["default_value"]
        detail, *more = body["json_format"]["details"]
        assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
        assert detail["domain"] == "seedline.dev"
        if status == 429:
            # The Lua filter fills in the delay once Envoy has added x-ratelimit-reset.
            assert more == [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": "%RESP(X-RATELIMIT-RESET)%s",
                }
            ]
            assert "retry-after" in body["json_format"]["message"]
        else:
            assert more == []
            assert body["json_format"]["message"] == "%LOCAL_REPLY_BODY%"
        by_status[status] = (body["json_format"]["code"], detail["reason"])
    assert by_status == {
        400: (3, "VALIDATION_FAILED"),
        401: (16, "CREDENTIALS_MISSING"),
        403: (7, "PERMISSION_DENIED"),
        404: (5, "RESOURCE_NOT_FOUND"),
        429: (8, "RATE_LIMITED"),
        503: (14, "DEPENDENCY_UNAVAILABLE"),
        504: (4, "DEADLINE_EXCEEDED"),
    }
    assert local_reply["body_format"]["json_format"]["code"] == 2


def test_paths_with_special_characters_are_quoted(tmp_path: Path) -> None:
    pki = write_dev_pki(tmp_path / "dir with spaces: and #hash")
    text = _render(pki)
    tls = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
    assert tls["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"] == {
        "filename": str(pki.ca_cert.resolve())
    }
    validate_envoy_config(text)


def test_explicit_template_and_unknown_placeholders(tmp_path: Path, pki: DevPki) -> None:
    template = tmp_path / "t.tmpl"
    template.write_text("services: ${SERVICES}\nport: ${LISTEN_PORT}\n")
    text = _render(pki, template=template, listen_port=1234, services=["seedline.a.v1.A", "seedline.b.v1.B"])
    assert yaml.safe_load(text) == {"services": ["seedline.a.v1.A", "seedline.b.v1.B"], "port": 1234}

    template.write_text("x: ${NOT_A_PLACEHOLDER}\n")
    with pytest.raises(KeyError, match="NOT_A_PLACEHOLDER"):
        _render(pki, template=template)


def test_render_refuses_bad_arguments(pki: DevPki) -> None:
    with pytest.raises(ValueError, match="services"):
        _render(pki, services=[])
    with pytest.raises(ValueError, match="port"):
        _render(pki, listen_port=70000)


def test_validate_reports_envoys_error() -> None:
    with pytest.raises(EnvoyError, match="rejected"):
        validate_envoy_config("static_resources: {clusters: [{name: x, no_such_field: 1}]}\n")


def test_envoy_process_starts_ready_and_stops(tmp_path: Path, pki: DevPki) -> None:
    admin_port = _free_port()
    envoy = EnvoyProcess(admin_port)
    with envoy:
        envoy.start(_render(pki, admin_port=admin_port), tmp_path / "run")
        assert envoy.running
        assert envoy.pid is not None
        assert envoy.config_path == tmp_path / "run" / "envoy.yaml"
        # A second Envoy on the same admin port must not be mistaken for a ready one.
        clash = EnvoyProcess(admin_port)
        with pytest.raises(EnvoyError, match="exited during start-up"):
            clash.start(_render(pki, admin_port=admin_port), tmp_path / "clash", timeout=10)
        assert not clash.running
    assert not envoy.running
    assert envoy.pid is None
    envoy.stop()  # idempotent


def test_envoy_process_failure_quotes_envoys_log(tmp_path: Path) -> None:
    envoy = EnvoyProcess(_free_port())
    with pytest.raises(EnvoyError, match="no_such_field"):
        envoy.start("static_resources: {clusters: [{name: x, no_such_field: 1}]}\n", tmp_path)
    assert not envoy.running


# ---------------------------------------------------------------------------------------------
# Rate limits


def _hcm(text: str) -> dict[str, Any]:
    hcm: dict[str, Any] = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"
    ][0]["typed_config"]
    return hcm


def _buckets(limiter: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for descriptor in limiter["descriptors"]:
        (cls,), partner = (
            [e["value"] for e in descriptor["entries"] if e["key"] == "route_class"],
            [e for e in descriptor["entries"] if e["key"] == "partner"],
        )
        assert partner == [{"key": "partner", "value": ""}]  # wildcard: a bucket per partner
        out[cls] = descriptor["token_bucket"]
    return out


def test_default_rate_limits_are_public_100_per_minute_burst_20_and_regulatory_10_per_5_minutes(
    pki: DevPki,
) -> None:
    limits = EdgeRateLimits.defaults()
    assert limits == EdgeRateLimits.from_settings(Settings())
    assert (limits.default.max_tokens, limits.default.per_minute) == (20, 100)
    (regulatory,) = limits.special
    assert regulatory.methods == REGULATORY_METHODS
    assert (regulatory.max_tokens, regulatory.per_minute * 5) == (10, 10)

    limiter = _filter(_hcm(_render(pki)), "envoy.filters.http.local_ratelimit")
    assert _buckets(limiter) == {
        "public": {"max_tokens": 20, "tokens_per_fill": 5, "fill_interval": "3s"},
        "regulatory": {"max_tokens": 10, "tokens_per_fill": 1, "fill_interval": "30s"},
    }
    assert limiter["filter_enabled"]["default_value"] == {"numerator": 100, "denominator": "HUNDRED"}
    assert limiter["filter_enforced"]["default_value"] == {"numerator": 100, "denominator": "HUNDRED"}
    assert limiter["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"
    assert limiter["rate_limited_as_resource_exhausted"] is True
    assert limiter["always_consume_default_token_bucket"] is False
    assert limiter["max_dynamic_descriptors"] == 10000
    assert "token_bucket" not in limiter  # no shared bucket: only per-partner ones


def test_rate_limit_actions_pick_the_class_by_grpc_path_and_the_partner_from_metadata(pki: DevPki) -> None:
    limiter = _filter(_hcm(_render(pki)), "envoy.filters.http.local_ratelimit")
    partner = {
        "metadata": {
            "descriptor_key": "partner",
            "metadata_key": {"key": "seedline.edge", "path": [{"key": "partner"}]},
            "source": "DYNAMIC",
        }
    }
    *special, default = limiter["rate_limits"]
    assert [r["actions"][0]["header_value_match"]["headers"] for r in special] == [
        [{"name": ":path", "string_match": {"exact": path}}] for path in REGULATORY_METHODS
    ]
    assert {r["actions"][0]["header_value_match"]["descriptor_value"] for r in special} == {"regulatory"}
    match = default["actions"][0]["header_value_match"]
    assert match["descriptor_value"] == "public"
    # Public is every path that is not regulatory: all inverted matchers must hold.
    assert match["headers"] == [
        {"name": ":path", "string_match": {"exact": path}, "invert_match": True}
        for path in REGULATORY_METHODS
    ]
    assert all(r["actions"][1] == partner for r in limiter["rate_limits"])
    # The Lua filter is what puts the partner there.
    lua = _filter(_hcm(_render(pki)), "envoy.filters.http.lua")["default_source_code"]["inline_string"]
    assert "envoy_on_request" in lua
    assert 'dynamicMetadata():set("seedline.edge", "partner", uri)' in lua
    assert 'local partner_prefix = "spiffe://seedline.dev/partner/"' in lua


def test_regulatory_methods_are_the_integration_sync_and_test_bindings() -> None:
    from google.api import annotations_pb2
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(DESCRIPTOR.read_bytes())
    bindings = {}
    for file in files.file:
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                bindings[f"/{file.package}.{service.name}/{method.name}"] = rule.post
    assert {bindings[path] for path in REGULATORY_METHODS} == {
        "/v1/{name=licenses/*/integrations/*}:sync",
        "/v1/{name=licenses/*/integrations/*}:test",
    }


def test_rate_limits_come_from_settings_and_validate(pki: DevPki) -> None:
    settings = Settings(
        edge_rate_public_burst=4,
        edge_rate_public_tokens_per_fill=2,
        edge_rate_public_fill_seconds=0.5,
        edge_rate_regulatory_burst=1,
        edge_rate_regulatory_tokens_per_fill=1,
        edge_rate_regulatory_fill_seconds=7.25,
        edge_rate_max_partners=50,
    )
    text = _render(pki, rate_limits=EdgeRateLimits.from_settings(settings))
    limiter = _filter(_hcm(text), "envoy.filters.http.local_ratelimit")
    assert _buckets(limiter) == {
        "public": {"max_tokens": 4, "tokens_per_fill": 2, "fill_interval": "0.5s"},
        "regulatory": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "7.25s"},
    }
    assert limiter["max_dynamic_descriptors"] == 50
    validate_envoy_config(text)


def test_rate_limits_without_special_classes_validate(pki: DevPki) -> None:
    only_public = EdgeRateLimits(
        default=RouteClass("public", max_tokens=5, tokens_per_fill=1, fill_interval=1)
    )
    text = _render(pki, rate_limits=only_public)
    limiter = _filter(_hcm(text), "envoy.filters.http.local_ratelimit")
    (rate_limit,) = limiter["rate_limits"]
    assert rate_limit["actions"][0]["header_value_match"]["headers"] == [
        {"name": ":path", "present_match": True}
    ]
    assert list(_buckets(limiter)) == ["public"]
    validate_envoy_config(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0, "tokens_per_fill": 1, "fill_interval": 1},
        {"max_tokens": 1, "tokens_per_fill": 0, "fill_interval": 1},
        {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": 0.01},
    ],
)
def test_route_class_refuses_bad_buckets(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="rate limit class"):
        RouteClass("x", **kwargs)
