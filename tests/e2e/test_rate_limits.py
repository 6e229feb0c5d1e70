"""Envoy's per-partner rate limits by route class, through the real Envoy over mutual TLS.

A second Envoy with small buckets runs in front of the session's server; each test uses its own
partner certificates, so their buckets start full and do not interfere.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_status import rpc_status

from seedline_server import edge
from seedline_server.certs import issue_client_cert, partner_uri
from tests.support.stack import EdgeProcess

pytestmark = pytest.mark.e2e
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"

# Public: 3 at once, 3 per 2 s after that (x-ratelimit-reset 1). Regulatory: 2 at once, then one
# per 4 s (x-ratelimit-reset 4).
PUBLIC = edge.RouteClass("public", max_tokens=3, tokens_per_fill=3, fill_interval=2.0)
REGULATORY = edge.RouteClass(
    "regulatory", max_tokens=2, tokens_per_fill=1, fill_interval=4.0, methods=edge.REGULATORY_METHODS
)
INTEGRATION = "/v1/licenses/01JD0000000000000000000000/integrations/01JD0000000000000000000000"


@pytest.fixture(scope="module")
def limited(stack: EdgeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    """An Envoy with small buckets in front of the session's server."""
    limited = EdgeProcess(
        server=stack.server,
        workdir=Path(tmp_path_factory.mktemp("limited")),
        rate_limits=edge.EdgeRateLimits(default=PUBLIC, special=(REGULATORY,)),
    )
    limited.start()
    try:
        yield limited
    finally:
        limited.stop()


_serial = iter(range(1_000_000))


def _partner(limited: EdgeProcess, tmp_path: Path) -> tuple[str, Path, Path]:
    """A fresh partner identity (its own buckets) with a certificate from the edge's CA."""
    assert limited.pki is not None
    name = f"rl{next(_serial)}x{time.monotonic_ns() % 10**9}"
    cert, key = issue_client_cert(
        limited.pki.ca_cert, limited.pki.ca_key, tmp_path, name, san_uri=partner_uri(name)
    )
    return name, cert, key


def _client(limited: EdgeProcess, cert: Path, key: Path) -> httpx.Client:
    assert limited.pki is not None
    ctx = ssl.create_default_context(cafile=str(limited.pki.ca_cert))
    ctx.load_cert_chain(str(cert), str(key))
    return httpx.Client(base_url=limited.base_url, verify=ctx, timeout=10)


def _reason(body: dict[str, object]) -> str:
    infos = [d for d in body["details"] if d.get("@type") == ERROR_INFO]  # type: ignore[union-attr]
    assert infos, body
    return str(infos[0]["reason"])


def _assert_rate_limited(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == 8
    assert _reason(body) == "RATE_LIMITED"
    assert "rate limit" in body["message"]
    assert response.headers["x-ratelimit-limit"].split(",")[0].strip() == str(limit)
    assert response.headers["x-ratelimit-remaining"] == "0"
    reset = int(response.headers["x-ratelimit-reset"])
    assert reset >= 1
    assert response.headers["retry-after"] == str(reset)
    (retry,) = [d for d in body["details"] if d["@type"] == RETRY_INFO]
    assert retry["retryDelay"] == f"{reset}s"
    assert "grpc-status" not in response.headers


def test_burst_plus_one_is_a_json_429_with_rate_limit_headers(limited: EdgeProcess, tmp_path: Path) -> None:
    _, cert, key = _partner(limited, tmp_path)
    with _client(limited, cert, key) as client:
        responses = [client.get("/v1/sessions:ping") for _ in range(PUBLIC.max_tokens + 1)]
    *admitted, refused = responses
    for number, response in enumerate(admitted):
        assert response.status_code == 200, response.text
        # Admitted responses say how much is left too.
        assert response.headers["x-ratelimit-limit"] == str(PUBLIC.max_tokens)
        assert response.headers["x-ratelimit-remaining"] == str(PUBLIC.max_tokens - 1 - number)
        assert "retry-after" not in response.headers
    _assert_rate_limited(refused, PUBLIC.max_tokens)
    assert refused.headers["retry-after"] == "1"  # a token every 2/3 s, rounded up


def test_each_partner_has_its_own_bucket(limited: EdgeProcess, tmp_path: Path) -> None:
    _, cert_a, key_a = _partner(limited, tmp_path / "a")
    _, cert_b, key_b = _partner(limited, tmp_path / "b")
    with _client(limited, cert_a, key_a) as a, _client(limited, cert_b, key_b) as b:
        statuses = [a.get("/v1/sessions:ping").status_code for _ in range(PUBLIC.max_tokens + 1)]
        assert statuses[-1] == 429
        other = b.get("/v1/sessions:ping")
    assert other.status_code == 200, other.text
    assert other.json()["principal"].startswith("partners/rl")
    assert other.headers["x-ratelimit-remaining"] == str(PUBLIC.max_tokens - 1)


def test_regulatory_routes_share_their_own_smaller_bucket(limited: EdgeProcess, tmp_path: Path) -> None:
    _, cert, key = _partner(limited, tmp_path)
    with _client(limited, cert, key) as client:
        sync = client.post(f"{INTEGRATION}:sync", json={})
        test = client.post(f"{INTEGRATION}:test", json={})
        refused = client.post(f"{INTEGRATION}:sync", json={})
        public = client.get("/v1/sessions:ping")
    # Sync and test are one class: two admitted (whatever the server answers), the third refused.
    for admitted, remaining in ((sync, "1"), (test, "0")):
        assert admitted.status_code != 429, admitted.text
        assert admitted.headers["x-ratelimit-limit"] == str(REGULATORY.max_tokens)
        assert admitted.headers["x-ratelimit-remaining"] == remaining
    _assert_rate_limited(refused, REGULATORY.max_tokens)
    assert refused.headers["retry-after"] == "4"
    # The public bucket is untouched.
    assert public.status_code == 200, public.text
    assert public.headers["x-ratelimit-limit"] == str(PUBLIC.max_tokens)
    assert public.headers["x-ratelimit-remaining"] == str(PUBLIC.max_tokens - 1)


def test_requests_pass_again_after_the_advertised_delay(limited: EdgeProcess, tmp_path: Path) -> None:
    _, cert, key = _partner(limited, tmp_path)
    with _client(limited, cert, key) as client:
        for _ in range(PUBLIC.max_tokens):
            assert client.get("/v1/sessions:ping").status_code == 200
        refused = client.get("/v1/sessions:ping")
        assert refused.status_code == 429
        time.sleep(int(refused.headers["retry-after"]))
        again = client.get("/v1/sessions:ping")
        assert again.status_code == 200, again.text
        assert client.get("/v1/sessions:ping").status_code == 429  # one token came back, not more
        time.sleep(PUBLIC.fill_interval)
        refilled = [client.get("/v1/sessions:ping").status_code for _ in range(PUBLIC.tokens_per_fill)]
    assert refilled == [200] * PUBLIC.tokens_per_fill


def test_grpc_callers_through_the_edge_get_resource_exhausted(limited: EdgeProcess, tmp_path: Path) -> None:
    from seedline.auth.v1 import auth_pb2, auth_pb2_grpc

    assert limited.pki is not None
    _, cert, key = _partner(limited, tmp_path)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=limited.pki.ca_cert.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    with grpc.secure_channel(f"localhost:{limited.port}", credentials) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for _ in range(PUBLIC.max_tokens):
            stub.PingSession(auth_pb2.PingSessionRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            stub.PingSession(auth_pb2.PingSessionRequest(), timeout=10)
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_status.from_call(error) is None  # Envoy's own reply: no rich status
