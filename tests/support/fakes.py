"""The fake METRC / BioTrackTHC / LIMS / webhook receiver as child processes over TLS."""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_LISTENING = re.compile(rb"listening on (https?://[0-9.]+:[0-9]+)")


@dataclass
class FakeProcess:
    """``python -m seedline_server.integrations.fakes.<module>`` on a free loopback port."""

    module: str
    cert: Path
    key: Path
    ca: Path
    args: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    base_url: str = ""

    def start(self, timeout: float = 20.0) -> FakeProcess:
        """Start and wait for the "listening on" line."""
        argv = [
            sys.executable,
            "-m",
            f"seedline_server.integrations.fakes.{self.module}",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--cert",
            str(self.cert),
            "--key",
            str(self.key),
            *self.args,
        ]
        if self.config is not None:
            assert self.workdir is not None
            self.workdir.mkdir(parents=True, exist_ok=True)
            path = self.workdir / f"{self.module}-config.json"
            path.write_text(json.dumps(self.config))
            argv += ["--config", str(path)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                seen += line
                if m := _LISTENING.search(line):
                    self.base_url = m.group(1).decode()
                    return self
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"fake {self.module} did not start: {seen.decode(errors='replace')[-2000:]}")

    def client(self) -> httpx.Client:
        """A client for the admin endpoints (verifies the fake's certificate)."""
        return httpx.Client(base_url=self.base_url, verify=str(self.ca), timeout=30)

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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
