"""Start the real parts as processes on free loopback ports: the server and Envoy.

Used by the e2e tests and the benchmark. Nothing here mocks a component: the server is
``seedline serve`` in a child process, Envoy is the real binary with the project's template.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seedline_server import edge
from seedline_server.certs import DevPki, write_dev_pki
from tests.support import auth

REPO = Path(__file__).resolve().parents[2]
DESCRIPTOR = REPO / "gen" / "seedline.protoset"
BIN = Path(sys.executable).parent

# Tests share one partner identity and send bursts no real partner would: limits out of the way
# unless a test configures its own (tests/e2e/test_rate_limits.py).
UNLIMITED_EDGE = edge.EdgeRateLimits(
    default=edge.RouteClass("public", max_tokens=1_000_000, tokens_per_fill=1_000_000, fill_interval=1.0),
    special=(
        edge.RouteClass(
            "regulatory",
            max_tokens=1_000_000,
            tokens_per_fill=1_000_000,
            fill_interval=1.0,
            methods=edge.REGULATORY_METHODS,
        ),
    ),
)
UNLIMITED_GRPC_ENV = {"SEEDLINE_GRPC_RATE_BURST": "1000000", "SEEDLINE_GRPC_RATE_PER_MINUTE": "60000000"}


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> int:
    """Signal ``proc`` unless it has ended, SIGKILL it after ``timeout`` s; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_healthy(target: str, timeout: float = 30.0, service: str = "") -> None:
    """Block until the gRPC health check of ``service`` at ``target`` answers SERVING."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{target} did not become healthy: {last}")


@dataclass
class ServerProcess:
    """``seedline serve`` as a child process."""

    database_url: str
    data_dir: Path
    grpc_port: int = field(default_factory=free_port)
    edge_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    # A CA (and a 127.0.0.1/localhost server certificate) the server trusts for outbound calls:
    # tests serve their remotes (webhook receivers, fakes) with ``integration_pki.server_cert``.
    integration_pki: DevPki | None = None
    # Extra arguments of `seedline serve` (e.g. ["--workers", "2"]).
    args: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        """host:port of the direct listener."""
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        """Start and wait for SERVING."""
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            SEEDLINE_DATA_DIR=str(self.data_dir),
            SEEDLINE_GRPC_PORT=str(self.grpc_port),
            SEEDLINE_EDGE_PORT=str(self.edge_port),
            SEEDLINE_LOG_FORMAT="json",
            SEEDLINE_LOG_LEVEL="warning",
            **UNLIMITED_GRPC_ENV,
        )
        env.update(auth.SERVER_ENV)  # trust the tests' JWT secret; the e2e partner is an admin
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.integration_pki = write_dev_pki(self.data_dir / "integration-pki")
        env["SEEDLINE_INTEGRATION_CA_FILE"] = str(self.integration_pki.ca_cert)
        env.update(self.extra_env)
        log = (self.data_dir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "seedline"), "serve", *self.args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_healthy(self.target)
        except TimeoutError:
            self.stop()
            raise TimeoutError((self.data_dir / "server.log").read_text()[-4000:]) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal the server and wait; returns its exit code."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout, sig)
        self.proc = None
        return code


@dataclass
class EdgeProcess:
    """Envoy with the project's config in front of a :class:`ServerProcess`."""

    server: ServerProcess
    workdir: Path
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    pki: DevPki | None = None
    envoy: edge.EnvoyProcess | None = None
    rate_limits: edge.EdgeRateLimits = UNLIMITED_EDGE

    @property
    def base_url(self) -> str:
        """https URL of the partner listener."""
        return f"https://localhost:{self.port}"

    def start(self) -> None:
        """Write dev certificates, render the config and start Envoy."""
        self.pki = write_dev_pki(self.workdir / "certs")
        config = edge.render_envoy_config(
            listen_host="127.0.0.1",
            listen_port=self.port,
            admin_port=self.admin_port,
            upstream_host="127.0.0.1",
            upstream_port=self.server.edge_port,
            descriptor=DESCRIPTOR,
            pki=self.pki,
            services=edge.services_in_descriptor(DESCRIPTOR),
            rate_limits=self.rate_limits,
        )
        self.envoy = edge.EnvoyProcess(admin_port=self.admin_port)
        self.envoy.start(config, self.workdir / "envoy")

    def stop(self) -> None:
        """Stop Envoy."""
        if self.envoy is not None:
            self.envoy.stop()
