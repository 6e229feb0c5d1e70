"""The fake METRC / BioTrackTHC / LIMS / webhook receiver as child processes over TLS."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from seedline_server.integrations.fakes import spawn
from tests.support.stack import stop_process


@dataclass
class FakeProcess:
    """``python -m seedline_server.integrations.fakes.<module>`` on a free loopback port."""

    module: str
    cert: Path
    key: Path
    ca: Path
    config: dict[str, Any] | None = None
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    base_url: str = ""

    def start(self, timeout: float = 20.0) -> FakeProcess:
        """Start and wait for the "listening on" line."""
        self.proc, self.base_url = spawn(
            self.module,
            cert=self.cert,
            key=self.key,
            config=self.config,
            workdir=self.workdir,
            timeout=timeout,
        )
        return self

    def client(self) -> httpx.Client:
        """A client for the admin endpoints (verifies the fake's certificate)."""
        return httpx.Client(
            base_url=self.base_url, verify=ssl.create_default_context(cafile=str(self.ca)), timeout=30
        )

    def state(self) -> Any:
        """``GET /_fake/state``."""
        with self.client() as c:
            r = c.get("/_fake/state")
            r.raise_for_status()
            return r.json()

    def post(self, path: str, body: Any) -> Any:
        """POST a JSON admin request."""
        with self.client() as c:
            r = c.post(path, json=body)
            r.raise_for_status()
            return r.json() if r.content else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None:
            return
        stop_process(self.proc, 10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


@dataclass
class FakeAdmin:
    """A fake served in the test's own process: its base URL and a client of its admin endpoints."""

    url: str
    admin: httpx.AsyncClient

    async def state(self) -> Any:
        """``GET /_fake/state``."""
        r = await self.admin.get("/_fake/state")
        r.raise_for_status()
        return r.json()

    async def post(self, path: str, body: Any) -> None:
        """POST a JSON admin request."""
        r = await self.admin.post(path, json=body)
        r.raise_for_status()

    async def faults(self, *rules: dict[str, Any]) -> None:
        """Replace the fake's fault rules (none: no faults)."""
        await self.post("/_fake/faults", {"rules": list(rules)})
