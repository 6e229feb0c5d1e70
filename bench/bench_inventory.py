"""Inventory benchmark: ListLots at 1M lots, TraceLineage over a 10-level graph, mutation throughput.

Run from the repository root: ``.venv/bin/python bench/bench_inventory.py`` (``make bench`` runs it
after ``bench_rpc.py``); ``--quick`` for a sanity run (100,000 lots, fewer calls, shorter rounds).
It starts its own embedded PostgreSQL and ``seedline serve`` on free loopback ports, loads data,
measures, prints figures and stops everything. It asserts nothing about speed; the issue's targets
are printed next to the figures.

Method:

1. **ListLots at scale.** The registry rows (company, license, sections, products, varieties) are
   created through the public gRPC API; then ``--lots`` rows are bulk-loaded into ``lots`` with
   asyncpg binary COPY (the rate is printed as a baseline: it includes the table's 6 indexes and
   4 foreign-key checks per row, not the Python that generates the rows). Lot ids are ULIDs in
   creation order, one minute apart, over 5 products (3 bulk by weight, 1 each, 1 pack), 5
   inventory sections, 3 varieties and 4 statuses (86 % AVAILABLE). Then ``VACUUM (ANALYZE)`` and
   a ``CHECKPOINT``, so that neither autovacuum nor a checkpoint lands in the middle of the
   measurements, and hint bits and the visibility map are what a settled table has.
   One gRPC client then calls sequentially (latency, not throughput), after a few discarded
   warm-up calls: each case is ``--calls`` calls, each preceded by one
   ``grpc.health.v1.Health/Check`` (the trivial RPC, no database), so both see the same
   conditions; ``p99 - trivial p99`` approximates the server-side cost. The cases run in
   alternating blocks of 10 calls, so that drift hits them alike. Requests are serialised and
   replies parsed outside the timer (raw-bytes stubs); the CPU the server and PostgreSQL spend
   is metered per case (bench_rpc's Meter). Cases: the first page repeated; pages from the middle
   of the set (the client first walks there with next_page_token, timed as its own row); filters
   by product, section, status, creation range and all combined, each following next_page_token
   from the first page (and starting over at the end). Every returned lot is checked against the
   filter and the id order, and each complete pass against ``count(*)`` in SQL. Finally, with
   ``log_min_duration_statement = 0`` for one call per case, the server's SQL is read back from
   PostgreSQL's log and re-run here as ``EXPLAIN (ANALYZE, BUFFERS)`` of a prepared statement
   after 5 executions (the plan a pooled connection ends up using, generic or custom).
2. **TraceLineage.** In a second license, 10 levels x 1,000 lots are COPYed with
   ``lineage_edges``: each lot of level k+1 has 1-3 parents in level k (SPLIT with one parent,
   CONVERSION with more; fixed seed). FORWARD from a level-0 lot and BACKWARD from a level-9
   lot, max_depth 10, max_nodes 0 (= 1000) and 5000, ``--trace-calls`` calls each, with the
   trivial RPC and alternating blocks as above. Nodes, edges, depths and ``truncated`` of the last
   reply are checked against a breadth-first walk of the generated graph done here.
3. **Mutation throughput** with bench_rpc's machinery: h2load posts one pre-framed request over
   h2c, ``--concurrency`` streams on one connection, alternating rounds with the trivial RPC (the
   ceiling). The same request is sent again and again: CreatePlant (variety + crop section, no
   source lot), BatchCreatePlants (count 10) and AdjustLot (decrease_by 0.0001 g, reason
   SCALE_VARIANCE, no etag, no request_id) of one lot holding 1,000,000 g. Mutation replies
   differ in size (ids, timestamps), so success is counted in the database instead: plants
   created, and the lot's quantity decrease next to the ``lot_adjustments`` rows written.
   Afterwards a grpc.aio probe sends AdjustLot calls with the same concurrency and counts every
   reply exactly; GetLot must then show ``before - successes x 0.0001``.

Authentication: every gRPC client (the registry and mutation set-up, the latency client, the
grpc.aio probe and h2load) sends ``authorization: Bearer <JWT>``, one admin token minted at start
with the tests' secret (``tests/support/auth.py``), which the server started through
``ServerProcess`` trusts.

Caveats: one 2-core machine runs the server, PostgreSQL and the client, so absolute numbers drift
between runs; compare figures within one run. The trivial RPC's latency includes the Python
client (sync grpcio, ~0.1-0.3 ms), which the difference column removes. All lots of a part sit
in one license, so the planner may prefer the primary key to the (license_id, ...) indexes; with
many licenses the plans can differ. PostgreSQL runs with the embedded defaults (shared_buffers
128 MB), so at 1M lots (~1 GB with indexes) a page not read recently comes from the OS cache.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime as dt
import functools
import itertools
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import grpc
from bench_rpc import Meter, Target, Verify, frame, h2load_target, machine, table
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2
from seedline.inventory.v1 import inventory_pb2 as inv
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.plant.v1 import plant_pb2 as pl
from seedline.plant.v1 import plant_pb2_grpc
from seedline.type.v1 import quantity_pb2 as qty
from ulid import ULID

from seedline_server.config import Settings
from seedline_server.store import db

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/: the process launcher and the seeding helper the e2e tests use
from tests.e2e.test_grpc import make_license  # noqa: E402
from tests.support import auth  # noqa: E402
from tests.support.stack import ServerProcess  # noqa: E402

T = TypeVar("T")

INVENTORY = "/seedline.inventory.v1.InventoryService/"
PLANTS = "/seedline.plant.v1.PlantService/"
HEALTH = "/grpc.health.v1.Health/Check"
PRODUCT_TYPE = "018NY6XC00PT0000000000BULK"  # the contract's example; any 26 [0-9A-Z] is accepted
STEP_MS = 60_000  # one bulk lot a minute: 1M lots span ~1.9 years
STATUS_MIX = (
    (inv.LOT_STATUS_AVAILABLE, 0.86),
    (inv.LOT_STATUS_QUARANTINED, 0.04),
    (inv.LOT_STATUS_DEPLETED, 0.08),
    (inv.LOT_STATUS_IN_TRANSIT, 0.02),
)
PAGE = 100
WARMUP_CALLS = 20  # untimed ListLots calls before the first measurement
LEVELS, PER_LEVEL = 10, 1_000
ADJUST_STEP = Decimal("0.0001")
LOT_START = Decimal(1_000_000)
# The targets, printed next to the figures; nothing is asserted.
LIST_TARGET_MS, TRACE_TARGET_MS, MUTATION_TARGET = 20.0, 100.0, 0.40

LOT_COLUMNS = (
    "id", "license_id", "display_name", "product_id", "variety_id", "section_id", "quantity", "status",
    "lab_status", "lab_result", "origin", "source_lots", "source_collection", "source_transfer",
    "supplier_license_number", "manifest_number", "state_tag", "state_system_id", "destruction",
    "create_time", "update_time", "version",
)  # fmt: skip
EDGE_COLUMNS = ("source", "target", "operation", "quantity", "unit", "time")


def last(name: str) -> str:
    """The id at the end of a resource name."""
    return name.rsplit("/", 1)[1]


def ts(t: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


def utc_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the same rule as bench_rpc's Target.pct)."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def rpc_error(exc: grpc.RpcError) -> str:
    if isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


class Pg:
    """One asyncpg connection, driven from this synchronous script by its own event loop."""

    def __init__(self, socket_dir: str, database: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: Any = self.run(asyncpg.connect(host=socket_dir, user="postgres", database=database))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def val(self, sql: str, *args: object) -> Any:
        return self.run(self.conn.fetchval(sql, *args))

    def execute(self, sql: str, *args: object) -> None:
        self.run(self.conn.execute(sql, *args))

    def copy(self, table_name: str, rows: Sequence[tuple[object, ...]], columns: tuple[str, ...]) -> float:
        """Binary COPY of ``rows``; returns the seconds it took."""
        t0 = time.perf_counter()
        self.run(self.conn.copy_records_to_table(table_name, records=rows, columns=columns))
        return time.perf_counter() - t0

    def close(self) -> None:
        self.run(self.conn.close())
        self.loop.close()


# --- registry rows, through the public API ---------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """One license's reference rows, by resource name."""

    license: str
    products: list[str]
    whole: list[bool]  # per product: counted in UNIT_EACH, so lot quantities are whole numbers
    sections: list[str]  # inventory sections
    varieties: list[str]

    @property
    def license_id(self) -> str:
        return last(self.license)


