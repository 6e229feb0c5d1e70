"""Seedline's first benchmark: a trivial RPC, GetPlant over gRPC, GetPlant over REST through Envoy.

Run from the repository root: ``.venv/bin/python bench/bench_rpc.py`` (``make bench``). It starts
its own embedded PostgreSQL, ``seedline serve`` and Envoy on free loopback ports, seeds one plant,
measures, prints figures and stops everything. It asserts nothing about speed.

Load generators are C programs, so the client does not eat the server's CPU on a 2-core box:

* gRPC: ``h2load`` (Debian ``nghttp2-client``) posting a pre-framed protobuf over h2c to the
  direct port. Percentiles come from its per-request ``--log-file``. h2load counts any HTTP 200
  as success, but a failed gRPC call is trailers-only (no DATA), so we check that the DATA bytes
  equal ``done * framed reply size``: every response carried the expected message.
* REST: h2load 1.52 cannot present a client certificate, Envoy requires one (mutual TLS), and
  wrk cannot either; a Python client (httpx) would fight the Python server for 2 cores. We use
  ``curl --parallel``: one HTTP/2 connection with N streams in flight, presenting the partner
  certificate and printing status, latency and size per request. A last run against a path
  Envoy answers itself (404, no upstream) gives the ceiling of curl + Envoy, i.e. shows whether
  the REST figure is bounded by the tool or by the server.

Authentication: the gRPC clients (seeding and h2load) send ``authorization: Bearer <JWT>``, one admin
token minted at start with the tests' secret (``tests/support/auth.py``; the server started through
``ServerProcess`` trusts it). REST callers are identified by the partner certificate (an admin).

Every target gets the same load: one connection, ``--concurrency`` requests in flight. Targets are
measured in alternating rounds so that a neighbour's load hits all of them alike; req/s is the
median over rounds, ratios the median of per-round ratios, percentiles over all rounds' requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from machine import describe
from seedline.plant.v1 import plant_pb2 as pl
from seedline.plant.v1 import plant_pb2_grpc

from seedline_server import edge as edge_mod
from seedline_server.config import Settings
from seedline_server.store import db

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/: the process launcher and the seeding helper the e2e tests use
from tests.e2e.test_grpc import make_license  # noqa: E402
from tests.support import auth  # noqa: E402
from tests.support.stack import EdgeProcess, ServerProcess  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
CPU_KEYS = ("server", "envoy", "pg", "client")


@dataclass
class Round:
    """One measured run of one target."""

    ok: int  # 2xx with the expected body
    total: int
    seconds: float
    latencies_ms: list[float]
    cpu_s: dict[str, float]  # CPU seconds per process group (CPU_KEYS)
    other_cores: float  # CPU used meanwhile by processes outside the benchmark, plus steal
    detail: str

    @property
    def rps(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0


@dataclass
class Target:
    name: str
    tool: str
    measure: Callable[[float], Round]
    rounds: list[Round] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.rounds)

    def pct(self, q: float) -> float:
        lat = sorted(x for r in self.rounds for x in r.latencies_ms)
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    def cpu_us(self, key: str) -> float:
        return sum(r.cpu_s[key] for r in self.rounds) * 1e6 / max(1, sum(r.total for r in self.rounds))


def run(cmd: list[str], stdin: str | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a load generator; returns the process and its CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def proc_stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_cpu(pid: int, reaped: bool = False) -> float:
    """CPU seconds used so far by a live process (0 if it is gone); with ``reaped``, plus the CPU
    of the children it has waited for (cutime + cstime)."""
    try:
        fields = proc_stat(pid)
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return ticks / TICK


def machine_busy() -> float:
    """CPU seconds all processes have run since boot, plus time stolen by the hypervisor.

    irq/softirq time is left out: loopback traffic is processed there, on behalf of our processes.
    """
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = Path("/proc/stat").read_text().split()[1:9]
    return sum(int(x) for x in (user, nice, system, steal)) / TICK


class Meter:
    """CPU used by the server, Envoy (if any), PostgreSQL (postmaster + backends) and everything else.

    PostgreSQL's total is the postmaster's own CPU, plus that of the backends it has already reaped,
    plus that of the live backends: the pool opens and closes connections under load (SQLAlchemy
    closes overflow connections on check-in), and a backend that exits mid-round still counts.
    """

    def __init__(self, server: int, envoy: int | None, postmaster: int) -> None:
        def live() -> float:
            total = 0.0
            for p in Path("/proc").iterdir():
                try:
                    if p.name.isdigit() and int(proc_stat(int(p.name))[1]) == postmaster:
                        total += proc_cpu(int(p.name))
                except (OSError, ValueError, IndexError):
                    continue
            return total

        def pg_total() -> float:
            # An exited backend stays in /proc (a zombie, with its CPU times) until the postmaster
            # reaps it; a reap during the scan would count it twice or not at all: scan again.
            for _ in range(5):
                reaped = proc_cpu(postmaster, reaped=True)
                backends = live()
                if proc_cpu(postmaster, reaped=True) == reaped:
                    break
            return reaped + backends

        self.totals: dict[str, Callable[[], float]] = {
            "server": lambda: proc_cpu(server),
            "envoy": lambda: 0.0 if envoy is None else proc_cpu(envoy),
            "pg": pg_total,
        }
        self.cpu0: dict[str, float] = {}
        self.t0 = self.busy0 = 0.0

    def start(self) -> None:
        self.cpu0 = {g: total() for g, total in self.totals.items()}
        self.t0, self.busy0 = time.monotonic(), machine_busy()

    def stop(self, client_cpu: float) -> tuple[dict[str, float], float]:
        """CPU seconds per group since start(), and the other processes' average use in cores."""
        elapsed, busy = time.monotonic() - self.t0, machine_busy() - self.busy0
        cpu = {g: total() - self.cpu0[g] for g, total in self.totals.items()}
        cpu["client"] = client_cpu
        return cpu, max(0.0, (busy - sum(cpu.values())) / elapsed)


