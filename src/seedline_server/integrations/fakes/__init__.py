"""Local fake METRC, BioTrackTHC and LIMS servers built from the reference specs.

They are real HTTPS servers on loopback (aiohttp), used by the tests and by ``seedline dev``:
they enforce what the real systems enforce (authentication, license scoping, paging limits,
time windows, rate limits) and can inject faults on request.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["spawn"]

_LISTENING = re.compile(rb"listening on (https?://[0-9.]+:[0-9]+)")


def spawn(
    module: str,
    *,
    cert: Path,
    key: Path,
    config: dict[str, Any] | None = None,
    workdir: Path | None = None,
    port: int = 0,
    timeout: float = 20.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m seedline_server.integrations.fakes.<module>`` on loopback over TLS.

    Returns the process and its base URL, read from the "listening on" line it prints once bound.

    Raises:
        RuntimeError: it exited or did not report its address within ``timeout`` seconds.

    """
    argv = [sys.executable, "-m", f"{__name__}.{module}", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--cert", str(cert), "--key", str(key)]
    if config is not None:
        assert workdir is not None, "a config needs a workdir to be written to"
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"{module}-config.json"
        path.write_text(json.dumps(config))
        argv += ["--config", str(path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            seen += line
            if m := _LISTENING.search(line):
                return proc, m.group(1).decode()
        if proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise RuntimeError(f"fake {module} did not start: {seen.decode(errors='replace')[-2000:]}")
