"""A larger schemathesis run against the REST face through Envoy over mutual TLS.

Run from the repository root: ``.venv/bin/python bench/fuzz_rest.py [--examples 50] [--seed 1]``.
It starts an embedded PostgreSQL, ``seedline serve`` and Envoy on free loopback ports, seeds a
company and a license (so half the calls address a real license), calls every operation of
``gen/openapi.json`` with generated requests, and prints calls and statuses per operation and
every finding (5xx, or a response the document does not describe), with the request as curl.
The CI-sized run is ``tests/e2e/test_rest_fuzz.py``. Exit code 1 when there are findings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seedline_server.store import db  # noqa: E402
from tests.support import rest_fuzz  # noqa: E402
from tests.support.stack import EdgeProcess, ServerProcess  # noqa: E402


def seed_license(base_url: str, session: object) -> dict[str, str]:
    """Create a company and a license; the ids to put into generated paths."""
    import requests

    assert isinstance(session, requests.Session)
    company = session.post(f"{base_url}/v1/companies", json={"displayName": "Fuzz Farms"}, timeout=10)
    if company.status_code != 200:
        print(f"seeding skipped: CreateCompany answered {company.status_code} {company.text[:200]}")
        return {}
    company_name = company.json()["name"]
    license_ = session.post(
        f"{base_url}/v1/licenses",
        json={
            "company": company_name,
            "licenseNumber": "FUZZ-0001",
            "displayName": "Fuzz Farms Cultivation",
            "type": "LICENSE_TYPE_GROWER",
            "jurisdiction": "US-WA",
            "active": True,
        },
        timeout=10,
    )
    if license_.status_code != 200:
        print(f"seeding a license failed: {license_.status_code} {license_.text[:300]}")
        return {"company": company_name.split("/")[-1]}
    return {"company": company_name.split("/")[-1], "license": license_.json()["name"].split("/")[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50, help="generated requests per operation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default="", help="run operations whose label contains this text")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="seedline-fuzz-") as tmp:
        work = Path(tmp)
        pg = db.start_embedded(work / "pg", database="seedline_fuzz")
        try:
            url = pg.url("seedline_fuzz")
            asyncio.run(db.migrate(url))
            server = ServerProcess(database_url=url, data_dir=work / "server")
            edge: EdgeProcess | None = None
            try:
                server.start()
                edge = EdgeProcess(server=server, workdir=work)
                edge.start()
                assert edge.pki is not None
                session = rest_fuzz.partner_session(edge.pki)
                ids = seed_license(edge.base_url, session)
                report = rest_fuzz.run(
                    edge.base_url,
                    session,
                    examples=args.examples,
                    seed=args.seed,
                    path_values=ids,
                    select=lambda label: args.only in label,
                    log=print,
                )
            finally:
                if edge is not None:
                    edge.stop()
                server.stop()
        finally:
            db.stop_embedded(work / "pg")
    print()
    print(rest_fuzz.summary(report))
    if args.json:
        args.json.write_text(rest_fuzz.as_json(report))
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
