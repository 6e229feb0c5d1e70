"""What machine a benchmark ran on: printed at the top of every benchmark's figures."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path


def describe() -> None:
    """Print the date, CPU (and the load when starting), OS and Python."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or "?",
    )
    print(f"date      {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
    print(f"cpu       {cpu}, {os.cpu_count()} cores; load avg {os.getloadavg()[0]:.2f} (1 min) at start")
    print(f"os        {platform.platform()}")
    print(f"python    {platform.python_version()}")
