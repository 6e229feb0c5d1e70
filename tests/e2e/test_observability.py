"""Traces and metrics end to end: `seedline serve` exporting OTLP/HTTP to a collector in the test,
its Prometheus endpoint scraped over HTTP, Envoy in front, and a webhook receiver process.

- a gRPC call with ``traceparent`` and ``x-request-id`` → a SERVER span in the caller's trace with
  the method, request id, principal and status, and SQL spans under it;
- a REST call through Envoy with ``traceparent`` → the server's span has that trace id;
- an error call → ``seedline_rpc_errors_total`` by method and code, and the latency histogram;
- an outbox delivery → the webhook receiver got a ``traceparent`` naming the delivery's span;
- the outbox gauges show the integration's circuit breaker.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families
from seedline.integration.v1 import integration_pb2 as ig
from seedline.integration.v1 import integration_pb2_grpc
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc

from tests.support import auth
from tests.support.fakes import FakeProcess
from tests.support.stack import EdgeProcess, ServerProcess, free_port

pytestmark = pytest.mark.e2e
T = TypeVar("T")
SECRET = "e2e-observability-webhook-secret-" + "z" * 20


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver on a loopback port (protobuf bodies, as the exporter sends)."""

    spans: list[tuple[str, trace_pb2.Span]] = field(default_factory=list)
    metric_posts: int = 0
    port: int = 0

    def __enter__(self) -> Collector:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    for rs in request.resource_spans:
                        service = next(
                            (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"),
                            "",
                        )
                        for ss in rs.scope_spans:
                            collector.spans.extend((service, s) for s in ss.spans)
                elif self.path == "/v1/metrics":
                    collector.metric_posts += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def find(self, predicate: Callable[[trace_pb2.Span], bool]) -> list[trace_pb2.Span]:
        return [s for _service, s in list(self.spans) if predicate(s)]


def eventually(probe: Callable[[], T | None], what: str, within: float = 30.0) -> T:
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def attributes(span: trace_pb2.Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out


@pytest.fixture(scope="module")
def obs_db(pg_url: str) -> str:
    """A database of its own: this server's worker must deliver this module's events, no others."""
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from seedline_server.store import db

    url = make_url(pg_url)
    name = f"{url.database}_obs"
    own = url.set(database=name).render_as_string(hide_password=False)

    async def create() -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                if not await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}):
                    await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await engine.dispose()
        await db.migrate(own)

    asyncio.run(create())
    return own


@dataclass
class Observed:
    edge: EdgeProcess
    collector: Collector
    metrics_port: int

    @property
    def server(self) -> ServerProcess:
        return self.edge.server

    def scrape(self) -> dict[str, list[Any]]:
        """Prometheus families by name → their samples."""
        answer = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10)
        answer.raise_for_status()
        return {f.name: f.samples for f in text_string_to_metric_families(answer.text)}


