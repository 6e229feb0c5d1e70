"""`seedline import openthc` against the real server: OpenTHC's own JSON examples go in once.

The examples (tests/fixtures/openthc) become a company, a license, sections, a variety, a product,
plants and a lot; importing them again creates nothing; a malformed object is reported with its
file, index and field while the others are imported; a lab result file is skipped and said so.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import grpc
from seedline.inventory.v1 import inventory_pb2 as inv
from seedline.inventory.v1 import inventory_pb2_grpc
from seedline.license.v1 import license_pb2 as lic
from seedline.license.v1 import license_pb2_grpc
from seedline.plant.v1 import plant_pb2 as pl
from seedline.plant.v1 import plant_pb2_grpc
from seedline.type.v1 import quantity_pb2 as qty
from typer.testing import CliRunner

from seedline_server.cli import app
from tests.support import auth
from tests.support.stack import EdgeProcess

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openthc"


def examples(tmp: Path) -> tuple[Path, str]:
    """The fixture folder with a license code of its own (the e2e database may be reused)."""
    folder = tmp / "openthc"
    shutil.copytree(FIXTURES, folder)
    code = f"OTHC-{uuid.uuid4().hex[:10].upper()}"
    license_file = folder / "license.json"
    data = json.loads(license_file.read_text())
    data["code"] = code
    license_file.write_text(json.dumps(data))
    return folder, code


def run_import(stack: EdgeProcess, namespace: str, *paths: Path) -> tuple[int, str]:
    args = ["import", "openthc", *map(str, paths), "--jurisdiction", "US-WA", "--license-type", "grower"]
    args += ["--namespace", namespace, "--target", stack.server.target]
    result = CliRunner().invoke(app, args, env={"SEEDLINE_TOKEN": auth.mint()})
    return result.exit_code, result.output


def find_license(channel: grpc.Channel, code: str) -> lic.License:
    stub = license_pb2_grpc.LicenseServiceStub(channel)
    token = ""
    while True:
        page = stub.ListLicenses(lic.ListLicensesRequest(page_size=100, page_token=token))
        for found in page.licenses:
            if found.license_number == code:
                return found
        token = page.next_page_token
        if not token:
            raise AssertionError(f"no license {code}")


def holdings(channel: grpc.Channel, license_name: str) -> dict[str, list[str]]:
    """What the license holds, by kind: display names (and lot quantities)."""
    licenses = license_pb2_grpc.LicenseServiceStub(channel)
    sections = licenses.ListSections(lic.ListSectionsRequest(parent=license_name, page_size=100)).sections
    varieties = licenses.ListVarieties(lic.ListVarietiesRequest(parent=license_name, page_size=100)).varieties
    products = licenses.ListProducts(lic.ListProductsRequest(parent=license_name, page_size=100)).products
    plants = plant_pb2_grpc.PlantServiceStub(channel).ListPlants(
        pl.ListPlantsRequest(parent=license_name, page_size=100)
    )
    lots = inventory_pb2_grpc.InventoryServiceStub(channel).ListLots(
        inv.ListLotsRequest(parent=license_name, page_size=100)
    )
    return {
        "sections": sorted(s.display_name for s in sections),
        "varieties": sorted(v.display_name for v in varieties),
        "products": sorted(p.display_name for p in products),
        "plants": sorted(p.display_name for p in plants.plants),
        "lots": sorted(f"{lot.quantity.value} {qty.Unit.Name(lot.quantity.unit)}" for lot in lots.lots),
    }


def test_the_openthc_examples_import_once_and_again_without_duplicates(
    stack: EdgeProcess, channel: grpc.Channel, tmp_path: Path
) -> None:
    folder, code = examples(tmp_path)
    namespace = uuid.uuid4().hex
    exit_code, out = run_import(stack, namespace, folder)
    assert exit_code == 0, out
    assert "lab-result.json: not a kind Seedline imports" in out
    assert "imported: 11 created, 0 already there, 0 error(s)" in out, out

    license_ = find_license(channel, code)
    assert license_.display_name == "Example Grower"
    assert license_.type == lic.LICENSE_TYPE_GROWER
    company = license_pb2_grpc.LicenseServiceStub(channel).GetCompany(
        lic.GetCompanyRequest(name=license_.company)
    )
    assert company.display_name == "OpenTHC, Inc."  # company.json, imported before license.json
    held = holdings(channel, license_.name)
    assert held == {
        "sections": ["Crop Room", "Imported inventory", "Imported plants", "Section Alpha"],
        "varieties": ["Variety Alpha"],
        "products": ["Example Product Alpha"],
        "plants": ["Alpha 1", "Alpha 2"],
        "lots": ["1234.5678 UNIT_GRAM"],
    }

    exit_code, out = run_import(stack, namespace, folder)
    assert exit_code == 0, out
    assert "imported: 0 created, 11 already there, 0 error(s)" in out, out
    assert holdings(channel, license_.name) == held


def test_a_malformed_object_is_reported_and_the_others_are_imported(
    stack: EdgeProcess, channel: grpc.Channel, tmp_path: Path
) -> None:
    folder, code = examples(tmp_path)
    plants = json.loads((folder / "plants.json").read_text())
    plants.append({"id": "018NY6XC00PLANT0000000000C", "license": plants[0]["license"], "name": "No variety"})
    plants.append(
        {
            "id": "018NY6XC00PLANT0000000000D",
            **{k: plants[0][k] for k in ("license", "variety")},
            "phase": "flowering",
        }
    )
    (folder / "plants.json").write_text(json.dumps(plants))
    (folder / "variety.json").write_text("[" + (folder / "variety.json").read_text() + ", 42]")
    (folder / "product.json").write_text('{"id": "018NY6XC006ZK82VZZMTV2J76X", "name": ')

    exit_code, out = run_import(stack, uuid.uuid4().hex, folder)
    assert exit_code == 1, out
    assert "plants.json[2] variety.id: required" in out
    assert "plants.json[3] phase: 'flowering' is not one of" in out
    assert "variety.json[1] -: an OpenTHC object must be a JSON object, not int" in out
    assert "product.json -: not readable JSON" in out
    # The lot needs the product that could not be read: reported, not guessed.
    assert "inventory.json[0] product.id: product 018NY6XC006ZK82VZZMTV2J76X is not in this import" in out
    held = holdings(channel, find_license(channel, code).name)
    assert held["plants"] == ["Alpha 1", "Alpha 2"]
    assert held["varieties"] == ["Variety Alpha"]
    assert held["lots"] == []


def test_an_unreachable_server_stops_the_import_with_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder, _code = examples(tmp_path)
    args = ["import", "openthc", str(folder), "--jurisdiction", "US-WA", "--target", f"127.0.0.1:{port}"]
    result = CliRunner().invoke(app, args, env={"SEEDLINE_TOKEN": "x"})
    assert result.exit_code == 2, result.output
    assert "UNAVAILABLE" in result.output
    assert "Re-run the import" in result.output
