"""Run a fake's aiohttp application over TLS on a loopback port."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context for ``cert``/``key`` (TLS 1.2+)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class Running:
    """A started fake: its runner and the port it listens on."""

    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        await self.runner.cleanup()


async def start(
    app: web.Application, *, host: str, port: int, cert: Path | None, key: Path | None
) -> Running:
    """Start ``app`` on ``host:port`` (port 0 picks a free one), over TLS when a cert is given."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    tls = server_tls(cert, key) if cert is not None and key is not None else None
    site = web.TCPSite(runner, host, port, ssl_context=tls, backlog=512)
    await site.start()
    server = site._server  # the asyncio server: read the port actually bound
    assert server is not None
    sockets: list[Any] = list(getattr(server, "sockets", None) or [])
    bound = sockets[0].getsockname()[1]
    return Running(runner, int(bound))


def run_forever(
    app: web.Application, *, name: str, host: str, port: int, cert: Path | None, key: Path | None
) -> None:
    """Serve until SIGTERM/SIGINT; prints ``<name> listening on https://host:port`` once bound."""

    async def main() -> None:
        running = await start(app, host=host, port=port, cert=cert, key=key)
        scheme = "https" if cert is not None else "http"
        print(f"{name} listening on {scheme}://{host}:{running.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await running.stop()

    asyncio.run(main())


def command_line(
    make_app: Callable[[dict[str, Any] | None], web.Application],
    *,
    name: str,
    description: str,
    argv: list[str] | None = None,
) -> None:
    """The command line every fake shares: ``--host --port --cert --key --config``, then serve."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed once bound)")
    parser.add_argument("--cert", type=Path, help="TLS certificate (PEM); plain HTTP without it")
    parser.add_argument("--key", type=Path, help="TLS private key (PEM)")
    parser.add_argument("--config", type=Path, help="a JSON file with the fake's configuration")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text(encoding="utf-8")) if args.config else None
    run_forever(make_app(config), name=name, host=args.host, port=args.port, cert=args.cert, key=args.key)
