"""`seedline serve --workers 2`: two server processes listen on the same ports and stop together."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import auth
from tests.support.stack import UNLIMITED_GRPC_ENV, free_port, wait_healthy


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                found.add(fields[9])
    return found


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            out.add(m.group(1))
    return out


def start_set(e2e_pg_url: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, int]:
    """`seedline serve --workers 2` on free ports: (the parent process, its log, the gRPC port)."""
    grpc_port, edge_port = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=e2e_pg_url,
        SEEDLINE_DATA_DIR=str(tmp_path),
        SEEDLINE_GRPC_PORT=str(grpc_port),
        SEEDLINE_EDGE_PORT=str(edge_port),
        SEEDLINE_LOG_LEVEL="warning",
        SEEDLINE_RUN_WORKER="false",
        **UNLIMITED_GRPC_ENV,
    )
    env.update(auth.SERVER_ENV)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        parent = subprocess.Popen(
            [str(Path(sys.executable).with_name("seedline")), "serve", "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return parent, log, grpc_port


def test_a_stop_while_the_processes_start_is_a_clean_stop(e2e_pg_url: str, tmp_path: Path) -> None:
    parent, log, grpc_port = start_set(e2e_pg_url, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while "2 server processes" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the children are importing, migrating or binding: not serving yet
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0, log.read_text()[-2000:]
        assert not listening_inodes(grpc_port)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_two_processes_share_the_ports_and_stop_together(e2e_pg_url: str, tmp_path: Path) -> None:
    parent, log, grpc_port = start_set(e2e_pg_url, tmp_path)
    try:
        wait_healthy(f"127.0.0.1:{grpc_port}", timeout=60)
        deadline = time.monotonic() + 30
        pids: list[int] = []
        while time.monotonic() < deadline and len(pids) < 2:
            m = re.search(r"2 server processes: (\d+), (\d+)", log.read_text())
            pids = [int(m.group(1)), int(m.group(2))] if m else []
            time.sleep(0.2)
        assert len(pids) == 2, log.read_text()[-2000:]
        # Both processes are up and each holds its own listening socket on the same port.
        deadline = time.monotonic() + 30
        holders: list[int] = []
        while time.monotonic() < deadline:
            listening = listening_inodes(grpc_port)
            holders = [pid for pid in pids if socket_inodes(pid) & listening]
            if len(holders) == 2:
                break
            time.sleep(0.3)
        assert holders == pids, (holders, pids, log.read_text()[-2000:])
        for _ in range(10):  # new connections, spread by the kernel: every one is served
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        assert not listening_inodes(grpc_port)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
