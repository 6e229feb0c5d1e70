"""The real webhook connector against the fake webhook receiver, over TLS in this process.

Pins both sides of the webhook contract: what the connector sends (signed body, event id,
type) and what a careful receiver does with it (verify, de-duplicate, refuse, fail on demand).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from ulid import ULID

from seedline_server.certs import write_dev_pki
from seedline_server.crypto import Secret
from seedline_server.integrations import signing
from seedline_server.integrations.connector import Job
from seedline_server.integrations.fakes import _serve, webhook_receiver
from seedline_server.integrations.transport import Exchange, Http, RemoteError
from seedline_server.integrations.webhook import WebhookConnector
from tests.support.fakes import FakeAdmin, FakeProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "whsec-0123456789abcdef0123456789abcdef"


@dataclass
class Receiver(FakeAdmin):
    http: Http

    def connector(self, secret: str = SECRET, path: str = "/hooks/acme") -> WebhookConnector:
        return WebhookConnector(self.http, f"{self.url}{path}", Secret(secret))


@pytest_asyncio.fixture(loop_scope="session")
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    pki = write_dev_pki(tmp_path / "pki")
    app = webhook_receiver.make_app({"secret": SECRET, "tolerance_s": 300})
    running = await _serve.start(app, host="127.0.0.1", port=0, cert=pki.server_cert, key=pki.server_key)
    http = Http(ca_file=pki.ca_cert, timeout=5.0)
    url = f"https://127.0.0.1:{running.port}"
    try:
        tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        async with httpx.AsyncClient(base_url=url, verify=tls) as admin:
            yield Receiver(url, admin, http)
    finally:
        await http.aclose()
        await running.stop()


def job(event_type: str = "transfer.committed") -> Job:
    return Job(
        id=str(ULID()),
        integration_id=str(ULID()),
        license_id="L1",
        event_type=event_type,
        resource="licenses/L1/transfers/T1",
        payload={"verb": "TRANSFER_COMMITTED", "before": None, "after": {"id": "T1", "state": 2}},
        attempt=1,
        look_first=False,
        create_time=datetime.now(UTC),
        audit_event_id=None,
    )


async def test_a_delivery_is_stored_once_with_a_valid_signature(receiver: Receiver) -> None:
    j = job()
    log: list[Exchange] = []
    outcome = await receiver.connector().deliver(j, log)
    assert outcome.summary == "delivered transfer.committed"
    assert [e.status for e in log] == ["SUCCESS"]
    state = await receiver.state()
    assert (state["received"], state["bad_signatures"], state["duplicates"]) == (1, 0, 0)
    (event,) = state["events"]
    assert (event["id"], event["type"], event["path"]) == (j.id, "transfer.committed", "/hooks/acme")
    assert event["body"]["data"] == j.payload
    assert event["body"]["resource"] == j.resource
    assert event["headers"]["Seedline-Event-Id"] == j.id
    # What the receiver stored verifies independently: the signature covers exactly these bytes.
    raw = json.dumps(event["body"], sort_keys=True, separators=(",", ":")).encode()
    signing.verify(SECRET.encode(), raw, event["headers"]["Seedline-Signature"], now=time.time())
    with pytest.raises(signing.SignatureError):
        signing.verify(b"another-secret", raw, event["headers"]["Seedline-Signature"], now=time.time())


async def test_the_same_job_delivered_twice_is_stored_once(receiver: Receiver) -> None:
    j = job()
    connector = receiver.connector()
    await connector.deliver(j, [])
    await connector.deliver(j, [])  # a retry after a lost answer: same Seedline-Event-Id
    await connector.deliver(job(), [])
    state = await receiver.state()
    assert state["received"] == 3
    assert state["duplicates"] == 1
    assert [e["id"] for e in state["events"]].count(j.id) == 1
    assert len(state["events"]) == 2


async def test_a_wrong_secret_is_refused_and_not_retried(receiver: Receiver) -> None:
    log: list[Exchange] = []
    with pytest.raises(RemoteError) as caught:
        await receiver.connector(secret="whsec-not-the-shared-secret-at-all-000").deliver(job(), log)
    assert caught.value.status == 401
    assert not caught.value.retryable
    assert not caught.value.counts_for_breaker
    assert [e.status for e in log] == ["ERROR"]
    state = await receiver.state()
    assert state["bad_signatures"] == 1
    assert state["events"] == []


async def test_a_stale_or_missing_signature_is_refused(receiver: Receiver) -> None:
    body = b'{"id":"E1","type":"lot.updated"}'
    stale = signing.sign(SECRET.encode(), body, int(time.time()) - 301)
    fresh = signing.sign(SECRET.encode(), body, int(time.time()))
    for headers in ({"Seedline-Signature": stale}, {}, {"Seedline-Signature": fresh + "0"}):
        r = await receiver.admin.post(
            "/hooks/acme", content=body, headers={"Seedline-Event-Id": "E1", **headers}
        )
        assert r.status_code == 401
    r = await receiver.admin.post(
        "/hooks/acme", content=body, headers={"Seedline-Event-Id": "E1", "Seedline-Signature": fresh}
    )
    assert r.status_code == 200
    state = await receiver.state()
    assert state["bad_signatures"] == 3
    assert [e["id"] for e in state["events"]] == ["E1"]


async def test_an_error500_fault_is_retryable(receiver: Receiver) -> None:
    r = await receiver.admin.post(
        "/_fake/faults", json={"rules": [{"path_prefix": "/hooks/", "mode": "error500", "count": 1}]}
    )
    assert r.status_code == 200
    j = job()
    with pytest.raises(RemoteError) as caught:
        await receiver.connector().deliver(j, [])
    assert caught.value.status == 500
    assert caught.value.retryable
    assert caught.value.maybe_sent
    assert (await receiver.state())["events"] == []
    await receiver.connector().deliver(j, [])  # the retry, after the fault is spent
    assert [e["id"] for e in (await receiver.state())["events"]] == [j.id]


async def test_apply_then_500_then_retry_counts_a_duplicate(receiver: Receiver) -> None:
    await receiver.admin.post(
        "/_fake/faults", json={"rules": [{"path_prefix": "/hooks/", "mode": "apply_then_500", "count": 1}]}
    )
    j = job()
    with pytest.raises(RemoteError):
        await receiver.connector().deliver(j, [])
    await receiver.connector().deliver(j, [])
    state = await receiver.state()
    assert state["duplicates"] == 1
    assert len(state["events"]) == 1


async def test_test_reports_success_and_pings_are_not_stored(receiver: Receiver) -> None:
    report = await receiver.connector().test([])
    assert (report.reachable, report.authenticated, report.license_visible) == (True, True, True)
    assert report.latency is not None
    refused = await receiver.connector(secret="whsec-not-the-shared-secret-at-all-000").test([])
    assert (refused.reachable, refused.authenticated) == (True, False)
    state = await receiver.state()
    assert (state["pings"], state["events"], state["bad_signatures"]) == (1, [], 1)


async def test_configure_and_reset(receiver: Receiver) -> None:
    await receiver.connector().deliver(job(), [])
    r = await receiver.admin.post(
        "/_fake/configure", json={"secret": "whsec-rotated-secret-0000000000000000"}
    )
    assert r.status_code == 200
    with pytest.raises(RemoteError):
        await receiver.connector().deliver(job(), [])
    await receiver.connector(secret="whsec-rotated-secret-0000000000000000").deliver(job(), [])
    bad = await receiver.admin.post("/_fake/configure", json={"tolerance_s": -1})
    assert bad.status_code == 400
    assert (await receiver.admin.post("/_fake/reset")).status_code == 200
    state = await receiver.state()
    assert state == {"events": [], "duplicates": 0, "bad_signatures": 0, "received": 0, "pings": 0}


async def test_the_module_runs_as_a_process(tmp_path: Path) -> None:
    pki = write_dev_pki(tmp_path / "pki")
    fake = FakeProcess(
        "webhook_receiver",
        pki.server_cert,
        pki.server_key,
        pki.ca_cert,
        config={"secret": SECRET},
        workdir=tmp_path / "work",
    )
    fake.start()
    http = Http(ca_file=pki.ca_cert, timeout=5.0)
    try:
        j = job()
        await WebhookConnector(http, f"{fake.base_url}/hooks/x", Secret(SECRET)).deliver(j, [])
        assert [e["id"] for e in fake.state()["events"]] == [j.id]
    finally:
        await http.aclose()
        fake.stop()