PRODUCTS = (  # display name, package type, bulk unit, unit size (g), pack count
    ("Flower (bulk)", lic.PACKAGE_TYPE_BULK, qty.UNIT_GRAM, "", 0),
    ("Trim (bulk)", lic.PACKAGE_TYPE_BULK, qty.UNIT_GRAM, "", 0),
    ("Biomass (bulk)", lic.PACKAGE_TYPE_BULK, qty.UNIT_KILOGRAM, "", 0),
    ("Jar 3.5 g", lic.PACKAGE_TYPE_EACH, qty.UNIT_UNSPECIFIED, "3.5", 0),
    ("Pre-roll 10-pack", lic.PACKAGE_TYPE_PACK, qty.UNIT_UNSPECIFIED, "0.5", 10),
)


def make_registry(ch: grpc.Channel, number: str, products: int, sections: int, varieties: int) -> Registry:
    stub = license_pb2_grpc.LicenseServiceStub(ch)
    company = stub.CreateCompany(lic.CreateCompanyRequest(company=lic.Company(display_name=f"Co {number}")))
    license_ = stub.CreateLicense(
        lic.CreateLicenseRequest(
            license=lic.License(
                company=company.name,
                license_number=number,
                display_name=f"Bench {number}",
                type=lic.LICENSE_TYPE_GROWER_PROCESSOR,
                jurisdiction="US-CO",
                active=True,
            )
        )
    )
    parent = license_.name
    product_names, whole = [], []
    for display, package, unit, size, count in PRODUCTS[:products]:
        p = lic.Product(display_name=display, product_type=PRODUCT_TYPE, package_type=package)
        if package == lic.PACKAGE_TYPE_BULK:
            p.bulk_unit = unit
        else:
            p.unit_size.CopyFrom(qty.Quantity(value=size, unit=qty.UNIT_GRAM))
            p.pack_unit_count = count
        product_names.append(stub.CreateProduct(lic.CreateProductRequest(parent=parent, product=p)).name)
        whole.append(package != lic.PACKAGE_TYPE_BULK)
    section_names = [
        stub.CreateSection(
            lic.CreateSectionRequest(
                parent=parent, section=lic.Section(display_name=f"Vault {i}", type=lic.SECTION_TYPE_INVENTORY)
            )
        ).name
        for i in range(1, sections + 1)
    ]
    variety_names = [
        stub.CreateVariety(
            lic.CreateVarietyRequest(parent=parent, variety=lic.Variety(display_name=f"Cultivar {i}"))
        ).name
        for i in range(1, varieties + 1)
    ]
    return Registry(parent, product_names, whole, section_names, variety_names)


def lot_row(
    reg: Registry, lot_id: str, i: tuple[int, int, int], quantity: Decimal, status: int, ms: int, **kw: Any
) -> tuple[object, ...]:
    """A ``lots`` row in LOT_COLUMNS order; ``i`` = (product, section, variety) indexes."""
    t = utc_ms(ms)
    product, section, variety = i
    failed = status == inv.LOT_STATUS_QUARANTINED
    return (
        lot_id, reg.license_id, kw.get("display_name", ""), last(reg.products[product]),
        last(reg.varieties[variety]), last(reg.sections[section]), quantity, status,
        inv.LOT_LAB_STATUS_FAILED if failed else inv.LOT_LAB_STATUS_NOT_REQUIRED,
        f"{reg.license}/labResults/{ULID.from_timestamp(ms)}" if failed else "",
        kw.get("origin", inv.LOT_ORIGIN_INITIAL), kw.get("source_lots", []), "", "", "", "", "", "", None,
        t, t, 1,
    )  # fmt: skip


def bulk_lots(
    reg: Registry, n: int, start_ms: int, seed: int, chunk: int
) -> Iterator[list[tuple[object, ...]]]:
    """``n`` lots in chunks; ids are ULIDs of their create_time, one STEP_MS apart."""
    rng = random.Random(seed)
    statuses = [s for s, _ in STATUS_MIX]
    cumulative = list(itertools.accumulate(w for _, w in STATUS_MIX))
    for lo in range(0, n, chunk):
        rows = []
        for i in range(lo, min(n, lo + chunk)):
            ms = start_ms + i * STEP_MS
            product = rng.randrange(len(reg.products))
            status = statuses[bisect.bisect(cumulative, rng.random() * cumulative[-1])]
            if status == inv.LOT_STATUS_DEPLETED:
                quantity = Decimal(0)
            elif reg.whole[product]:
                quantity = Decimal(rng.randint(1, 400))
            else:
                quantity = Decimal(rng.randint(1, 50_000_000)).scaleb(-4)
            where = (product, rng.randrange(len(reg.sections)), rng.randrange(len(reg.varieties)))
            rows.append(lot_row(reg, str(ULID.from_timestamp(ms)), where, quantity, status, ms))
        yield rows