class Verify(Protocol):
    """How a round's responses are checked: a failed gRPC call is still HTTP 200 (trailers-only)."""

    def before(self) -> None:
        """Called before the round starts (e.g. to read a counter); not timed."""

    def after(self, done: int, data_bytes: int) -> tuple[int, str]:
        """How many of the ``done`` requests verifiably succeeded, and a one-line detail."""


@dataclass
class ReplySize:
    """Every reply is the same framed message, so DATA bytes = done x its size."""

    size: int

    def before(self) -> None:
        pass

    def after(self, done: int, data_bytes: int) -> tuple[int, str]:
        full = data_bytes == done * self.size
        return (done if full else 0), f"DATA = {done} x {self.size} B framed reply: {full}"


def h2load_target(
    name: str, url: str, body: Path, reply: int | Verify, conc: int, m: Meter, token: str | None = None
) -> Target:
    """POST the framed request in ``body`` over h2c; ``reply`` is the framed reply size or a check;
    ``token``: a JWT sent as ``authorization: Bearer`` with every request."""
    verify = ReplySize(reply) if isinstance(reply, int) else reply
    base = ["h2load", "-t", "1", "-c", "1", "-m", str(conc), "-d", str(body)]
    base += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    if token is not None:
        base += ["-H", f"authorization: Bearer {token}"]
    log = body.with_suffix(".log")

    def measure(seconds: float) -> Round:
        log.unlink(missing_ok=True)  # h2load appends to it
        verify.before()
        m.start()
        proc, client_cpu = run([*base, "-D", str(max(1, round(seconds))), f"--log-file={log}", url])
        cpu, other = m.stop(client_cpu)
        out = proc.stdout
        done = re.search(r"(\d+) done", out)
        data = re.search(r"traffic: .*?(\d+)\) data", out)
        codes = re.search(r"status codes: (.*)", out)
        if proc.returncode != 0 or not (done and data and codes):
            raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stderr}{out[-800:]}")
        n, data_bytes = int(done.group(1)), int(data.group(1))
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
        verified, checked = verify.after(n, data_bytes)
        ok = min(verified, sum(1 for row in rows if row[1] == "200"))
        detail = f"HTTP {codes.group(1)}; {checked}"
        return Round(ok, n, round(seconds), [int(r[2]) / 1000 for r in rows], cpu, other, detail)

    return Target(name, f"h2load -t 1 -c 1 -m {conc} -D <round>", measure)


