"""Assembles and runs the gRPC server: servicers, health, reflection, the interceptor, shutdown.

Two listeners share the servicers. The *direct* one (``grpc_port``) serves gRPC clients and
ignores any ``x-forwarded-client-cert`` header. The *edge* one (``edge_port``, loopback/private)
is what Envoy connects to; only there is the forwarded client-certificate identity trusted.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from seedline.audit.v1 import audit_pb2_grpc
from seedline.auth.v1 import auth_pb2_grpc
from seedline.integration.v1 import integration_pb2_grpc
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.lab.v1 import lab_pb2_grpc
from seedline.license.v1 import license_pb2_grpc
from seedline.plant.v1 import plant_pb2_grpc
from seedline.telemetry.v1 import telemetry_pb2_grpc
from seedline.transfer.v1 import transfer_pb2_grpc
from seedline.type.v1 import access_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from seedline_server import contract
from seedline_server.api import integration as integration_api
from seedline_server.api import lab as lab_api
from seedline_server.api import transfer as transfer_api
from seedline_server.api import unimplemented
from seedline_server.api.audit import AuditServicer
from seedline_server.api.auth import AuthServicer
from seedline_server.api.convert import SignatureVerifier, use_signatures
from seedline_server.api.interceptor import CallInterceptor
from seedline_server.api.inventory import InventoryServicer
from seedline_server.api.license import LicenseServicer
from seedline_server.api.plant import PlantServicer
from seedline_server.api.ratelimit import TokenBuckets
from seedline_server.api.telemetry import TelemetryServicer
from seedline_server.config import Settings
from seedline_server.crypto import KeyRing
from seedline_server.integrations.runtime import build_runtime
from seedline_server.observability.rpc import TracingInterceptor
from seedline_server.service import transfers
from seedline_server.service.context import CallContext, Principal
from seedline_server.service.identity import Authenticator, JwtVerifier
from seedline_server.service.uow import Database
from seedline_server.service.watch import TransferFeed
from seedline_server.store import db as store_db
from seedline_server.telemetry.alerts import AlertHub
from seedline_server.telemetry.ingest import IngestPipeline
from seedline_server.telemetry.partitions import PartitionManager
from seedline_server.telemetry.watch import ReadingFeed

log = structlog.get_logger("seedline.server")
SYSTEM = Principal(name="system", kind="SYSTEM")

_IMPLEMENTED = {
    "seedline.audit.v1.AuditService",
    "seedline.auth.v1.AuthService",
    "seedline.integration.v1.IntegrationService",
    "seedline.inventory.v1.InventoryService",
    "seedline.lab.v1.LabResultService",
    "seedline.license.v1.LicenseService",
    "seedline.plant.v1.PlantService",
    "seedline.telemetry.v1.TelemetryService",
    "seedline.transfer.v1.TransferService",
}


@dataclass
class Running:
    """A started server: its listeners' ports and how to stop it."""

    grpc_port: int
    edge_port: int
    servers: list[grpc.aio.Server]
    health: health.aio.HealthServicer
    engine: AsyncEngine
    service_names: list[str]
    feed: TransferFeed
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # The integrations runtime (outbox worker, sync runs, schedule) when run in-process.
    worker: tuple[asyncio.Event, asyncio.Task[None], AsyncEngine] | None = None
    # Telemetry: the ingest pipeline (listeners attach to it) and the partition maintenance.
    telemetry: tuple[IngestPipeline, PartitionManager, AlertHub] | None = None

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight calls finish within ``grace`` seconds, release the pool.

        Open watch streams end at once with UNAVAILABLE (clients resume with their last token).
        """
        await self.health.enter_graceful_shutdown()
        for task in self.tasks:
            task.cancel()
        await self.feed.stop()
        if self.worker is not None:
            # Deliveries in flight finish and record their outcome; a delivery cut short is
            # reclaimed after its lease and checked at the remote before it is resent.
            stop, task, worker_engine = self.worker
            stop.set()
            with suppress(Exception):
                await asyncio.wait_for(task, timeout=max(grace, 1.0))
            await worker_engine.dispose()
        await asyncio.gather(*(s.stop(grace) for s in self.servers))
        if self.telemetry is not None:
            # Batches accepted before the listeners closed are committed (their streams are gone,
            # so they stay unacknowledged and their gateways replay them: de-duplicated).
            pipeline, partitions, alert_hub = self.telemetry
            await pipeline.stop()
            await alert_hub.stop()  # after the pipeline: the last commits' alerts are persisted
            await partitions.stop()
        await self.engine.dispose()
        log.info("server stopped")


_INTEGRATIONS = "seedline.integration.v1.IntegrationService"
_SERVING, _NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def _watch_database(
    engine: AsyncEngine,
    servicer: health.aio.HealthServicer,
    names: list[str],
    period: float,
    worker: asyncio.Task[None] | None = None,
) -> None:
    """Per-service health follows the database: NOT_SERVING while it does not answer.

    With an in-process integrations ``worker``, IntegrationService is also NOT_SERVING once that
    task has ended (crashed) while the server runs: its deliveries would wait for nobody.
    """
    last: tuple[bool, bool] | None = None
    while True:
        ok = await store_db.ping(engine)
        worker_ok = worker is None or not worker.done()
        if (ok, worker_ok) != last:
            for name in ["", *names]:
                up = ok and (worker_ok or name != _INTEGRATIONS)
                await servicer.set(name, _SERVING if up else _NOT_SERVING)
            log.info("health", database="up" if ok else "down", worker="up" if worker_ok else "ended")
            if worker is not None and worker.done() and not worker.cancelled() and worker.exception():
                log.error("integrations worker ended", exc_info=worker.exception())
            last = (ok, worker_ok)
        await asyncio.sleep(period)


def access_rules(services: Iterable[Any]) -> dict[str, access_pb2.AccessRule]:
    """Every RPC's access rule from the contract, by full method name."""
    rules = {}
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if options.HasExtension(access_pb2.access):
                rules[method.full_name] = options.Extensions[access_pb2.access]
    return rules


