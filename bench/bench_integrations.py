"""Delivery of plant registrations to the fake METRC under METRC's rate limits.

What it measures, on loopback, with everything real and separate (embedded PostgreSQL, the fake
METRC as its own process over TLS with METRC's limits: 150 requests/s per vendor key, 50 GET/s
and 10 in flight per facility; `seedline worker` processes):

- **baseline**: a bare asyncio client POSTing the same registrations straight to the fake,
  paced at exactly the limit. It shows what the fake and the machine allow at that rate.
- **seedline**: the registrations queued by the use case (outbox rows written with the plants),
  delivered by ``--workers`` worker processes sharing the limit through PostgreSQL.

It prints the wall time of each next to the floor the limit allows (N / 150 s), the rate achieved,
429s seen (there should be none: our buckets keep under METRC's), and CPU per delivery for the
workers and PostgreSQL. Figures, not a pass/fail test.

    .venv/bin/python bench/bench_integrations.py                  # 10,000 registrations
    .venv/bin/python bench/bench_integrations.py --plants 1500    # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import machine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seedline_server.certs import write_dev_pki  # noqa: E402
from seedline_server.service.uow import Database  # noqa: E402
from seedline_server.store import db  # noqa: E402
from tests.support import metrc_load as load  # noqa: E402
from tests.support.fakes import FakeProcess  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
RATE = 150.0  # METRC: requests per second per vendor key


def proc_cpu(pid: int) -> float:
    """CPU seconds of a live process (0 when gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def postgres_cpu(data: Path) -> float:
    """CPU seconds of the postmaster and its live backends (reaped ones through cutime)."""
    pid = int((data / "postmaster.pid").read_text().split()[0])
    total = 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICK
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                total += (int(stat[11]) + int(stat[12])) / TICK
    return total


async def baseline(fake: FakeProcess, ca: Path, facility: str, n: int) -> tuple[float, int]:
    """POST n batches straight to the fake, paced at RATE with 10 in flight; (seconds, 429s)."""
    limited = 0
    sem = asyncio.Semaphore(10)
    async with httpx.AsyncClient(
        base_url=fake.base_url, verify=str(ca), auth=(load.VENDOR_KEY, load.USER_KEY), timeout=30
    ) as client:

        async def one(i: int) -> None:
            nonlocal limited
            async with sem:
                row = {
                    "Name": f"BASE-{i:06d}",
                    "Type": "Clone",
                    "Count": 1,
                    "Strain": "Load Haze",
                    "Location": "Clone Room",
                    "ActualDate": "2026-12-01",
                }
                r = await client.post(
                    "/plantbatches/v2/plantings", params={"licenseNumber": facility}, json=[row]
                )
                if r.status_code == 429:
                    limited += 1

        t0 = time.perf_counter()
        tasks = []
        for i in range(n):
            due = t0 + i / RATE
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0, limited


async def main(args: argparse.Namespace) -> None:
    machine.describe()
    with tempfile.TemporaryDirectory(prefix="seedline-bench-int-") as tmp:
        root = Path(tmp)
        pg_data = root / "pg"
        server = db.start_embedded(pg_data, database="bench")
        url = server.url("bench")
        fake: FakeProcess | None = None
        workers = []
        engine = db.make_engine(url, pool_size=4)
        try:
            await db.migrate(url)
            database = Database(db.sessionmaker(engine))
            pki = write_dev_pki(root / "pki")
            facility = "BENCH-FACILITY-1"
            fake = FakeProcess(
                "metrc",
                pki.server_cert,
                pki.server_key,
                pki.ca_cert,
                config=load.fake_config(facility),
                workdir=root,
            ).start()
            print(f"postgres  {(pg_data / 'PG_VERSION').read_text().strip()} (embedded)")
            print(f"plants    {args.plants}; workers {args.workers}; METRC limit {RATE:.0f}/s per vendor key")
            print()

            base_s, base_429 = await baseline(fake, pki.ca_cert, facility, args.plants)
            fake.post("/_fake/reset", {})

            farm = await load.make_farm(database, fake.base_url, facility)
            create_s = await load.create_plants(database, farm, args.plants)
            env = load.worker_env(url, pki.ca_cert, {"SEEDLINE_OUTBOX_CONCURRENCY": "16"})
            pg_cpu0 = postgres_cpu(pg_data)
            t0 = time.perf_counter()
            workers = [load.start_worker(env, root / "workers.log") for _ in range(args.workers)]
            within = args.plants / 10 + 120
            states = await load.wait_delivered(
                engine, farm.integration_id, args.plants, within=within, poll=0.1
            )
            wall = time.perf_counter() - t0
            worker_cpu = sum(proc_cpu(w.pid) for w in workers)
            pg_cpu = postgres_cpu(pg_data) - pg_cpu0
            state = fake.state()
            delivered = states.get("DELIVERED", 0)
            stats = state.get("stats", {})
            seen_429 = int(stats.get("by_status", {}).get("429", 0))
            floor = args.plants / RATE
            rows = [
                ("baseline (bare client)", base_s, args.plants / base_s, base_429),
                ("seedline (outbox workers)", wall, delivered / wall, seen_429),
            ]
            print(f"{'':28}{'wall s':>9}{'floor s':>9}{'vs floor':>10}{'req/s':>9}{'429s':>6}")
            for name, secs, rate, limited in rows:
                print(f"{name:28}{secs:9.1f}{floor:9.1f}{secs / floor - 1:+10.1%}{rate:9.1f}{limited:6d}")
            print()
            batches = len(state.get("plant_batches", {}))
            print(f"delivered {delivered}/{args.plants} (states {states}); batches at the fake {batches}")
            per_plant = create_s / args.plants * 1e3
            print(f"creating the plants (use case + outbox rows): {create_s:.1f} s, {per_plant:.2f} ms/plant")
            w_ms = worker_cpu / max(delivered, 1) * 1e3
            pg_ms = pg_cpu / max(delivered, 1) * 1e3
            print(f"CPU per delivery: workers {w_ms:.2f} ms, PostgreSQL {pg_ms:.2f} ms")
            print(f"fake's counters: {json.dumps(stats)[:600]}")
            print(
                "\n'floor' is N / 150 s, the least METRC's per-vendor-key limit allows; 'vs floor' is how\n"
                "much longer the run took. The baseline is a bare client paced exactly at the limit against\n"
                "the same fake, measured in this run."
            )
        finally:
            for w in workers:
                w.terminate()
                w.wait(10)
            if fake is not None:
                fake.stop()
            await engine.dispose()
            db.stop_embedded(pg_data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plants", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