@pytest.fixture(scope="module")
def observed(obs_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    work = Path(tmp_path_factory.mktemp("observed"))
    metrics_port = free_port()
    with Collector() as collector:
        server = ServerProcess(
            database_url=obs_db,
            data_dir=work / "server",
            extra_env={
                "SEEDLINE_OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                "SEEDLINE_METRICS_PORT": str(metrics_port),
                "SEEDLINE_OUTBOX_GAUGE_INTERVAL_SECONDS": "0.5",
                "OTEL_BSP_SCHEDULE_DELAY": "100",  # export spans within 0.1 s
            },
        )
        edge: EdgeProcess | None = None
        try:
            server.start()
            edge = EdgeProcess(server=server, workdir=work)
            edge.start()
            yield Observed(edge, collector, metrics_port)
        finally:
            if edge is not None:
                edge.stop()
            server.stop()


@pytest.fixture(scope="module")
def channel(observed: Observed) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(observed.server.target) as raw:
        yield auth.with_bearer(raw, auth.mint())


def _traceparent() -> tuple[str, str]:
    trace_id = uuid.uuid4().hex
    return trace_id, f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"


def test_a_grpc_call_is_a_server_span_in_the_callers_trace(observed: Observed, channel: grpc.Channel) -> None:
    trace_id, traceparent = _traceparent()
    stub = license_pb2_grpc.LicenseServiceStub(channel)
    stub.CreateCompany(
        lic.CreateCompanyRequest(company=lic.Company(display_name="Traced Farms")),
        metadata=(("traceparent", traceparent), ("x-request-id", "obs-req-1")),
    )
    method = "seedline.license.v1.LicenseService/CreateCompany"
    (span,) = eventually(
        lambda: observed.collector.find(lambda s: s.trace_id.hex() == trace_id and s.name == method),
        "the CreateCompany span",
    )
    assert span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert span.parent_span_id.hex() == traceparent.split("-")[2]
    attrs = attributes(span)
    assert attrs["rpc.system"] == "grpc"
    assert attrs["rpc.method"] == "CreateCompany"
    assert attrs["rpc.service"] == "seedline.license.v1.LicenseService"
    assert attrs["seedline.request_id"] == "obs-req-1"
    assert attrs["enduser.id"] == f"users/{auth.ADMIN}"
    assert attrs["rpc.grpc.status_code"] == "OK"
    # The handler's SQL statements are CLIENT spans of the same trace, under the call's span.
    sql = eventually(
        lambda: observed.collector.find(
            lambda s: s.trace_id.hex() == trace_id and s.kind == trace_pb2.Span.SPAN_KIND_CLIENT
        ),
        "SQL spans",
    )
    assert any(
        "INSERT" in attributes(s).get("db.statement", attributes(s).get("db.query.text", "")) for s in sql
    )
    assert (observed.collector.spans[0][0]) == "seedline-server"


def test_a_rest_call_through_envoy_continues_the_traceparent(observed: Observed) -> None:
    assert observed.edge.pki is not None
    ctx = ssl.create_default_context(cafile=str(observed.edge.pki.ca_cert))
    ctx.load_cert_chain(str(observed.edge.pki.partner_cert), str(observed.edge.pki.partner_key))
    trace_id, traceparent = _traceparent()
    with httpx.Client(base_url=observed.edge.base_url, verify=ctx, timeout=10) as rest:
        answer = rest.get("/v1/companies", headers={"traceparent": traceparent})
    assert answer.status_code == 200, answer.text
    method = "seedline.license.v1.LicenseService/ListCompanies"
    (span,) = eventually(
        lambda: observed.collector.find(lambda s: s.trace_id.hex() == trace_id and s.name == method),
        "the ListCompanies span of the REST call",
    )
    attrs = attributes(span)
    assert attrs["enduser.id"] == auth.PARTNER
    assert attrs["seedline.request_id"]  # Envoy's x-request-id
    assert attrs["rpc.grpc.status_code"] == "OK"


def test_errors_are_counted_by_method_and_code_and_the_histogram_is_scraped(
    observed: Observed, channel: grpc.Channel
) -> None:
    stub = license_pb2_grpc.LicenseServiceStub(channel)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetCompany(lic.GetCompanyRequest(name="companies/01JD0000000000000000000000"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(observed.server.target) as anonymous:
        with pytest.raises(grpc.RpcError) as refused:
            license_pb2_grpc.LicenseServiceStub(anonymous).GetCompany(
                lic.GetCompanyRequest(name="companies/01JD0000000000000000000000")
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    stub.ListCompanies(lic.ListCompaniesRequest())
    families = observed.scrape()
    get = "seedline.license.v1.LicenseService/GetCompany"
    errors = {
        (s.labels["rpc_method"], s.labels["rpc_grpc_status_code"]): s.value
        for s in families["seedline_rpc_errors"]
        if s.name == "seedline_rpc_errors_total"
    }
    assert errors[(get, "NOT_FOUND")] == 2
    assert errors[(get, "UNAUTHENTICATED")] == 1
    auth_failures = [
        s for s in families["seedline_auth_failures"] if s.name == "seedline_auth_failures_total"
    ]
    assert sum(s.value for s in auth_failures) >= 1
    histogram = families["rpc_server_call_duration_seconds"]
    listed = "seedline.license.v1.LicenseService/ListCompanies"
    buckets = [
        s
        for s in histogram
        if s.name == "rpc_server_call_duration_seconds_bucket"
        and s.labels["rpc_method"] == listed
        and s.labels["rpc_grpc_status_code"] == "OK"
    ]
    assert {s.labels["le"] for s in buckets} >= {"0.005", "0.1", "1.0", "+Inf"}
    inf = next(s.value for s in buckets if s.labels["le"] == "+Inf")
    assert inf >= 1
    count = next(
        s.value
        for s in histogram
        if s.name == "rpc_server_call_duration_seconds_count" and s.labels["rpc_method"] == listed
    )
    assert count == inf


def test_an_outbox_delivery_sends_its_traceparent_and_the_gauges_show_the_integration(
    observed: Observed, channel: grpc.Channel, tmp_path: Path
) -> None:
    pki = observed.server.integration_pki
    assert pki is not None
    receiver = FakeProcess(
        "webhook_receiver",
        pki.server_cert,
        pki.server_key,
        pki.ca_cert,
        config={"secret": SECRET},
        workdir=tmp_path,
    ).start()
    try:
        licenses = license_pb2_grpc.LicenseServiceStub(channel)
        company = licenses.CreateCompany(lic.CreateCompanyRequest(company=lic.Company(display_name="Hooked")))
        license_ = licenses.CreateLicense(
            lic.CreateLicenseRequest(
                license=lic.License(
                    company=company.name,
                    license_number=f"CO-OBS-{uuid.uuid4().hex[:10].upper()}",
                    display_name="Hooked 1",
                    type=lic.LICENSE_TYPE_GROWER,
                    jurisdiction="US-CO",
                    active=True,
                )
            )
        ).name
        integrations = integration_pb2_grpc.IntegrationServiceStub(channel)
        hook = integrations.CreateIntegration(
            ig.CreateIntegrationRequest(
                parent=license_,
                integration=ig.Integration(
                    kind=ig.INTEGRATION_KIND_WEBHOOK,
                    display_name="Traced hooks",
                    enabled=True,
                    webhook=ig.WebhookConfig(
                        url=f"{receiver.base_url}/hooks/obs", events=[ig.WEBHOOK_EVENT_SYNC_COMPLETED]
                    ),
                    credentials=ig.Credentials(webhook=ig.WebhookCredentials(signing_secret=SECRET)),
                ),
            )
        )
        # A push sync run ends with a sync.completed event: one outbox delivery to the receiver.
        integrations.SyncIntegration(
            ig.SyncIntegrationRequest(
                name=hook.name,
                scopes=[ig.SYNC_SCOPE_TRANSFERS],
                mode=ig.SYNC_MODE_INCREMENTAL,
                direction=ig.SYNC_DIRECTION_PUSH,
            )
        )
        events = eventually(
            lambda: [e for e in receiver.state()["events"] if e["type"] == "sync.completed"], "the delivery"
        )
        traceparent = events[0]["headers"]["traceparent"]
        _version, trace_id, span_id, _flags = traceparent.split("-")
        (span,) = eventually(
            lambda: observed.collector.find(
                lambda s: s.trace_id.hex() == trace_id and s.span_id.hex() == span_id
            ),
            "the delivery span",
        )
        assert span.name == "outbox.deliver sync.completed"
        attrs = attributes(span)
        integration_id = hook.name.rsplit("/", 1)[-1]
        assert attrs["seedline.integration.id"] == integration_id
        assert attrs["seedline.delivery.outcome"] == "delivered"
        assert attrs["seedline.delivery.attempt"] == 1

        def breaker() -> list[Any]:
            families = observed.scrape()
            return [
                s
                for s in families.get("seedline_integration_breaker_state", [])
                if s.labels.get("seedline_integration_id") == integration_id
            ]

        (state,) = eventually(breaker, "the breaker gauge of the integration")
        assert state.value == 0  # CLOSED
        delivered = [
            s
            for s in observed.scrape()["seedline_outbox_deliveries"]
            if s.name == "seedline_outbox_deliveries_total"
            and s.labels["seedline_integration_id"] == integration_id
        ]
        assert [(s.labels["outcome"], s.value) for s in delivered] == [("delivered", 1.0)]
    finally:
        receiver.stop()
