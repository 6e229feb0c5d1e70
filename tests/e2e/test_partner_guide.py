"""docs/partners.md's examples, run as written through Envoy with the partner certificate.

The sh blocks are joined into one bash script and the Python blocks run as they are; only the
development paths and address are swapped for the test stack's. The e2e partner (`acme`) is an
admin here, as `SEEDLINE_PARTNER_GRANTS` makes it in the guide's `make dev` line.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from seedline_server.certs import issue_client_cert
from tests.e2e.test_inventory_cycle import make_farm
from tests.support import tool_shims
from tests.support.stack import EdgeProcess

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "partners.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)


def swap(text: str, stack: EdgeProcess) -> str:
    assert stack.pki is not None
    swaps = {
        ".seedline/certs/ca.pem": str(stack.pki.ca_cert),
        ".seedline/certs/partner-acme.pem": str(stack.pki.partner_cert),
        ".seedline/certs/partner-acme-key.pem": str(stack.pki.partner_key),
        "https://localhost:8443": stack.base_url,
    }
    for dev, test in swaps.items():
        text = text.replace(dev, test)
    return text


@pytest.fixture(scope="module")
def licenses(channel: grpc.Channel) -> list[str]:
    """Licenses for the partner to page through (the guide assumes some exist)."""
    return [make_farm(channel).license for _ in range(2)]


@pytest.mark.parametrize("stand_ins", [False, True], ids=["installed-tools", "stand-ins"])
def test_the_curl_examples_answer_as_the_guide_says(
    stack: EdgeProcess, licenses: list[str], tmp_path: Path, stand_ins: bool
) -> None:
    script = "set -euo pipefail\n" + swap("\n".join(blocks("sh")), stack)
    env = tool_shims.environment(tmp_path, force=stand_ins)  # also where curl or jq is missing
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    lines = done.stdout.splitlines()
    ping = json.loads(lines[0])
    assert ping["principal"] == "partners/acme"
    assert ping["principalKind"] == "PRINCIPAL_KIND_PARTNER_CERTIFICATE"
    error = json.loads(lines[1])
    assert error["code"] == 3
    kinds = {d["@type"].rsplit(".", 1)[1]: d for d in error["details"]}
    assert kinds["ErrorInfo"]["reason"] == "VALIDATION_FAILED"
    assert kinds["BadRequest"]["fieldViolations"][0]["field"] == "page_size"
    listed = lines[2:-2]
    assert set(licenses) <= set(listed)
    assert len(set(listed)) == len(listed)  # no page repeated
    first, second = lines[-2:]
    assert re.fullmatch(r"licenses/\w+/sections/\w+", first)
    assert second == first  # the retry with the same requestId made nothing new


def test_the_httpx_examples_run(stack: EdgeProcess, licenses: list[str]) -> None:
    outputs = []
    for source in blocks("python"):
        done = subprocess.run(
            [sys.executable, "-c", swap(source, stack)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip())
    first, last = outputs[0], outputs[-1]
    assert first == "partners/acme"
    made, refused = last.splitlines()
    assert re.fullmatch(r"licenses/\w+/sections/\w+", made)
    assert refused == "400 VALIDATION_FAILED"


def test_a_partner_without_a_grant_gets_403_as_the_guide_says(
    stack: EdgeProcess, licenses: list[str], tmp_path: Path
) -> None:
    assert stack.pki is not None
    cert, key = issue_client_cert(stack.pki.ca_cert, stack.pki.ca_key, tmp_path, "stranger")
    tls = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    tls.load_cert_chain(str(cert), str(key))
    with httpx.Client(base_url=stack.base_url, verify=tls, timeout=10) as client:
        me = client.get("/v1/sessions:ping").json()
        denied = client.get(f"/v1/{licenses[0]}/plants")
    assert me["principal"] == "partners/stranger"
    assert me.get("grants", []) == []
    assert denied.status_code == 403
    assert denied.json()["code"] == 7