# --- sequential latency -------------------------------------------------------------------------


@dataclass
class Series:
    """Latencies of one case, and what came back."""

    name: str
    ms: list[float] = field(default_factory=list)
    items: int = 0  # lots (or nodes) returned in total
    reply_bytes: int = 0
    checks: str = ""
    cpu_s: Counter[str] = field(default_factory=Counter)  # CPU seconds per Meter group: server, pg, ...
    other_s: float = 0.0  # CPU seconds used meanwhile outside the server, PostgreSQL and this script
    wall_s: float = 0.0  # time spent metering

    def cpu_ms(self, group: str) -> float:
        """CPU milliseconds of ``group`` per call."""
        return self.cpu_s[group] * 1000 / max(1, len(self.ms))

    @property
    def other_cores(self) -> float:
        return self.other_s / self.wall_s if self.wall_s else 0.0


class Client:
    """Sequential calls over one channel with raw bytes: (de)serialisation stays outside the timer."""

    def __init__(self, target: str, meter: Meter, token: str) -> None:
        self.meter = meter
        raw = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 << 20)])
        self.channel = auth.with_bearer(raw, token)
        self.health: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(HEALTH)
        self.list_lots: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            INVENTORY + "ListLots"
        )
        self.trace: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            INVENTORY + "TraceLineage"
        )
        self.trivial = Series("trivial: grpc.health.v1.Health/Check")
        self._check = health_pb2.HealthCheckRequest().SerializeToString()

    def call(
        self,
        method: grpc.UnaryUnaryMultiCallable[bytes, bytes],
        body: bytes,
        into: Series,
        trivial: bool = True,
    ) -> bytes:
        """One timed call into ``into``, after one timed trivial call (unless ``trivial`` is False)."""
        if trivial:
            t0 = time.perf_counter()
            self.health(self._check, timeout=30)
            self.trivial.ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        reply = method(body, timeout=120)
        into.ms.append((time.perf_counter() - t0) * 1000)
        into.reply_bytes += len(reply)
        return reply

    @contextlib.contextmanager
    def metered(self, series: Series) -> Iterator[None]:
        """Adds the CPU the server and PostgreSQL spend meanwhile to ``series`` (trivial calls included)."""
        self.meter.start()
        own, t0 = time.process_time(), time.monotonic()
        yield
        cpu, other = self.meter.stop(time.process_time() - own)
        wall = time.monotonic() - t0
        series.cpu_s.update(cpu)
        series.other_s += other * wall
        series.wall_s += wall

    def close(self) -> None:
        self.channel.close()


def lot_matches(req: inv.ListLotsRequest, lot: inv.Lot) -> bool:
    created = (lot.create_time.seconds, lot.create_time.nanos)
    return (
        (not req.product or lot.product == req.product)
        and (not req.section or lot.section == req.section)
        and (not req.variety or lot.variety == req.variety)
        and (not req.statuses or lot.status in req.statuses)
        and (
            not req.HasField("create_time_start")
            or created >= (req.create_time_start.seconds, req.create_time_start.nanos)
        )
        and (
            not req.HasField("create_time_end")
            or created < (req.create_time_end.seconds, req.create_time_end.nanos)
        )
    )


def expected_count(pg: Pg, req: inv.ListLotsRequest) -> int:
    """count(*) of the lots ``req`` selects, in SQL written here (not the server's)."""
    where: list[str] = ["license_id = $1"]
    args: list[object] = [last(req.parent)]
    for column, value in (
        ("product_id", req.product),
        ("section_id", req.section),
        ("variety_id", req.variety),
    ):
        if value:
            args.append(last(value))
            where.append(f"{column} = ${len(args)}")
    if req.statuses:
        args.append(list(req.statuses))
        where.append(f"status = ANY(${len(args)}::smallint[])")
    if req.HasField("create_time_start"):
        args.append(req.create_time_start.ToDatetime(dt.UTC))
        where.append(f"create_time >= ${len(args)}")
    if req.HasField("create_time_end"):
        args.append(req.create_time_end.ToDatetime(dt.UTC))
        where.append(f"create_time < ${len(args)}")
    return int(pg.val(f"SELECT count(*) FROM lots WHERE {' AND '.join(where)}", *args))


@dataclass
class Pager:
    """Follows next_page_token through one filter and checks every page that comes back."""

    request: inv.ListLotsRequest
    repeat_first: bool = False  # always ask for the first page
    token: str = ""
    last_id: str = ""
    seen: int = 0  # lots in the current pass
    passes: list[int] = field(default_factory=list)  # lots returned by each complete pass
    problems: Counter[str] = field(default_factory=Counter)

    def body(self) -> bytes:
        req = inv.ListLotsRequest()
        req.CopyFrom(self.request)
        req.page_token = self.token
        return req.SerializeToString()

    def take(self, reply: bytes) -> int:
        resp = inv.ListLotsResponse.FromString(reply)
        size = self.request.page_size or 20
        if len(resp.lots) > size:
            self.problems[f"page of {len(resp.lots)} > page_size {size}"] += 1
        for lot in resp.lots:
            lot_id = last(lot.name)
            if lot_id <= self.last_id:
                self.problems["ids not strictly increasing"] += 1
            if not lot_matches(self.request, lot):
                self.problems["lot outside the filter"] += 1
            self.last_id = lot_id
        self.seen += len(resp.lots)
        self.token = "" if self.repeat_first else resp.next_page_token
        if not self.token:
            if not self.repeat_first:
                self.passes.append(self.seen)
            self.seen, self.last_id = 0, ""
        return len(resp.lots)

    def summary(self, expected: int | None) -> str:
        out = [f"{n}x {p}" for p, n in self.problems.items()]
        if expected is not None and not self.passes:
            out.append("no complete pass")
        elif expected is not None:
            wrong = [p for p in self.passes if p != expected]
            out.append(
                f"{len(self.passes)} full pass(es) of {expected}: " + ("ok" if not wrong else f"got {wrong}")
            )
        return "; ".join(out) or "ok"


@dataclass
class Case:
    """One latency case: its figures, and one step = one timed call and the checks of its reply."""

    series: Series
    step: Callable[[], None]


def page_case(client: Client, pager: Pager, name: str, trivial: bool = True) -> Case:
    series = Series(name)

    def step() -> None:
        series.items += pager.take(client.call(client.list_lots, pager.body(), series, trivial))

    return Case(series, step)


def run_cases(client: Client, cases: list[Case], calls: int, block: int = 10) -> list[Series]:
    """``calls`` steps of every case, in alternating blocks of ``block``: drift hits all cases alike."""
    for lo in range(0, calls, block):
        for case in cases:
            with client.metered(case.series):
                for _ in range(min(block, calls - lo)):
                    case.step()
    return [c.series for c in cases]


