"""The README's grpcurl and curl examples, run as written against a real server and Envoy (mTLS).

The "Try every service" blocks are joined into one bash script (later blocks use the license the
first ones make); only the development endpoints and file paths are swapped for the test stack's:
the gRPC address, the REST base URL, the dev certificates and the dev token file (holding a token
the test server trusts). The real `curl` and the `.venv/bin/grpcurl` run them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import auth, tool_shims
from tests.support.stack import EdgeProcess

README = Path(__file__).resolve().parents[2] / "README.md"
SERVICES = {
    "license": "LicenseService",
    "plant": "PlantService",
    "inventory": "InventoryService",
    "lab": "LabResultService",
    "transfer": "TransferService",
    "integration": "IntegrationService",
    "telemetry": "TelemetryService",
    "auth": "AuthService",
    "audit": "AuditService",
}


def example_blocks() -> list[str]:
    """The sh blocks of the README's "Try every service" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Try every service", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def test_every_service_has_a_grpcurl_and_a_curl_example() -> None:
    blocks = example_blocks()
    for domain, service in SERVICES.items():
        block = next((b for b in blocks if f"seedline.{domain}.v1.{service}/" in b), None)
        assert block is not None, f"no grpcurl example for {service}"
        assert "curl " in block, f"no curl example next to {service}'s grpcurl"


@pytest.mark.parametrize("stand_ins", [False, True], ids=["installed-tools", "stand-ins"])
def test_the_readme_examples_run_against_the_stack(
    stack: EdgeProcess, tmp_path: Path, stand_ins: bool
) -> None:
    """With curl and jq as installed (stand-ins for missing ones), and with the stand-ins."""
    assert stack.pki is not None
    env = tool_shims.environment(tmp_path, force=stand_ins)
    token_file = tmp_path / "dev-token"
    token_file.write_text(auth.mint() + "\n")
    swaps = {
        ".seedline/dev-token": str(token_file),
        ".seedline/certs/ca.pem": str(stack.pki.ca_cert),
        ".seedline/certs/partner-acme.pem": str(stack.pki.partner_cert),
        ".seedline/certs/partner-acme-key.pem": str(stack.pki.partner_key),
        "127.0.0.1:50051": stack.server.target,
        "https://localhost:8443": stack.base_url,
        ".venv/bin/grpcurl": str(Path(sys.executable).parent / "grpcurl"),
    }
    script = "\n".join(example_blocks())
    for dev, test in swaps.items():
        assert dev in script, f"the README examples no longer use {dev}"
        script = script.replace(dev, test)
    # Fail on the first failing command; print what the examples made, to check below.
    script = "set -euo pipefail\n" + script + '\nprintf "\\nMADE %s %s\\n" "$LICENSE" "$LOT"\n'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    out = done.stdout
    made = re.search(r"^MADE (licenses/\w+) (licenses/\w+/lots/\w+)$", out, flags=re.M)
    assert made is not None, out
    license_ = made.group(1)
    # Each service's examples answered with what they asked for.
    assert f'"name": "{license_}/plants/' in out  # CreatePlant (grpcurl)
    assert '"plants":[' in out  # ListPlants (curl: Envoy's compact JSON)
    assert f'"name": "{made.group(2)}"' in out  # GetLot
    assert '"value": "1000.0000"' in out
    assert re.search(r'"lab_?[mM]etrics": \[', out)  # ListLabMetrics (grpcurl keeps proto names)
    assert f'"name": "{license_}/sensors/' in out  # CreateSensor
    assert '"principal": "users/' in out  # PingSession
    assert len(re.findall(r'"audit_?[eE]vents": ?\[', out)) == 2  # ListAuditEvents (grpcurl, curl)
