"""``seedline import openthc``: OpenTHC JSON objects into Seedline through the gRPC API.

Files hold one object, a list of objects, or an OpenTHC response (``{"data": ...}``); the kind
comes from the file name (``section.json``, ``varieties.json``) or its folder (``plant/x.json``).
Objects are imported kind by kind (companies first, lots last) through the public create calls,
so access checks, validation and audit apply as to any client. Every create carries a request id
derived from the OpenTHC id, so importing again creates nothing new. A bad object is reported
(file, index, field, message) and the rest go on.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.plant.v1 import plant_pb2_grpc

from seedline_server import cli_grpc
from seedline_server import openthc_mapping as m


class Unavailable(Exception):
    """The server could not be reached or is unavailable: the import stopped (re-run it later)."""


@dataclass(frozen=True)
class ObjectError:
    """Why one object (or a whole file, index -1) was not imported."""

    file: str
    index: int
    field: str
    message: str

    def describe(self) -> str:
        """``file[index] field: message``."""
        where = self.file if self.index < 0 else f"{self.file}[{self.index}]"
        return f"{where} {self.field or '-'}: {self.message}"


@dataclass(frozen=True)
class Item:
    """One OpenTHC object found in a file."""

    file: str
    index: int
    kind: str
    obj: Any


@dataclass
class Report:
    """What an import did."""

    created: Counter[str] = field(default_factory=Counter)
    existing: Counter[str] = field(default_factory=Counter)  # imported before: the create replayed
    errors: list[ObjectError] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)


def _objects(data: Any) -> list[Any]:
    if isinstance(data, dict) and "data" in data and "id" not in data:
        data = data["data"]
    return data if isinstance(data, list) else [data]


def collect(paths: list[Path], report: Report) -> list[Item]:
    """The objects in ``paths`` (files, or folders searched for ``*.json``), in import order."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    items: list[Item] = []
    for file in files:
        kind = m.kind_of(file.stem) or m.kind_of(file.parent.name)
        if kind is None:
            report.skipped.append((str(file), f"not a kind Seedline imports ({', '.join(m.KINDS)})"))
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            report.errors.append(ObjectError(str(file), -1, "", f"not readable JSON: {exc}"))
            continue
        items.extend(Item(str(file), i, kind, obj) for i, obj in enumerate(_objects(data)))
    return sorted(items, key=lambda item: m.KINDS.index(item.kind))