@dataclass(frozen=True)
class Bulk:
    """What was loaded for ListLots."""

    reg: Registry
    lots: int
    start_ms: int
    copy_seconds: float


def load_bulk(pg: Pg, reg: Registry, lots: int, seed: int) -> Bulk:
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - (lots + 60) * STEP_MS
    spent, done, t0 = 0.0, 0, time.perf_counter()
    for rows in bulk_lots(reg, lots, start_ms, seed, chunk=50_000):
        spent += pg.copy("lots", rows, LOT_COLUMNS)
        done += len(rows)
        if sys.stdout.isatty():
            print(f"\r  COPY lots: {done:,}/{lots:,}", end="", flush=True)
    total = time.perf_counter() - t0
    back = "\r" if sys.stdout.isatty() else ""
    print(f"{back}  COPY lots: {lots:,} rows in {spent:.1f}s of COPY ({total:.1f}s with generation)")
    t0 = time.perf_counter()
    pg.execute("VACUUM (ANALYZE) lots")
    pg.execute("CHECKPOINT")
    size = pg.val("SELECT pg_size_pretty(pg_total_relation_size('lots'))")
    print(
        f"  VACUUM (ANALYZE) lots + CHECKPOINT: {time.perf_counter() - t0:.1f}s; lots table + indexes: {size}"
    )
    return Bulk(reg, lots, start_ms, spent)