async def _depart_due(database: Database, period: float) -> None:
    """Move committed transfers to IN_TRANSIT once their planned departure time has passed."""
    ctx = CallContext(principal=SYSTEM, method="seedline.server.DepartDueTransfers")
    while True:
        try:
            await database.write(ctx, lambda uow: transfers.depart_due(uow, transfer_api.encode))
        except Exception:  # the database may be away; the health watcher reports it
            log.warning("departing due transfers failed", exc_info=True)
        await asyncio.sleep(period)


async def start(settings: Settings, database_url: str, *, dev: bool = False) -> Running:
    """Migrate, connect and start both listeners; returns once they accept calls.

    ``dev`` (embedded database, ``seedline dev``, tests) lets the secrets key ring fall back to a
    development key kept under the data directory; otherwise SEEDLINE_SECRET_KEYS is required.
    """
    await store_db.migrate(database_url)
    keyring = KeyRing.from_settings(settings, dev=dev)
    engine = store_db.make_engine(database_url, pool_size=settings.db_pool_size)
    database = Database(store_db.sessionmaker(engine))
    services = contract.load_services()
    names = [s.full_name for s in services]
    health_servicer = health.aio.HealthServicer()
    others = unimplemented.handlers(s for s in services if s.full_name not in _IMPLEMENTED)
    license_servicer, plant_servicer = LicenseServicer(database), PlantServicer(database)
    inventory_servicer = InventoryServicer(database)
    audit_servicer = AuditServicer(database)
    lab_servicer = await lab_api.build_servicer(settings, database)
    integration_servicer = integration_api.build_servicer(settings, database, engine, keyring)
    listen_url = store_db.libpq_url(database_url)  # LISTEN/NOTIFY
    feed = TransferFeed(
        database,
        listen_url,
        CallContext(principal=SYSTEM, method="seedline.server.TransferFeed"),
    )
    await feed.start()
    transfer_servicer = transfer_api.TransferServicer(database, feed)
    partitions = PartitionManager(
        engine,
        ahead_days=settings.telemetry_partitions_ahead_days,
        retention_days=settings.telemetry_retention_days,
        interval_seconds=settings.telemetry_partition_interval_seconds,
    )
    await partitions.start()
    pipeline = IngestPipeline(
        engine,
        writers=settings.telemetry_writers,
        max_pending=settings.telemetry_max_pending,
        retention_days=settings.telemetry_retention_days,
        sensor_ttl=settings.telemetry_sensor_cache_seconds,
    )
    await pipeline.start()
    readings_feed = ReadingFeed()
    pipeline.add_listener(readings_feed)
    alert_hub = AlertHub(database, listen_url)
    await alert_hub.start()
    pipeline.add_listener(alert_hub.on_readings)
    telemetry_servicer = TelemetryServicer(
        database, pipeline, readings_feed, alert_hub, stream_window=settings.telemetry_stream_window
    )

    authenticator = Authenticator(
        database,
        JwtVerifier(
            settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
            settings.jwt_jwks_path,
            settings.jwt_issuer,
            settings.jwt_audience,
        ),
        settings.partner_grants,
    )
    use_signatures(SignatureVerifier(authenticator, settings.signature_max_age_seconds))
    rules = access_rules(services)
    direct_limits = TokenBuckets.from_settings(settings)

    def build(trust_forwarded: bool) -> grpc.aio.Server:
        server = grpc.aio.server(
            interceptors=[
                TracingInterceptor(),  # outermost: its span and status cover everything below
                CallInterceptor(
                    trust_forwarded=trust_forwarded,
                    authenticator=authenticator,
                    rules=rules,
                    # Envoy limits the edge listener per partner; direct callers get buckets here.
                    limits=None if trust_forwarded else direct_limits,
                ),
            ],
            # Room for the largest request: an 8 MiB certificate of analysis plus its fields.
            options=[
                # Several `seedline serve` processes share the ports when asked (--workers N); the
                # kernel spreads new connections over them.
                ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
                ("grpc.max_receive_message_length", 9 * 1024 * 1024),
            ],
        )
        license_pb2_grpc.add_LicenseServiceServicer_to_server(license_servicer, server)
        plant_pb2_grpc.add_PlantServiceServicer_to_server(plant_servicer, server)
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server(inventory_servicer, server)
        lab_pb2_grpc.add_LabResultServiceServicer_to_server(lab_servicer, server)
        transfer_pb2_grpc.add_TransferServiceServicer_to_server(transfer_servicer, server)
        telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(telemetry_servicer, server)
        integration_pb2_grpc.add_IntegrationServiceServicer_to_server(integration_servicer, server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(audit_servicer, server)
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(database, authenticator), server)
        server.add_generic_rpc_handlers(others)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        return server

    direct, edge = build(trust_forwarded=False), build(trust_forwarded=True)
    grpc_port = direct.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    edge_port = edge.add_insecure_port(f"{settings.edge_host}:{settings.edge_port}")
    await direct.start()
    await edge.start()
    running = Running(grpc_port, edge_port, [direct, edge], health_servicer, engine, names, feed)
    running.telemetry = (pipeline, partitions, alert_hub)
    ok = await store_db.ping(engine)
    for name in ["", *names]:
        await health_servicer.set(
            name, health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        )
    running.tasks.append(asyncio.create_task(_depart_due(database, settings.health_interval_seconds)))
    if settings.run_worker:
        worker_engine = store_db.make_engine(database_url, pool_size=min(20, settings.outbox_concurrency))
        runtime = build_runtime(settings, worker_engine, keyring)
        stop_worker = asyncio.Event()
        running.worker = (stop_worker, asyncio.create_task(runtime.run(stop_worker)), worker_engine)
    running.tasks.append(
        asyncio.create_task(
            _watch_database(
                engine,
                health_servicer,
                names,
                settings.health_interval_seconds,
                running.worker[1] if running.worker is not None else None,
            )
        )
    )
    log.info("serving", grpc=f"{settings.grpc_host}:{grpc_port}", edge=f"{settings.edge_host}:{edge_port}")
    return running


async def serve(
    settings: Settings,
    database_url: str,
    on_ready: Callable[[Running], Awaitable[None]] | None = None,
    *,
    dev: bool | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    ``dev`` defaults to "no DATABASE_URL" (the embedded database): see :func:`start`.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before the ports are bound: a SIGTERM during startup (a supervisor stopping a
    # set of processes) stops this one gracefully once it is up, instead of killing it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        running = await start(
            settings, database_url, dev=settings.database_url is None if dev is None else dev
        )
        try:
            if on_ready is not None and not stop.is_set():
                await on_ready(running)
            await stop.wait()
            log.info("stopping", grace_seconds=settings.shutdown_grace_seconds)
        finally:
            # Handlers stay installed while draining: a repeated signal must not kill in-flight calls.
            await running.stop(settings.shutdown_grace_seconds)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(Exception):
                loop.remove_signal_handler(sig)