def curl_target(name: str, url: str, tls: list[str], expect: tuple[str, int], conc: int, m: Meter) -> Target:
    """Requests on one HTTP/2 connection, ``conc`` in flight. curl has no duration mode, so the
    request count comes from the previous run's rate (a few short runs calibrate it first)."""
    cmd = ["curl", "--no-progress-meter", "--http2", "-Z", "--parallel-max", str(conc), *tls]
    cmd += ["-w", "%{stderr}%{http_code} %{time_total} %{size_download}\\n", "-K", "-"]
    rate = 0.0

    def once(n: int) -> tuple[list[list[str]], float, float]:
        t0 = time.monotonic()
        proc, cpu = run(cmd, stdin=f'url = "{url}"\noutput = "/dev/null"\n' * n)
        return [line.split() for line in proc.stderr.splitlines()], time.monotonic() - t0, cpu

    def measure(seconds: float) -> Round:
        nonlocal rate
        n, spent = 100, 0.0
        while rate == 0.0 or spent < 1.0:  # calibration, first round only
            spent += (elapsed := once(n)[1])
            rate, n = max(rate, n / elapsed), n * 4
        n = max(200, min(int(rate * seconds), 100_000))
        m.start()
        rows, elapsed, client_cpu = once(n)
        cpu, other = m.stop(client_cpu)
        rate = n / elapsed
        good = [r for r in rows if len(r) == 3 and r[0] == expect[0] and int(r[2]) == expect[1]]
        detail = f"{n} requests, {len(good)} answered HTTP {expect[0]} with the expected {expect[1]} B"
        return Round(len(good), n, elapsed, [float(r[1]) * 1000 for r in good], cpu, other, detail)

    return Target(name, f"curl --http2 -Z --parallel-max {conc} (1 connection)", measure)


def seed(target: str, token: str) -> tuple[str, pl.Plant]:
    """One plant (with make_license from the e2e tests), then one real call of each gRPC target
    with the Python stubs, so the load runs send requests known to succeed (with ``token``)."""
    with auth.with_bearer(grpc.insecure_channel(target), token) as ch:
        license_, section, variety = make_license(ch, "BENCH-1")
        plants = plant_pb2_grpc.PlantServiceStub(ch)
        plant = plants.CreatePlant(
            pl.CreatePlantRequest(
                parent=license_, plant=pl.Plant(variety=variety, section=section, display_name="P1")
            )
        )
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"health check: {health}")
        got = plants.GetPlant(pl.GetPlantRequest(name=plant.name))
        if got != plant:
            raise RuntimeError(f"GetPlant returned {got}, expected {plant}")
        return plant.name, got