class Importer:
    """Creates the objects through the API, remembering what each OpenTHC id became."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None, options: m.Options) -> None:
        """Import over ``channel`` with ``token``'s rights."""
        self._md = cli_grpc.metadata(token)
        self._options = options
        self._licenses = license_pb2_grpc.LicenseServiceStub(channel)
        self._plants = plant_pb2_grpc.PlantServiceStub(channel)
        self._lots = inventory_pb2_grpc.InventoryServiceStub(channel)
        self._refs = m.Refs()
        self._default_sections: dict[tuple[str, str], str] = {}
        self._began = datetime.now(UTC)
        self.report = Report()

    async def run(self, items: list[Item], on_progress: Callable[[int], None] | None = None) -> Report:
        """Import ``items`` one by one; errors are recorded per object.

        Raises:
            Unavailable: the server is unreachable or unavailable (what was imported stays).

        """
        for item in items:
            try:
                await self._one(item)
            except m.Invalid as exc:
                self.report.errors.append(ObjectError(item.file, item.index, exc.field, exc.message))
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    # The server (or its database) is down: every other object would fail alike.
                    raise Unavailable(cli_grpc.describe_error(err)) from None
                violations = cli_grpc.field_violations(err)
                if violations:
                    self.report.errors.extend(
                        ObjectError(item.file, item.index, f, f"{err.code().name}: {d}")
                        for f, d in violations
                    )
                else:
                    self.report.errors.append(
                        ObjectError(item.file, item.index, "", cli_grpc.describe_error(err))
                    )
            if on_progress is not None:
                on_progress(1)
        return self.report

    async def _create(self, kind: str, call: Callable[..., Awaitable[Any]], request: Any) -> Any:
        made = await call(request, metadata=self._md)
        fresh = made.create_time.ToDatetime(tzinfo=UTC) >= self._began
        (self.report.created if fresh else self.report.existing)[kind] += 1
        return made

    async def _section(self, obj: dict[str, Any], parent: str, kind: str) -> str:
        if obj.get("section") is not None:
            return self._refs.get("section", obj, "section")
        key = (parent, kind)
        if key not in self._default_sections:
            made = await self._create(
                "section", self._licenses.CreateSection, m.default_section(parent, kind)
            )
            self._default_sections[key] = made.name
        return self._default_sections[key]

    async def _one(self, item: Item) -> None:
        obj = item.obj
        openthc_id = m.object_id(obj)
        refs = self._refs
        name: str
        if item.kind == "company":
            name = (
                await self._create(
                    "company", self._licenses.CreateCompany, m.company_request(obj, self._options)
                )
            ).name
        elif item.kind == "license":
            inner = obj.get("company")
            company_id = inner.get("id") if isinstance(inner, dict) else None
            company = refs.names.get(("company", company_id)) if isinstance(company_id, str) else None
            request = m.license_request(
                obj, company or "companies/" + "0" * 26, self._options
            )  # validate first
            if company is None:
                made = await self._create(
                    "company", self._licenses.CreateCompany, m.embedded_company(obj, self._options)
                )
                company = made.name
                refs.names[("company", str(company_id))] = company
                request.license.company = company
            name = (await self._create("license", self._licenses.CreateLicense, request)).name
        elif item.kind == "section":
            parent = refs.get("license", obj, "license")
            request_section = m.section_request(obj, parent)
            name = (await self._create("section", self._licenses.CreateSection, request_section)).name
        elif item.kind == "variety":
            parent = refs.get("license", obj, "license")
            request_variety = m.variety_request(obj, parent)
            name = (await self._create("variety", self._licenses.CreateVariety, request_variety)).name
        elif item.kind == "product":
            parent = refs.get("license", obj, "license")
            made_product: lic.Product = await self._create(
                "product", self._licenses.CreateProduct, m.product_request(obj, parent)
            )
            name = made_product.name
            refs.products[name] = made_product
        elif item.kind == "plant":
            parent = refs.get("license", obj, "license")
            variety = refs.get("variety", obj, "variety")
            m.plant_request(obj, parent, variety, parent + "/sections/-")  # validate before any create
            section = await self._section(obj, parent, "plant")
            request_plant = m.plant_request(obj, parent, variety, section)
            name = (await self._create("plant", self._plants.CreatePlant, request_plant)).name
        else:  # inventory
            parent = refs.get("license", obj, "license")
            product = refs.products[refs.get("product", obj, "product")]
            variety = refs.get("variety", obj, "variety") if obj.get("variety") is not None else ""
            m.lot_request(obj, parent, product, variety, parent + "/sections/-")  # validate before any create
            section = await self._section(obj, parent, "inventory")
            request_lot = m.lot_request(obj, parent, product, variety, section)
            name = (await self._create("inventory", self._lots.CreateLot, request_lot)).name
        refs.names[(item.kind, openthc_id)] = name


async def import_paths(
    target: str,
    paths: list[Path],
    options: m.Options,
    *,
    token: str | None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Report:
    """Import the OpenTHC objects under ``paths`` into the server at ``target``.

    Args:
        target: host:port of the server's direct gRPC listener.
        paths: Files and folders of OpenTHC JSON.
        options: What the objects do not carry (jurisdiction, default license type).
        token: Bearer token (JWT, session token or API key) sent with every call.
        on_total: Called once with the number of objects found.
        on_progress: Called with 1 after each object.

    Returns:
        Counts by kind of created and already-imported objects, the errors and the skipped files.

    """
    async with grpc.aio.insecure_channel(target) as channel:
        importer = Importer(channel, token, options)
        items = collect(paths, importer.report)
        if on_total is not None:
            on_total(len(items))
        return await importer.run(items, on_progress)


def describe(report: Report) -> list[str]:
    """The summary lines printed after an import."""
    lines = [f"skipped {file}: {why}" for file, why in report.skipped]
    lines.extend(f"ERROR {e.describe()}" for e in report.errors)
    for kind in m.KINDS:
        if report.created[kind] or report.existing[kind]:
            lines.append(
                f"{kind:<10} created {report.created[kind]}, already imported {report.existing[kind]}"
            )
    created, existing = sum(report.created.values()), sum(report.existing.values())
    lines.append(f"imported: {created} created, {existing} already there, {len(report.errors)} error(s)")
    return lines
