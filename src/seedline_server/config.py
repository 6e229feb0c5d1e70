"""Settings from the environment (pydantic-settings).

Every setting is ``SEEDLINE_<NAME>``, except the database URL, which is also read from the
conventional ``DATABASE_URL``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Server configuration."""

    model_config = SettingsConfigDict(env_prefix="SEEDLINE_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "SEEDLINE_DATABASE_URL"),
        description="PostgreSQL URL; when unset an embedded PostgreSQL is started under data_dir.",
    )
    data_dir: Path = Field(
        default=Path(".seedline"), description="Local state: embedded database, dev certificates."
    )
    grpc_host: str = Field(default="127.0.0.1", description="Address of the direct gRPC listener.")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="Port of the direct gRPC listener.")
    edge_host: str = Field(
        default="127.0.0.1",
        description="Address of the listener only Envoy reaches; it trusts x-forwarded-client-cert. "
        "Keep it private.",
    )
    edge_port: int = Field(default=50052, ge=0, le=65535, description="Port of the Envoy-only listener.")
    rest_port: int = Field(
        default=8443, ge=0, le=65535, description="Envoy's partner (mTLS REST) port, for `seedline dev`."
    )
    envoy_admin_port: int = Field(
        default=9901, ge=0, le=65535, description="Envoy admin port, for `seedline dev`."
    )
    log_format: Literal["console", "json"] = Field(
        default="console", description="console for people, json for machines."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Minimum log level."
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="How long in-flight calls may finish on stop."
    )
    db_pool_size: int = Field(default=10, ge=1, le=200, description="Connections per server process.")
    health_interval_seconds: float = Field(default=5.0, gt=0, description="Database health probe period.")
    jwt_secret: SecretStr | None = Field(
        default=None, description="Shared secret for HS256 bearer JWTs (unset: HS256 tokens are refused)."
    )
    jwt_jwks_path: Path | None = Field(
        default=None, description="JWKS file with the public keys of RS256/ES256 bearer JWTs (by `kid`)."
    )
    jwt_issuer: str = Field(default="seedline", description="Required `iss` claim of bearer JWTs.")
    jwt_audience: str = Field(default="seedline", description="Required `aud` claim of bearer JWTs.")
    partner_grants: dict[str, dict[str, list[str]]] = Field(
        default_factory=dict,
        description="Roles of partner certificates per license id or *, as JSON: "
        '{"acme": {"<license id>": ["partner"]}}.',
    )
    signature_max_age_seconds: int = Field(
        default=300, ge=10, le=3600, description="How fresh an e-signature's re-proving JWT must be (`iat`)."
    )
    lab_panels_path: Path | None = Field(
        default=None,
        description="JSON file of lab testing panels (required metrics and limits per jurisdiction and "
        "product type); unset: the panels shipped in seedline_server/store/reference/lab-panels.json.",
    )
    coa_fetch_timeout_seconds: float = Field(
        default=15.0, gt=0, le=120, description="Timeout for fetching a certificate of analysis from a URL."
    )
    coa_fetch_allow_private: bool = Field(
        default=False,
        description="Let certificate URLs resolve to private/loopback addresses (tests, on-premises "
        "document stores). Off: such URLs are refused, so callers cannot make the server probe its network.",
    )
    secret_keys: SecretStr | None = Field(
        default=None,
        description="Keys that encrypt secrets at rest (AES-256-GCM): 'kid:base64key' entries separated by "
        'commas, or a JSON object {"kid": "base64key"}; each key is 32 random bytes. Keep retired keys '
        "listed until every secret is resealed. Required outside `seedline dev`.",
    )
    secret_key_id: str | None = Field(
        default=None,
        description="Id of the key new secrets are sealed with; optional when only one key is configured.",
    )

    # Rate limits (docs/api.md "Rate limits"). Envoy, per partner certificate identity and route
    # class: a bucket of `burst` tokens gaining `tokens_per_fill` every `fill_seconds`.
    edge_rate_public_burst: int = Field(default=20, ge=1, description="Envoy: public routes' burst.")
    edge_rate_public_tokens_per_fill: int = Field(
        default=5, ge=1, description="Envoy: public routes' tokens per fill (5 per 3 s = 100/min)."
    )
    edge_rate_public_fill_seconds: float = Field(
        default=3.0, ge=0.05, description="Envoy: public routes' fill interval."
    )
    edge_rate_regulatory_burst: int = Field(
        default=10, ge=1, description="Envoy: regulatory-reporting routes' (integration sync/test) burst."
    )
    edge_rate_regulatory_tokens_per_fill: int = Field(
        default=1, ge=1, description="Envoy: regulatory routes' tokens per fill (1 per 30 s = 10 per 5 min)."
    )
    edge_rate_regulatory_fill_seconds: float = Field(
        default=30.0, ge=0.05, description="Envoy: regulatory routes' fill interval."
    )
    edge_rate_max_partners: int = Field(
        default=10000, ge=1, description="Envoy: per-partner buckets kept (least recently used evicted)."
    )
    grpc_rate_burst: int = Field(
        default=20, ge=1, description="Direct gRPC listener: requests a principal may send at once."
    )
    grpc_rate_per_minute: float = Field(
        default=100.0, gt=0, description="Direct gRPC listener: sustained requests per minute per principal."
    )
    grpc_rate_max_principals: int = Field(
        default=100_000, ge=1, description="Direct gRPC listener: buckets kept (least recently used evicted)."
    )

    # Integrations (docs/integrations.md).
    run_worker: bool = Field(
        default=True,
        description="Run the integrations worker (outbox deliveries, sync runs, schedules) inside `seedline "
        "serve`. Turn off when dedicated `seedline worker` processes do it.",
    )
    integration_ca_file: Path | None = Field(
        default=None,
        description="Extra CA certificates (PEM) trusted for outbound calls to remotes, besides the system "
        "store (an on-premises LIMS with a private CA; the local fakes in development).",
    )
    integration_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Deadline of one outbound call to a remote."
    )
    outbox_concurrency: int = Field(
        default=32, ge=1, le=1000, description="Deliveries one worker process sends at once."
    )
    outbox_max_attempts: int = Field(
        default=8, ge=1, le=100, description="Attempts before a delivery becomes a dead letter."
    )
    outbox_base_delay_seconds: float = Field(
        default=1.0, gt=0, description="First retry delay; doubles per attempt, with jitter."
    )
    outbox_max_delay_seconds: float = Field(default=300.0, gt=0, description="Longest retry delay.")
    outbox_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a claimed delivery stays with its worker; a dead worker's claims are taken "
        "over after it (and checked at the remote before resending).",
    )
    breaker_threshold: int = Field(
        default=5, ge=1, description="Consecutive remote failures that open an integration's circuit breaker."
    )
    breaker_cooldown_seconds: float = Field(
        default=30.0, gt=0, description="How long an open breaker waits before its half-open probe."
    )
    metrc_get_rate_per_facility: float = Field(
        default=50.0, gt=0, description="METRC: GET requests per second per facility (all workers together)."
    )
    metrc_rate_per_vendor_key: float = Field(
        default=150.0, gt=0, description="METRC: requests per second per vendor key (all workers together)."
    )
    metrc_concurrency_per_facility: int = Field(
        default=10, ge=1, description="METRC: requests in flight per facility (all workers together)."
    )
    schedule_enabled: bool = Field(
        default=True,
        description="Start scheduled pulls: plants every 4 h, inventory daily, a full reconciliation weekly.",
    )

    reuse_port: bool = Field(
        default=False,
        description="Bind the gRPC listeners with SO_REUSEPORT so several server processes share the ports "
        "(set by `seedline serve --workers N`).",
    )
    telemetry_writers: int = Field(
        default=2,
        ge=1,
        le=32,
        description="Telemetry: writer tasks committing readings (one transaction each).",
    )
    telemetry_max_pending: int = Field(
        default=200_000, ge=1000, description="Telemetry: readings queued for commit before submitters wait."
    )
    telemetry_stream_window: int = Field(
        default=4, ge=1, le=64, description="Telemetry: batches of one ingest stream being committed at once."
    )
    telemetry_retention_days: int = Field(
        default=90,
        ge=1,
        description="Telemetry: days of raw readings and roll-ups kept (older partitions dropped).",
    )
    telemetry_partitions_ahead_days: int = Field(
        default=3, ge=1, le=60, description="Telemetry: daily partitions created ahead of today."
    )
    telemetry_partition_interval_seconds: float = Field(
        default=3600.0, gt=0, description="Telemetry: how often partitions are created ahead and dropped."
    )
    telemetry_sensor_cache_seconds: float = Field(
        default=5.0, ge=0, description="Telemetry: how long a sensor looked up for ingest is reused."
    )
    # Observability (docs/observability.md).
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP base URL (e.g. http://collector:4318) for traces and metrics; unset: the "
        "standard OTEL_EXPORTER_OTLP_ENDPOINT, and if that is unset too, no OTLP export.",
    )
    otel_service_name: str | None = Field(
        default=None,
        description="service.name of exported traces and metrics; unset: the standard OTEL_SERVICE_NAME, "
        "else seedline-server, seedline-worker or seedline-mqtt-bridge by command.",
    )
    otel_traces_sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of new traces recorded (a caller's sampled traceparent is always followed).",
    )
    otel_metric_export_interval_seconds: int = Field(
        default=15, ge=1, description="How often metrics are pushed over OTLP."
    )
    otel_console: bool = Field(
        default=False, description="Print spans to stdout (development; `seedline dev --trace-console`)."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address of the Prometheus scrape endpoint (/metrics)."
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the Prometheus scrape endpoint; 0 = off. `serve --workers N` gives process i "
        "port + i.",
    )
    outbox_gauge_interval_seconds: float = Field(
        default=15.0, gt=0, description="How often the outbox lag / dead-letter / breaker gauges are sampled."
    )

    def sqlalchemy_url(self, embedded_url: str | None = None) -> str:
        """The asyncpg URL to use: DATABASE_URL normalised, or the embedded server's."""
        url = self.database_url or embedded_url
        if url is None:
            raise ValueError("no database URL and no embedded server")
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return url