def frame(msg: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, payload."""
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def first_line(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    return out.splitlines()[0] if out else "?"


def machine(pg_data: Path) -> None:
    describe()
    envoy = re.search(r"version: \w+/([\d.]+)", first_line([edge_mod.envoy_binary(), "--version"]))
    curl = re.match(r"curl \S+", first_line(["curl", "--version"]))
    print(f"grpcio    {grpc.__version__}")
    print(f"envoy     {envoy.group(1) if envoy else '?'}")
    print(f"postgres  {(pg_data / 'PG_VERSION').read_text().strip()} (embedded, unix socket)")
    print(f"tools     {first_line(['h2load', '--version'])}, {curl.group(0) if curl else '?'}")


def table(targets: list[Target], keys: tuple[str, ...] = CPU_KEYS) -> None:
    """The throughput table, its legend and every round's detail; ``keys``: the CPU columns."""
    heads = " ".join(f"{k:>6}" for k in keys)
    print(f"\n{'target':42} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'ok/total':>13}  "
          f"CPU us/req: {heads}  other cores")  # fmt: skip
    for t in targets:
        ok, total = sum(r.ok for r in t.rounds), sum(r.total for r in t.rounds)
        cpu = " ".join(f"{t.cpu_us(k):6.0f}" for k in keys)
        other = max(r.other_cores for r in t.rounds)
        print(f"{t.name:42} {t.rps:6.0f} {t.pct(0.5):7.2f} {t.pct(0.99):7.2f} {ok:>6}/{total:<6}  "
              f"{'':11} {cpu}  {other:5.2f}")  # fmt: skip
    print("\nreq/s: median of rounds. ok: 2xx with the expected body. CPU us/req: CPU time of each process")
    print("per request (pg = postmaster + backends, client = the load generator). other cores: CPU used")
    print("meanwhile outside the benchmark (worst round); well above 0 = a noisy neighbour, distrust it.")
    for t in targets:
        print(f"  {t.name}: {t.tool}")
        for i, r in enumerate(t.rounds, 1):
            print(
                f"    round {i}: {r.rps:5.0f} req/s, {r.seconds:4.1f}s, other {r.other_cores:.2f}; {r.detail}"
            )


def report(targets: list[Target], a: argparse.Namespace) -> None:
    print(f"\nparameters: 1 connection x {a.concurrency} concurrent streams per target; {a.warmup}s warm-up "
          f"per target (discarded), then {a.rounds} alternating rounds of ~{a.duration}s each; "
          f"server defaults (db_pool_size={Settings.model_fields['db_pool_size'].default})")  # fmt: skip
    table(targets)
    trivial, get_grpc, get_rest = (t.rounds for t in targets[:3])
    per_round = zip(trivial, get_grpc, get_rest, strict=False)
    ratios = [(g.rps / t.rps, r.rps / g.rps) for t, g, r in per_round if t.rps and g.rps]
    if ratios:
        print("\nratios (throughput; median of the per-round ratios, then each round's):")
        for label, i in (("GetPlant gRPC / trivial gRPC ", 0), ("GetPlant REST / GetPlant gRPC", 1)):
            each = " ".join(f"{x[i]:.2f}" for x in ratios)
            print(f"  {label} = {statistics.median(x[i] for x in ratios):.2f}   ({each})")
    print(f"\nload avg {os.getloadavg()[0]:.2f} (1 min) at end. Absolute figures drift on a shared machine:"
          " compare the ratios within one run.")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (streams on 1 connection)")
    p.add_argument("--duration", type=int, default=4, help="measured seconds per target and round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds over the targets")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target")
    a = p.parse_args()
    missing = [t for t in ("h2load", "curl") if shutil.which(t) is None]
    if missing:
        print(f"{', '.join(missing)} not found: apt-get install -y nghttp2-client curl", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="seedline-bench-"))
    pg_data = work / "pg"
    server: ServerProcess | None = None
    edge: EdgeProcess | None = None
    pg_started = False
    try:
        pg = db.start_embedded(pg_data, database="seedline_bench")
        pg_started = True
        url = pg.url("seedline_bench")
        asyncio.run(db.migrate(url))
        server = ServerProcess(database_url=url, data_dir=work / "server")
        server.start()
        edge = EdgeProcess(server=server, workdir=work)
        edge.start()
        if server.proc is None or edge.pki is None or edge.envoy is None or edge.envoy.pid is None:
            raise RuntimeError("the stack did not start")
        if pg.pid is None:
            raise RuntimeError("embedded PostgreSQL reports no pid")
        machine(pg_data)

        token = auth.mint()  # admin on every license; 1 h, far longer than a run
        name, plant = seed(server.target, token)
        (work / "health.bin").write_bytes(frame(health_pb2.HealthCheckRequest().SerializeToString()))
        (work / "get.bin").write_bytes(frame(pl.GetPlantRequest(name=name).SerializeToString()))
        health_size = len(frame(health_pb2.HealthCheckResponse(status=1).SerializeToString()))
        tls = ["--cacert", str(edge.pki.ca_cert), "--cert", str(edge.pki.partner_cert)]
        tls += ["--key", str(edge.pki.partner_key)]
        rest_url, miss_url = f"{edge.base_url}/v1/{name}", f"{edge.base_url}/v0/none"
        check = subprocess.run(["curl", "-sS", "--http2", *tls, rest_url], capture_output=True)
        if f'"name":"{name}"'.encode() not in check.stdout:
            raise RuntimeError(f"REST GetPlant failed: {check.stdout!r}{check.stderr!r}")
        miss = subprocess.run(["curl", "-sS", "--http2", *tls, miss_url], capture_output=True, check=True)

        m = Meter(server.proc.pid, edge.envoy.pid, pg.pid)
        c, direct = a.concurrency, f"http://{server.target}"
        targets = [
            h2load_target("trivial: gRPC Health/Check (h2c direct)", f"{direct}/grpc.health.v1.Health/Check",
                          work / "health.bin", health_size, c, m, token),
            h2load_target("GetPlant gRPC (h2c direct)", f"{direct}/seedline.plant.v1.PlantService/GetPlant",
                          work / "get.bin", len(frame(plant.SerializeToString())), c, m, token),
            curl_target("GetPlant REST (Envoy, mTLS, JSON)", rest_url, tls, ("200", len(check.stdout)), c, m),
        ]  # fmt: skip
        ceiling = curl_target(
            "[ceiling] curl+Envoy, 404 from Envoy", miss_url, tls, ("404", len(miss.stdout)), c, m
        )
        for t in [*targets, ceiling]:
            t.measure(a.warmup)  # warm-up: pools, caches, connections; discarded
        for _ in range(a.rounds):
            for t in targets:
                t.rounds.append(t.measure(a.duration))
        ceiling.rounds.append(ceiling.measure(a.duration))
        report([*targets, ceiling], a)
        return 0
    finally:
        if edge is not None:
            edge.stop()
        if server is not None:
            server.stop()
        if pg_started:
            db.stop_embedded(pg_data)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