def list_cases(bulk: Bulk) -> list[tuple[str, inv.ListLotsRequest]]:
    reg = bulk.reg
    mid = bulk.start_ms + bulk.lots // 2 * STEP_MS
    span = max(1, bulk.lots // 10) * STEP_MS  # 10 % of the lots, in the middle
    start, end = ts(utc_ms(mid - span // 2)), ts(utc_ms(mid + span // 2))

    def req(**filters: Any) -> inv.ListLotsRequest:
        return inv.ListLotsRequest(parent=reg.license, page_size=PAGE, **filters)

    product, section, available = reg.products[0], reg.sections[1], [inv.LOT_STATUS_AVAILABLE]
    return [
        ("filter product (1 of 5)", req(product=product)),
        ("filter section (1 of 5)", req(section=section)),
        ("filter status QUARANTINED (4 %)", req(statuses=[inv.LOT_STATUS_QUARANTINED])),
        ("filter created range (10 %)", req(create_time_start=start, create_time_end=end)),
        (
            "combined: product+section+AVAILABLE+range",
            req(
                product=product,
                section=section,
                statuses=available,
                create_time_start=start,
                create_time_end=end,
            ),
        ),
    ]


def measure_list(client: Client, pg: Pg, bulk: Bulk, calls: int) -> tuple[list[Series], dict[str, bytes]]:
    """Every ListLots case; also returns one request body per case for the EXPLAIN capture."""
    everything = inv.ListLotsRequest(parent=bulk.reg.license, page_size=PAGE)
    for _ in range(WARMUP_CALLS):  # discarded: first-use costs in the server (validator, caches, pool)
        client.list_lots(everything.SerializeToString(), timeout=60)
    walker = Pager(everything)
    pages = max(1, bulk.lots // 2 // PAGE)
    print(f"  walking {pages:,} pages to the middle of the set ...", flush=True)
    (walk,) = run_cases(client, [page_case(client, walker, f"walk: pages 1-{pages:,}", trivial=False)], pages)
    walk.checks = walker.summary(None) + f"; reached lot #{walk.items:,}; no trivial calls in this row"

    pagers = {
        "first page (no filter)": Pager(everything, repeat_first=True),
        f"deep: pages {pages + 1:,}-{pages + calls:,}": walker,
        **{name: Pager(req) for name, req in list_cases(bulk)},
    }
    bodies = {name: pager.body() for name, pager in pagers.items()}
    rows = run_cases(client, [page_case(client, pager, name) for name, pager in pagers.items()], calls)
    for series, pager in zip(rows, pagers.values(), strict=True):
        if pager.repeat_first or pager is walker:
            series.checks = pager.summary(None)
        else:
            expected = expected_count(pg, pager.request)
            series.checks = pager.summary(expected) + ("" if pager.passes else f" ({expected:,} match)")
    return [walk, *rows], bodies


def print_latency(title: str, trivial: Series, rows: list[Series], target_ms: float, unit: str) -> None:
    """One row per case: latency, the difference to the trivial RPC, the target, CPU per call."""
    t50, t99 = pct(trivial.ms, 0.5), pct(trivial.ms, 0.99)
    w = max(len(s.name) for s in [trivial, *rows])
    print(f"\n{title}")
    print(f"{'case':{w}} {'calls':>5} {unit:>9} {'KB/reply':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
          f" {'p50-triv':>8} {'p99-triv':>8} {'<=' + format(target_ms, 'g') + ' ms':>8}"
          f"  CPU ms/call: {'server':>6} {'pg':>5}  other cores")  # fmt: skip
    print(
        f"{trivial.name:{w}} {len(trivial.ms):5} {'':>9} {'':>8} {t50:7.2f} {t99:7.2f} {max(trivial.ms):7.2f}"
    )
    for s in rows:
        if not s.ms:
            continue
        p50, p99 = pct(s.ms, 0.5), pct(s.ms, 0.99)
        per, kb = s.items / len(s.ms), s.reply_bytes / len(s.ms) / 1024
        met = "yes" if p99 - t99 <= target_ms else "NO"
        cpu = f"{s.cpu_ms('server'):6.2f} {s.cpu_ms('pg'):5.2f}"
        print(f"{s.name:{w}} {len(s.ms):5} {per:9.1f} {kb:8.1f} {p50:7.2f} {p99:7.2f} {max(s.ms):7.2f}"
              f" {p50 - t50:8.2f} {p99 - t99:8.2f} {met:>8}  {'':12} {cpu} {s.other_cores:6.2f}")  # fmt: skip
    print(
        "p50-triv, p99-triv: the case's percentile minus the trivial RPC's (~ server-side cost); the target"
    )
    print("column compares p99-triv. CPU ms/call: CPU of the server process and of PostgreSQL (postmaster +")
    print("backends) over the case, per call, its trivial call included. other cores: CPU used meanwhile by")
    print(
        "processes outside the benchmark (plus steal); well above 0 = a noisy neighbour, distrust that row."
    )
    print("checks (every reply parsed and verified, outside the timer):")
    for s in rows:
        print(f"  {s.name}: {s.checks}")


# --- the server's SQL, read back from PostgreSQL's log ------------------------------------------

LOG_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] (\w+):  (.*)$")
STATEMENT = re.compile(r"duration: ([\d.]+) ms  (?:execute [^:]+|statement): (.*)", re.DOTALL)
PARAM = re.compile(r"\$(\d+) = ('(?:[^']|'')*'|NULL)")


def log_entries(text: str) -> list[tuple[int, str, str]]:
    """(pid, level, message) per entry; a statement's continuation lines join its entry."""
    entries: list[tuple[int, str, str]] = []
    for line in text.splitlines():
        if m := LOG_ENTRY.match(line):
            entries.append((int(m[1]), m[2], m[3]))
        elif entries:
            pid, level, msg = entries[-1]
            entries[-1] = (pid, level, f"{msg}\n{line}")
    return entries


def capture_sql(
    pg: Pg, log: Path, calls: Mapping[str, Callable[[], object]]
) -> dict[str, list[tuple[float, str, list[str]]]]:
    """Run each call with every statement logged; the server's (duration, SQL, parameters) per call."""
    pg.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
    pg.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)
    offset = log.stat().st_size
    try:
        for name, call in calls.items():
            pg.execute(f"SELECT 'bench-marker {name}'")
            call()
        pg.execute("SELECT 'bench-marker end'")
    finally:
        pg.execute("ALTER SYSTEM RESET log_min_duration_statement")
        pg.execute("SELECT pg_reload_conf()")
    with log.open("rb") as f:
        f.seek(offset)
        entries = log_entries(f.read().decode(errors="replace"))
    me = pg.conn.get_server_pid()
    out: dict[str, list[tuple[float, str, list[str]]]] = {}
    current: list[tuple[float, str, list[str]]] | None = None
    for n, (pid, level, msg) in enumerate(entries):
        if pid == me:
            if marker := re.search(r"'bench-marker (.*)'", msg):
                current = out.setdefault(marker[1], []) if marker[1] != "end" else None
            continue
        st = STATEMENT.match(msg) if level == "LOG" else None
        if current is None or st is None or st[2].strip() == "SELECT 1":
            continue
        params: list[str] = []
        nxt = entries[n + 1] if n + 1 < len(entries) else None
        if nxt and nxt[0] == pid and nxt[1] == "DETAIL" and nxt[2].lower().startswith("parameters:"):
            found = {int(i): v for i, v in PARAM.findall(nxt[2])}
            params = [found[i] for i in sorted(found)]
        current.append((float(st[1]), st[2].strip(), params))
    return out


def explain(pg: Pg, sql: str, params: list[str]) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of ``sql`` prepared, after 5 executions (the plan a pooled
    connection's cached statement settles on)."""
    execute = f"EXECUTE bench_q({', '.join(params)})" if params else "EXECUTE bench_q"
    pg.execute(f"PREPARE bench_q AS {sql}")
    try:
        for _ in range(5):
            pg.execute(execute)
        rows = pg.run(pg.conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {execute}"))
    finally:
        pg.execute("DEALLOCATE bench_q")
    return [str(r[0]) for r in rows]


def print_plans(pg: Pg, client: Client, log: Path, bodies: dict[str, bytes]) -> None:
    print("\nthe server's SQL per ListLots call (log_min_duration_statement = 0 for one call per case),")
    print("and EXPLAIN (ANALYZE, BUFFERS) of its query on lots, prepared here and executed 5 times first:")
    try:
        calls = {n: functools.partial(client.list_lots, b, timeout=60) for n, b in bodies.items()}
        captured = capture_sql(pg, log, calls)
    except (OSError, grpc.RpcError, asyncpg.PostgresError) as exc:
        print(f"  not captured: {exc}")
        return
    for name, statements in captured.items():
        words = [
            " ".join([sql.split()[0].rstrip(";"), *re.findall(r"\bFROM (\w+)", sql)[:1]])
            for _, sql, _ in statements
        ]
        total = sum(d for d, _, _ in statements)
        print(f"  {name}: {len(statements)} statements ({', '.join(words)}), {total:.2f} ms in PostgreSQL")
        lots_sql = next(((s, p) for _, s, p in statements if re.search(r"\bFROM lots\b", s)), None)
        if lots_sql is None:
            continue
        print(f"    {' '.join(lots_sql[0].split()[lots_sql[0].split().index('FROM') :])[:300]}")
        try:
            plan = explain(pg, *lots_sql)
        except asyncpg.PostgresError as exc:
            print(f"    EXPLAIN failed: {exc}")
            continue
        nodes = [ln for i, ln in enumerate(plan) if i == 0 or ln.lstrip().startswith("->")]
        for ln in nodes[:5]:
            print("    " + re.sub(r"\s*\(cost=[^)]*\)", "", ln).rstrip())
        buffers = next((ln.strip() for ln in plan if ln.strip().startswith("Buffers:")), "")
        timing = [ln.strip() for ln in plan if ln.startswith(("Planning Time", "Execution Time"))]
        print(f"    {buffers}; {'; '.join(timing)}")


# --- TraceLineage ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Graph:
    """The generated lineage graph, by lot name."""

    levels: list[list[str]]
    children: dict[str, list[str]]
    parents: dict[str, list[str]]

    def reach(self, start: str, forward: bool, max_depth: int) -> dict[str, int]:
        """Breadth-first: every node within ``max_depth`` edges, with its depth."""
        nxt, depth, todo = (self.children if forward else self.parents), {start: 0}, deque([start])
        while todo:
            node = todo.popleft()
            if depth[node] < max_depth:
                for other in nxt.get(node, []):
                    if other not in depth:
                        depth[other] = depth[node] + 1
                        todo.append(other)
        return depth


def load_graph(pg: Pg, reg: Registry, seed: int) -> Graph:
    rng = random.Random(seed)
    start_ms = int(time.time() * 1000) - 30 * 86_400_000  # a month ago, one level every ~3 days
    levels: list[list[str]] = []
    children: dict[str, list[str]] = {}
    parents: dict[str, list[str]] = {}
    lot_rows, edge_rows = [], []
    for level in range(LEVELS):
        names = []
        for j in range(PER_LEVEL):
            ms = start_ms + level * 259_200_000 + j * 1000
            name = f"{reg.license}/lots/{ULID.from_timestamp(ms)}"
            names.append(name)
            ups = rng.sample(levels[-1], rng.randint(1, 3)) if levels else []
            op = inv.LINEAGE_OPERATION_SPLIT if len(ups) == 1 else inv.LINEAGE_OPERATION_CONVERSION
            origin = {0: inv.LOT_ORIGIN_INITIAL, 1: inv.LOT_ORIGIN_SPLIT}.get(
                len(ups), inv.LOT_ORIGIN_CONVERSION
            )
            lot_rows.append(
                lot_row(reg, last(name), (0, 0, 0), Decimal(100), inv.LOT_STATUS_AVAILABLE, ms,
                        origin=origin, source_lots=ups, display_name=f"L{level}-{j}")
            )  # fmt: skip
            for up in ups:
                edge_rows.append((up, name, op, Decimal("100") / len(ups), qty.UNIT_GRAM, utc_ms(ms)))
                children.setdefault(up, []).append(name)
                parents.setdefault(name, []).append(up)
        levels.append(names)
    spent = pg.copy("lots", lot_rows, LOT_COLUMNS) + pg.copy("lineage_edges", edge_rows, EDGE_COLUMNS)
    pg.execute("ANALYZE lots")
    pg.execute("ANALYZE lineage_edges")
    print(f"  COPY {len(lot_rows):,} lots + {len(edge_rows):,} lineage_edges in {spent:.1f}s; ANALYZE")
    return Graph(levels, children, parents)


def trace_check(graph: Graph, start: str, forward: bool, cap: int, resp: inv.TraceLineageResponse) -> str:
    want = graph.reach(start, forward, 10)
    got = [n.name for n in resp.nodes]
    problems = []
    if not got or got[0] != start:
        problems.append("starting lot not first")
    if len(got) != min(len(want), cap):
        problems.append(f"{len(got)} nodes, expected min({len(want)} reachable, {cap})")
    if resp.truncated != (len(want) > cap):
        problems.append(f"truncated={resp.truncated}, expected {len(want) > cap}")
    if stray := [n for n in got if n not in want]:
        problems.append(f"{len(stray)} nodes not reachable")
    if bad := [n for n in resp.nodes if n.name in want and n.depth != want[n.name]]:
        problems.append(f"{len(bad)} nodes with a wrong depth")
    if any(a.depth > b.depth for a, b in itertools.pairwise(resp.nodes)):
        problems.append("nodes not ordered by depth")
    kept = set(got)
    expected_edges = {(u, v) for v in kept for u in graph.parents.get(v, []) if u in kept}
    got_edges = {(e.source, e.target) for e in resp.edges}
    if got_edges != expected_edges:
        problems.append(
            f"edges: {len(got_edges - expected_edges)} unexpected, {len(expected_edges - got_edges)} missing "
            f"of {len(expected_edges)} between returned nodes"
        )
    if missing_lot := sum(1 for n in resp.nodes if not n.HasField("lot")):
        problems.append(f"{missing_lot} nodes without their lot")
    return f"{len(want):,} reachable; " + ("; ".join(problems) or "ok")


def trace_case(client: Client, series: Series, body: bytes) -> tuple[Case, list[bytes]]:
    """A TraceLineage case, and a one-element list that holds its latest reply."""
    latest = [b""]

    def step() -> None:
        latest[0] = client.call(client.trace, body, series)
        series.items += len(inv.TraceLineageResponse.FromString(latest[0]).nodes)

    return Case(series, step), latest


def measure_trace(client: Client, graph: Graph, calls: int) -> list[Series]:
    cases, replies, starts = [], [], []
    for forward, start in ((True, graph.levels[0][0]), (False, graph.levels[-1][0])):
        for cap in (0, 5000):
            direction = inv.TRACE_DIRECTION_FORWARD if forward else inv.TRACE_DIRECTION_BACKWARD
            body = inv.TraceLineageRequest(name=start, direction=direction, max_depth=10, max_nodes=cap)
            label = f"{'FORWARD from level 0' if forward else 'BACKWARD from level 9'}, max_nodes {cap}"
            client.trace(body.SerializeToString(), timeout=120)  # warm-up, discarded
            case, latest = trace_case(client, Series(label), body.SerializeToString())
            cases.append(case)
            replies.append(latest)
            starts.append((start, forward, cap or 1000))
    rows = run_cases(client, cases, calls)
    for series, latest, (start, forward, cap) in zip(rows, replies, starts, strict=True):
        resp = inv.TraceLineageResponse.FromString(latest[0])
        series.checks = (
            f"{len(resp.nodes)} nodes, {len(resp.edges)} edges, truncated={resp.truncated}; "
            + trace_check(graph, start, forward, cap, resp)
            + " (last reply)"
        )
    return rows


# --- mutation throughput ------------------------------------------------------------------------


class RowDelta:
    """Success = rows added to a table (``per`` rows per request)."""

    def __init__(self, pg: Pg, sql: str, arg: str, per: int, what: str) -> None:
        self.pg, self.sql, self.arg, self.per, self.what = pg, sql, arg, per, what
        self.start = 0

    def before(self) -> None:
        self.start = int(self.pg.val(self.sql, self.arg))

    def after(self, done: int, data_bytes: int) -> tuple[int, str]:
        added = int(self.pg.val(self.sql, self.arg)) - self.start
        return added // self.per, f"{added} {self.what} created by {done} requests ({data_bytes} B DATA)"


class Sessions:
    """Wraps another check and adds the PostgreSQL sessions opened during the round: the server's
    pool opens overflow connections when more than pool_size are checked out at once, and closes
    them again on check-in. From pg_stat_database, whose counters may lag by about a second."""

    SQL = "SELECT sum(sessions) FROM pg_stat_database"

    def __init__(self, pg: Pg, inner: Verify) -> None:
        self.pg, self.inner, self.start = pg, inner, 0

    def before(self) -> None:
        self.inner.before()
        self.start = int(self.pg.val(self.SQL))

    def after(self, done: int, data_bytes: int) -> tuple[int, str]:
        opened = int(self.pg.val(self.SQL)) - self.start
        ok, detail = self.inner.after(done, data_bytes)
        return ok, f"{detail}; {opened} PostgreSQL sessions opened"


class LotDrain:
    """Success = the lot's quantity decrease / 0.0001, shown next to the lot_adjustments rows added."""

    def __init__(self, pg: Pg, lot_id: str) -> None:
        self.pg, self.lot_id = pg, lot_id
        self.q0, self.a0 = Decimal(0), 0

    def state(self) -> tuple[Decimal, int]:
        q = self.pg.val("SELECT quantity FROM lots WHERE id = $1", self.lot_id)
        a = self.pg.val("SELECT count(*) FROM lot_adjustments WHERE lot_id = $1", self.lot_id)
        return Decimal(q), int(a)

    def before(self) -> None:
        self.q0, self.a0 = self.state()

    def after(self, done: int, data_bytes: int) -> tuple[int, str]:
        q1, a1 = self.state()
        fell = int((self.q0 - q1) / ADJUST_STEP)
        flag = "" if fell == a1 - self.a0 else "  <-- MISMATCH"
        return (
            fell,
            f"quantity fell {fell} x 0.0001 g, lot_adjustments +{a1 - self.a0}{flag}; {done} requests",
        )


@dataclass(frozen=True)
class MutationSetup:
    license: str
    crop_section: str
    variety: str
    lot: str | None  # None when CreateLot failed: AdjustLot is then skipped


def setup_mutations(ch: grpc.Channel) -> MutationSetup:
    """A license (make_license: crop section + variety), and a lot of 1,000,000 g from CreateLot."""
    license_, crop, variety = make_license(ch, "BENCH-MUT")
    stub = license_pb2_grpc.LicenseServiceStub(ch)
    flower = lic.Product(
        display_name="Flower",
        product_type=PRODUCT_TYPE,
        package_type=lic.PACKAGE_TYPE_BULK,
        bulk_unit=qty.UNIT_GRAM,
    )
    product = stub.CreateProduct(lic.CreateProductRequest(parent=license_, product=flower))
    vault = lic.Section(display_name="Vault", type=lic.SECTION_TYPE_INVENTORY)
    section = stub.CreateSection(lic.CreateSectionRequest(parent=license_, section=vault))
    lot = inv.Lot(
        product=product.name,
        variety=variety,
        section=section.name,
        quantity=qty.Quantity(value=str(LOT_START), unit=qty.UNIT_GRAM),
        source=inv.LotSource(origin=inv.LOT_ORIGIN_INITIAL),
    )
    try:
        created = inventory_pb2_grpc.InventoryServiceStub(ch).CreateLot(
            inv.CreateLotRequest(parent=license_, lot=lot)
        )
    except grpc.RpcError as exc:
        print(f"  CreateLot failed, AdjustLot is skipped: {rpc_error(exc)}")
        return MutationSetup(license_, crop, variety, None)
    return MutationSetup(license_, crop, variety, created.name)


def adjust_request(lot: str) -> inv.AdjustLotRequest:
    return inv.AdjustLotRequest(
        name=lot,
        decrease_by=qty.Quantity(value=str(ADJUST_STEP), unit=qty.UNIT_GRAM),
        reason=inv.ADJUSTMENT_REASON_SCALE_VARIANCE,
    )


async def adjust_probe(target: str, lot: str, conc: int, each: int, token: str) -> tuple[int, Counter[str]]:
    """``conc`` tasks x ``each`` AdjustLot calls; the exact count of OK replies and errors by code."""
    errors: Counter[str] = Counter()
    ok = 0
    metadata = auth.bearer(token)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = inventory_pb2_grpc.InventoryServiceStub(ch)

        async def worker() -> None:
            nonlocal ok
            for _ in range(each):
                try:
                    await stub.AdjustLot(adjust_request(lot), timeout=60, metadata=metadata)
                    ok += 1
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1

        await asyncio.gather(*(worker() for _ in range(conc)))
    return ok, errors


def measure_mutations(
    a: argparse.Namespace, server: ServerProcess, pg: Pg, pg_pid: int, work: Path, token: str
) -> None:
    if server.proc is None:
        raise RuntimeError("the server is not running")
    m = Meter(server.proc.pid, None, pg_pid)
    c, url = a.concurrency, f"http://{server.target}"
    health = work / "health.bin"
    health.write_bytes(frame(health_pb2.HealthCheckRequest().SerializeToString()))
    health_size = len(frame(health_pb2.HealthCheckResponse(status=1).SerializeToString()))
    targets = [h2load_target("trivial: gRPC Health/Check", url + HEALTH, health, health_size, c, m, token)]

    def add(name: str, method: str, request: bytes, verify: Verify) -> None:
        body = work / f"{len(targets)}.bin"
        body.write_bytes(frame(request))
        targets.append(h2load_target(name, url + method, body, Sessions(pg, verify), c, m, token))

    with auth.with_bearer(grpc.insecure_channel(server.target), token) as ch:
        setup = setup_mutations(ch)
        plants = plant_pb2_grpc.PlantServiceStub(ch)
        template = pl.Plant(variety=setup.variety, section=setup.crop_section)
        create = pl.CreatePlantRequest(parent=setup.license, plant=template)
        batch = pl.BatchCreatePlantsRequest(parent=setup.license, plant=template, count=10)
        # One real call of each with the Python stubs first, so the load sends requests known to work.
        plants.CreatePlant(create)
        if (n := len(plants.BatchCreatePlants(batch).plants)) != 10:
            print(f"  BatchCreatePlants(count 10) returned {n} plants")
        count_plants = "SELECT count(*) FROM plants WHERE license_id = $1"
        license_id = last(setup.license)
        add(
            "CreatePlant",
            PLANTS + "CreatePlant",
            create.SerializeToString(),
            RowDelta(pg, count_plants, license_id, 1, "plants"),
        )
        add("BatchCreatePlants (count 10)", PLANTS + "BatchCreatePlants", batch.SerializeToString(),
            RowDelta(pg, count_plants, license_id, 10, "plants"))  # fmt: skip
        drained = None  # the lot AdjustLot runs on, once one real call succeeded
        if setup.lot is not None:
            try:
                inventory_pb2_grpc.InventoryServiceStub(ch).AdjustLot(adjust_request(setup.lot))
                add("AdjustLot (decrease_by 0.0001 g, 1 lot)", INVENTORY + "AdjustLot",
                    adjust_request(setup.lot).SerializeToString(), LotDrain(pg, last(setup.lot)))  # fmt: skip
                drained = setup.lot
            except grpc.RpcError as exc:
                print(f"  AdjustLot failed, skipped: {rpc_error(exc)}")

    for t in targets:
        t.measure(a.warmup)
    for _ in range(a.rounds):
        for t in targets:
            t.rounds.append(t.measure(a.duration))
    print(f"\nmutation throughput: 1 connection x {c} concurrent streams (h2load over h2c), {a.warmup}s "
          f"warm-up per target, then {a.rounds} alternating rounds of ~{a.duration}s; server defaults "
          f"(db_pool_size={Settings.model_fields['db_pool_size'].default})")  # fmt: skip
    table(targets, keys=("server", "pg", "client"))
    print("  (for mutations, ok = successes counted in the database: plants created, or the lot's decrease)")
    print_ratios(targets)
    if drained is not None:
        check_lot(server.target, pg, drained, c, token)


def print_ratios(targets: list[Target]) -> None:
    trivial = targets[0]
    print("\nsuccessful req/s / trivial req/s (median of the per-round ratios, then each round's; "
          f"target >= {MUTATION_TARGET:.0%} for single-row mutations):")  # fmt: skip
    for t in targets[1:]:
        ratios = [r.ok / r.seconds / tr.rps for r, tr in zip(t.rounds, trivial.rounds, strict=True) if tr.rps]
        med = statistics.median(ratios) if ratios else float("nan")
        single = not t.name.startswith("Batch")
        verdict = ("met" if med >= MUTATION_TARGET else "NOT met") if single else "n/a (10 rows per request)"
        extra = ""
        if not single:
            per_s = statistics.median(r.ok * 10 / r.seconds for r in t.rounds)
            extra = f"; {per_s:.0f} plants/s"
        print(f"  {t.name:40} {med:6.1%}  ({' '.join(f'{x:.0%}' for x in ratios)})  target: {verdict}{extra}")


def check_lot(target: str, pg: Pg, lot: str, conc: int, token: str) -> None:
    """Quantity bookkeeping after the load, then an exact client-side count with grpc.aio."""
    with auth.with_bearer(grpc.insecure_channel(target), token) as ch:
        stub = inventory_pb2_grpc.InventoryServiceStub(ch)
        final = Decimal(stub.GetLot(inv.GetLotRequest(name=lot)).quantity.value)
        adjustments = int(pg.val("SELECT count(*) FROM lot_adjustments WHERE lot_id = $1", last(lot)))
        expected = LOT_START - adjustments * ADJUST_STEP
        print(f"\nAdjustLot bookkeeping: started at {LOT_START} g; GetLot now says {final} g; the server "
              f"recorded {adjustments} adjustments (lot_adjustments rows) -> expected {expected} g: "
              f"{'equal' if final == expected else 'DIFFERENT'}")  # fmt: skip
        each = 50
        ok, errors = pg.run(adjust_probe(target, lot, conc, each, token))
        after = Decimal(stub.GetLot(inv.GetLotRequest(name=lot)).quantity.value)
    want = final - ok * ADJUST_STEP
    verdict = "yes" if after == want else "NO"
    print(f"probe ({conc} concurrent grpc.aio callers x {each}): {ok} OK, errors {dict(errors) or 'none'}; "
          f"GetLot {after} g = {final} - {ok} x 0.0001 = {want}: {verdict}")  # fmt: skip


# --- main -----------------------------------------------------------------------------------------


def section(title: str, body: Callable[[], None]) -> None:
    """Run one part; a failing RPC is reported and the next part still runs."""
    print(f"\n=== {title} ===", flush=True)
    try:
        body()
    except grpc.RpcError as exc:
        print(f"  FAILED: {rpc_error(exc)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="sanity run: 100,000 lots, fewer calls, short rounds")
    p.add_argument("--lots", type=int, help="lots in the ListLots license (default 1,000,000; quick 100,000)")
    p.add_argument("--calls", type=int, help="sequential calls per ListLots case (default 300; quick 100)")
    p.add_argument("--trace-calls", type=int, help="calls per TraceLineage case (default 100; quick 20)")
    p.add_argument("--concurrency", type=int, default=16, help="h2load streams in flight (mutations)")
    p.add_argument("--duration", type=int, help="seconds per mutation round (default 4; quick 2)")
    p.add_argument("--rounds", type=int, help="alternating mutation rounds (default 3; quick 2)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per mutation target")
    p.add_argument("--seed", type=int, default=20261123, help="random seed of the generated data")
    a = p.parse_args()
    q = a.quick
    a.lots = a.lots or (100_000 if q else 1_000_000)
    a.calls = a.calls or (100 if q else 300)
    a.trace_calls = a.trace_calls or (20 if q else 100)
    a.duration = a.duration or (2 if q else 4)
    a.rounds = a.rounds or (2 if q else 3)
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="seedline-bench-inv-"))
    pg_data = work / "pg"
    server: ServerProcess | None = None
    pg_started = False
    conn: Pg | None = None
    client: Client | None = None
    try:
        pg = db.start_embedded(pg_data, database="seedline_bench")
        pg_started = True
        url = pg.url("seedline_bench")
        asyncio.run(db.migrate(url))
        server = ServerProcess(database_url=url, data_dir=work / "server")
        server.start()
        if pg.pid is None or server.proc is None:
            raise RuntimeError("the stack did not start")
        machine(pg_data)
        print(f"settings  --lots {a.lots:,} --calls {a.calls} --trace-calls {a.trace_calls} "
              f"--concurrency {a.concurrency} --duration {a.duration} --rounds {a.rounds}")  # fmt: skip
        conn = Pg(pg.socket_dir, "seedline_bench")
        token = auth.mint()  # admin on every license; 1 h, longer than a run
        client = Client(server.target, Meter(server.proc.pid, None, pg.pid), token)
        pgc, cl, srv, pg_pid = conn, client, server, pg.pid

        def part_list() -> None:
            with auth.with_bearer(grpc.insecure_channel(srv.target), token) as ch:
                reg = make_registry(ch, "BENCH-LIST", products=5, sections=5, varieties=3)
            print(f"  registry through gRPC: {reg.license}, 5 products, 5 inventory sections, 3 varieties")
            loaded = load_bulk(pgc, reg, a.lots, a.seed)
            print(f"  COPY rate (baseline): {loaded.lots / loaded.copy_seconds:,.0f} rows/s")
            cl.trivial = Series(cl.trivial.name)
            rows, bodies = measure_list(cl, pgc, loaded, a.calls)
            print_latency(
                f"ListLots, {a.lots:,} lots in one license, page_size {PAGE}; sequential, 1 client; "
                f"target: p99 server-side (p99 - trivial p99) <= {LIST_TARGET_MS:g} ms",
                cl.trivial, rows, LIST_TARGET_MS, "lots/page",
            )  # fmt: skip
            print_plans(pgc, cl, pg_data / "log", bodies)

        def part_trace() -> None:
            with auth.with_bearer(grpc.insecure_channel(srv.target), token) as ch:
                reg = make_registry(ch, "BENCH-LINEAGE", products=1, sections=1, varieties=1)
            graph = load_graph(pgc, reg, a.seed)
            cl.trivial = Series(cl.trivial.name)
            rows = measure_trace(cl, graph, a.trace_calls)
            print_latency(
                f"TraceLineage, {LEVELS} levels x {PER_LEVEL:,} lots, 1-3 parents each; max_depth 10; "
                f"target: p99 <= {TRACE_TARGET_MS:g} ms",
                cl.trivial, rows, TRACE_TARGET_MS, "nodes",
            )  # fmt: skip

        section(f"ListLots at {a.lots:,} lots", part_list)
        section("TraceLineage", part_trace)
        section("mutation throughput", lambda: measure_mutations(a, srv, pgc, pg_pid, work, token))
        print("\nAbsolute figures drift on a shared machine: compare within one run.")
        return 0
    finally:
        if client is not None:
            client.close()
        if conn is not None:
            conn.close()
        if server is not None:
            server.stop()
        if pg_started:
            db.stop_embedded(pg_data)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
