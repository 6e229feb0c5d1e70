"""A real MQTT broker for tests: mosquitto on a free loopback port, else amqtt (pure Python).

Mosquitto runs with the shipped deploy/mosquitto/mosquitto.conf, only its listener, persistence
location and log destination replaced, so the tests also check that file. Where the mosquitto
binary cannot be had (`.ci/run` installs it with apt-get), amqtt stands in: it speaks MQTT 3.1.1
only (no shared subscriptions, no content types), and the tests say so in their output.
``SEEDLINE_TEST_MQTT_BROKER=amqtt`` forces the stand-in.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from tests.support.stack import free_port, stop_process  # mosquitto cannot listen on port 0

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONF = REPO / "deploy" / "mosquitto" / "mosquitto.conf"
REPLACED = ("listener", "persistence_location", "log_dest", "log_type", "allow_anonymous")


def mosquitto_binary() -> str | None:
    """The mosquitto executable (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    if os.environ.get("SEEDLINE_TEST_MQTT_BROKER") == "amqtt":
        return None
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    return found


def broker_config(port: int, data: Path) -> str:
    """The shipped config with a loopback listener and a private persistence directory."""
    kept = [line for line in SHIPPED_CONF.read_text().splitlines() if not line.strip().startswith(REPLACED)]
    return "\n".join(
        [
            *kept,
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence_location {data}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
    )


@dataclass
class Broker:
    """A broker process on 127.0.0.1."""

    kind: Literal["mosquitto", "amqtt"]
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:{port}``."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def protocol(self) -> Literal["5", "3.1.1"]:
        """The MQTT version to speak to it."""
        return "5" if self.kind == "mosquitto" else "3.1.1"

    @property
    def redelivers(self) -> bool:
        """Whether it keeps sessions and resends unacknowledged QoS 1 messages on reconnect."""
        return self.kind == "mosquitto"

    @property
    def shared_subscriptions(self) -> bool:
        """Whether it supports MQTT 5 shared subscriptions."""
        return self.kind == "mosquitto"

    def start(self, timeout: float = 15.0) -> Broker:
        """Starts the process and waits until the port accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.kind == "mosquitto":
            data = self.workdir / "data"
            data.mkdir(exist_ok=True)
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(broker_config(self.port, data))
            binary = mosquitto_binary()
            assert binary is not None
            cmd = [binary, "-c", str(conf)]
        else:
            conf = self.workdir / "amqtt.yaml"
            conf.write_text(
                "listeners:\n  default:\n    type: tcp\n"
                f"    bind: 127.0.0.1:{self.port}\n"
                "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
            )
            cmd = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
        log = (self.workdir / f"{self.kind}.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen on {self.port}: {self.log_tail()}")

    def log_tail(self) -> str:
        """The end of the broker's log."""
        path = self.workdir / f"{self.kind}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), then SIGKILL after 10 s."""
        if self.proc is None:
            return
        stop_process(self.proc, 10)
        self.proc = None

    def restart(self) -> None:
        """Stops and starts it again on the same port, with the same persistence."""
        self.stop()
        self.start()


def start_broker(workdir: Path) -> Broker:
    """Mosquitto if its binary is there, else amqtt; on a port race, tries another port."""
    kind: Literal["mosquitto", "amqtt"] = "mosquitto" if mosquitto_binary() else "amqtt"
    error: Exception | None = None
    for attempt in range(3):
        try:
            return Broker(kind, free_port(), workdir / f"{kind}-{attempt}").start()
        except RuntimeError as exc:
            error = exc
    raise RuntimeError(f"could not start {kind}") from error


@dataclass
class BridgeProcess:
    """``seedline mqtt-bridge`` as a child process (what operators run), stopped with SIGTERM."""

    broker: Broker
    database_url: str
    client_id: str
    share_group: str = "seedline-bridge"
    proc: subprocess.Popen[bytes] | None = None
    lines: list[str] = field(default_factory=list)

    def start(self, timeout: float = 60.0) -> BridgeProcess:
        """Starts it and waits for its ``mqtt.subscribed`` log line."""
        exe = shutil.which("seedline") or str(Path(sys.executable).with_name("seedline"))
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "SEEDLINE_MQTT_URL": self.broker.url,
            "SEEDLINE_MQTT_PROTOCOL": self.broker.protocol,
            "SEEDLINE_MQTT_CLIENT_ID": self.client_id,
            "SEEDLINE_MQTT_SHARE_GROUP": self.share_group,
            "SEEDLINE_LOG_FORMAT": "console",
        }
        self.proc = subprocess.Popen(
            [exe, "mqtt-bridge"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        subscribed = threading.Event()
        out = self.proc.stdout
        assert out is not None

        def pump() -> None:
            for raw in out:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if "mqtt.subscribed" in line:
                    subscribed.set()

        threading.Thread(target=pump, daemon=True).start()
        if not subscribed.wait(timeout):
            self.stop()
            raise RuntimeError("mqtt-bridge did not subscribe:\n" + "\n".join(self.lines[-30:]))
        return self

    def stop(self) -> int | None:
        """SIGTERM (the bridge commits and acknowledges what it handed over), SIGKILL after 20 s."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, 20)
        self.proc = None
        return code


async def mqtt_ingest_rate(
    broker: Broker,
    database_url: str,
    *,
    license_id: str,
    section_id: str,
    sensor_ids: list[str],
    readings: int = 200_000,
    per_message: int = 100,
    bridges: int = 2,
    within: float = 600.0,
) -> dict[str, float]:
    """Committed readings/s through MQTT: ``bridges`` bridge processes, JSON batches, QoS 1.

    Publishes ``readings`` readings of ``sensor_ids`` (registered sensors of the license, distinct
    observe times) as JSON batches of ``per_message``, and measures from the first publish until
    PostgreSQL holds them all. For ``bench/bench_telemetry.py``.
    """
    import aiomqtt
    import asyncpg

    group = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    procs = [
        BridgeProcess(broker, database_url, f"bench-bridge-{i}-{group}", share_group=group).start()
        for i in range(bridges)
    ]
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        keys = [
            r[0] for r in await conn.fetch("SELECT key FROM sensors WHERE id = ANY($1::text[])", sensor_ids)
        ]
        before = int(await conn.fetchval("SELECT count(*) FROM readings WHERE sensor_key = ANY($1)", keys))
        base = datetime.now(UTC) - timedelta(hours=2)
        n = len(sensor_ids)
        messages = []
        for start in range(0, readings, per_message):
            batch = [
                {
                    "sensor_id": sensor_ids[i % n],
                    "value": 20.0 + (i % 50) / 10,
                    "unit": 1,
                    "observe_time": (base + timedelta(milliseconds=i // n)).isoformat(),
                }
                for i in range(start, min(start + per_message, readings))
            ]
            messages.append(json.dumps({"readings": batch}))
        topic = f"seedline/{license_id}/{section_id}/{sensor_ids[0]}"
        version = aiomqtt.ProtocolVersion.V5 if broker.protocol == "5" else aiomqtt.ProtocolVersion.V311
        started = time.perf_counter()
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=version, timeout=120) as client:
            client.pending_calls_threshold = 1_000_000
            for i in range(0, len(messages), 500):
                await asyncio.gather(*(client.publish(topic, m, qos=1) for m in messages[i : i + 500]))
        published = time.perf_counter() - started
        deadline = time.monotonic() + within
        count = before
        while count - before < readings and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            count = int(await conn.fetchval("SELECT count(*) FROM readings WHERE sensor_key = ANY($1)", keys))
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
        codes = [p.stop() for p in procs]
    if any(codes):  # SIGTERM must end a bridge cleanly: drained, acknowledged, exit 0
        lines = [line for p in procs for line in p.lines[-20:]]
        raise RuntimeError(f"mqtt-bridge exit codes {codes}:\n" + "\n".join(lines))
    committed = count - before
    return {
        "readings": float(committed),
        "messages": float(len(messages)),
        "publish_seconds": published,
        "seconds": elapsed,
        "readings_per_s": committed / elapsed,
    }
