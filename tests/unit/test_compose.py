"""docker-compose.yml and deploy/: files exist, names and ports agree, Envoy accepts its config.

There is no Docker engine in CI: these checks are what can be verified without one. Envoy's
configuration is checked with the real envoy binary (`envoy --mode validate`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from seedline_server.certs import write_dev_pki
from seedline_server.config import Settings
from seedline_server.edge import UPSTREAM_CLUSTER, EnvoyError, validate_envoy_config
from seedline_server.telemetry.mqtt_bridge import MqttBridgeSettings
from tests.support import tools

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENVOY_CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
SEEDLINE_SERVICES = ("migrate", "server", "worker", "mqtt-bridge")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def envoy() -> dict[str, Any]:
    data = yaml.safe_load(ENVOY_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping (merged from the anchors)"
    return {str(k): str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of local paths: container path -> repository path."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith("./"):
            mounts[target] = source
    return mounts


def _mounted_from(service: dict[str, Any], container_path: str) -> Path:
    """The local file or directory a container path comes from (itself or a parent mounted)."""
    path = Path(container_path)
    for target, source in _mounts(service).items():
        if path == Path(target) or Path(target) in path.parents:
            return ROOT / source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not under any bind mount of the service")


def _setting_names() -> set[str]:
    names: set[str] = set()
    for model, prefix in ((Settings, "SEEDLINE_"), (MqttBridgeSettings, "SEEDLINE_MQTT_")):
        for name, field in model.model_fields.items():
            names.add(prefix + name.upper())
            alias = field.validation_alias
            choices = getattr(alias, "choices", [alias] if isinstance(alias, str) else [])
            names.update(str(c).upper() for c in choices)
    return names


def _cluster_address(envoy: dict[str, Any]) -> tuple[str, int]:
    (cluster,) = [c for c in envoy["static_resources"]["clusters"] if c["name"] == UPSTREAM_CLUSTER]
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    return str(address["address"]), int(address["port_value"])


def _walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _filenames(envoy: dict[str, Any]) -> list[str]:
    found = [n["filename"] for n in _walk(envoy) if isinstance(n, dict) and "filename" in n]
    found += [n["proto_descriptor"] for n in _walk(envoy) if isinstance(n, dict) and "proto_descriptor" in n]
    return found


# ---------------------------------------------------------------------------------------------


def test_every_local_file_the_stack_references_exists(services: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            context = ROOT / build["context"]
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            checked += 1
        for target, source in _mounts(service).items():
            assert (ROOT / source).exists(), f"{name}: {source} (mounted at {target}) does not exist"
            checked += 1
        for env_file in service.get("env_file", []):
            path = env_file["path"] if isinstance(env_file, dict) else env_file
            if not isinstance(env_file, dict) or env_file.get("required", True):
                assert (ROOT / path).is_file(), f"{name}: env_file {path} does not exist"
    assert checked >= 8
    # The optional .env has a committed template; generated certificates are never committed.
    assert ENV_EXAMPLE.is_file()
    assert (ROOT / "deploy" / "certs" / ".gitignore").read_text().splitlines()[-2:] == ["*", "!.gitignore"]


def test_the_server_runs_two_replicas_behind_envoy(services: dict[str, dict[str, Any]]) -> None:
    assert services["server"]["deploy"]["replicas"] == 2
    # Replicas cannot share a published host port, and the edge listener must stay private.
    assert "ports" not in services["server"]
    assert services["server"]["command"] == ["seedline", "serve"]
    assert services["worker"]["command"] == ["seedline", "worker"]
    assert services["mqtt-bridge"]["command"] == ["seedline", "mqtt-bridge"]
    # The embedded worker is off because the worker service runs it.
    run_worker = _env(services["server"])["SEEDLINE_RUN_WORKER"]
    assert Settings.model_validate({"run_worker": run_worker}).run_worker is False


def test_envoy_cluster_points_at_the_servers_edge_listener(
    services: dict[str, dict[str, Any]], envoy: dict[str, Any]
) -> None:
    host, port = _cluster_address(envoy)
    assert host == "server"
    assert host in services
    env = _env(services["server"])
    assert port == int(env["SEEDLINE_EDGE_PORT"])
    assert env["SEEDLINE_EDGE_HOST"] == "0.0.0.0"  # reachable from the envoy container
    assert str(port) in [str(p) for p in services["server"]["expose"]]
    # STRICT_DNS resolves every replica's address behind the service name.
    (cluster,) = [c for c in envoy["static_resources"]["clusters"] if c["name"] == UPSTREAM_CLUSTER]
    assert cluster["type"] == "STRICT_DNS"
    assert "grpc_health_check" in cluster["health_checks"][0]


def test_envoy_listener_port_is_published(services: dict[str, dict[str, Any]], envoy: dict[str, Any]) -> None:
    (listener,) = envoy["static_resources"]["listeners"]
    address = listener["address"]["socket_address"]
    assert address["address"] == "0.0.0.0"
    published = [str(p).split(":")[-1] for p in services["envoy"]["ports"]]
    assert str(address["port_value"]) in published


def test_envoy_finds_its_files_where_compose_mounts_them(
    services: dict[str, dict[str, Any]], envoy: dict[str, Any], tmp_path: Path
) -> None:
    service = services["envoy"]
    command = service["command"]
    config_in_container = command[command.index("-c") + 1]
    assert _mounted_from(service, config_in_container) == ENVOY_CONFIG
    files = _filenames(envoy)
    assert len(files) == 4  # server cert, server key, CA, descriptor
    local = {Path(f).name: _mounted_from(service, f) for f in files}
    assert local["seedline.protoset"] == ROOT / "gen" / "seedline.protoset"
    assert local["seedline.protoset"].is_file()
    # The certificates are the names `seedline certs --dir deploy/certs` writes.
    written = {p.name for p in write_dev_pki(tmp_path / "certs").directory.iterdir()}
    for name in ("ca.pem", "server.pem", "server-key.pem"):
        assert name in written
        assert local[name] == ROOT / "deploy" / "certs" / name


def test_server_healthcheck_probes_the_grpc_port(services: dict[str, dict[str, Any]]) -> None:
    server = services["server"]
    env = _env(server)
    probe = " ".join(server["healthcheck"]["test"])
    assert re.findall(r"127\.0\.0\.1:(\d+)", probe) == [env["SEEDLINE_GRPC_PORT"]]
    assert env["SEEDLINE_GRPC_HOST"] == "0.0.0.0"


def test_connection_urls_name_services_and_their_ports(services: dict[str, dict[str, Any]]) -> None:
    postgres_env = _env(services["postgres"])
    for name in SEEDLINE_SERVICES:
        url = urlsplit(_env(services[name])["DATABASE_URL"])
        assert url.hostname == "postgres", name
        assert url.port == 5432, name
        assert url.username == postgres_env["POSTGRES_USER"]
        assert url.path == "/" + postgres_env["POSTGRES_DB"]
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        if name != "migrate":
            assert depends["migrate"]["condition"] == "service_completed_successfully", name
    mqtt = urlsplit(_env(services["mqtt-bridge"])["SEEDLINE_MQTT_URL"])
    assert mqtt.hostname == "mosquitto"
    assert mqtt.hostname in services
    conf = _mounted_from(services["mosquitto"], "/mosquitto/config/mosquitto.conf").read_text()
    assert f"listener {mqtt.port}" in conf.splitlines()
    (persistence,) = [ln.split()[1] for ln in conf.splitlines() if ln.startswith("persistence_location ")]
    data_targets = [str(v).split(":")[1] for v in services["mosquitto"]["volumes"]]
    assert persistence.rstrip("/") in data_targets


def test_otel_endpoint_is_the_collectors_otlp_http_receiver(services: dict[str, dict[str, Any]]) -> None:
    collector = services["otel-collector"]
    config_arg = next(a for a in collector["command"] if a.startswith("--config="))
    config = yaml.safe_load(_mounted_from(collector, config_arg.removeprefix("--config=")).read_text())
    # Seedline's exporter speaks OTLP over HTTP/protobuf (observability/setup.py), not gRPC.
    http_port = int(config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rsplit(":", 1)[1])
    for name in SEEDLINE_SERVICES:
        endpoint = urlsplit(_env(services[name])["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert endpoint.hostname == "otel-collector"
        assert endpoint.port == http_port
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is not defined under {kind}"


def test_every_seedline_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    known = _setting_names()
    named = {key for service in services.values() for key in _env(service) if key.startswith("SEEDLINE_")}
    example = re.findall(r"^#?\s*(SEEDLINE_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    assert len(named) >= 10
    assert len(example) >= 4
    unknown = sorted((named | set(example)) - known)
    assert unknown == [], f"not settings of Settings or MqttBridgeSettings: {unknown}"


def test_literal_setting_values_are_valid(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SEEDLINE_SERVICES:
        for key in list(os.environ):
            if key.startswith("SEEDLINE_") or key == "DATABASE_URL":
                monkeypatch.delenv(key)
        for key, value in _env(services[name]).items():
            if key.startswith("SEEDLINE_") and "${" not in value:
                monkeypatch.setenv(key, value)
        settings, mqtt = Settings(), MqttBridgeSettings()
        if name == "server":
            assert (settings.grpc_port, settings.edge_port, settings.run_worker) == (50051, 50052, False)
        if name == "mqtt-bridge":
            assert (mqtt.url, mqtt.client_id) == ("mqtt://mosquitto:1883", "bridge-0")


def test_committed_envoy_config_is_what_the_generator_renders() -> None:
    assert ENVOY_CONFIG.read_text(encoding="utf-8") == tools.load("gen_compose_envoy").render(), (
        "deploy/envoy/envoy.yaml is stale: run .venv/bin/python tools/gen_compose_envoy.py and commit it"
    )


def test_envoy_accepts_the_compose_config(tmp_path: Path) -> None:
    tool = tools.load("gen_compose_envoy")
    pki = write_dev_pki(tmp_path / "certs")
    # The same rendering with the paths of this machine instead of the container's.
    local = tool.render(certs_dir=pki.directory, descriptor_in_config=tool.DESCRIPTOR)
    assert local.replace(str(pki.directory), str(tool.CERTS_DIR)).replace(
        str(tool.DESCRIPTOR), str(tool.DESCRIPTOR_IN_CONTAINER)
    ) == ENVOY_CONFIG.read_text(encoding="utf-8")
    assert "OK" in validate_envoy_config(local)
    # Validation really opens the files: the container paths do not exist here.
    with pytest.raises(EnvoyError, match="etc/seedline"):
        validate_envoy_config(ENVOY_CONFIG.read_text(encoding="utf-8"))
