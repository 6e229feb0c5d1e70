"""The MQTT bridge: topic and payload parsing, then a real broker (mosquitto, else amqtt).

The parsing tests are pure. The broker tests run the bridge against a real broker process,
first with a recording stand-in for the pipeline (acknowledgement after commit, redelivery,
dead letters, reconnects, scale-out), then with the real IngestPipeline and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from seedline.telemetry.v1 import telemetry_pb2 as pb
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from ulid import ULID

from seedline_server.domain.errors import DependencyUnavailable
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import db
from seedline_server.telemetry.ingest import Ack, IngestPipeline, ReadingIn, Rejected
from seedline_server.telemetry.mqtt_bridge import (
    Malformed,
    MqttBridge,
    MqttBridgeSettings,
    PayloadFormat,
    TopicRef,
    decode,
    format_from_content_type,
    parse_time,
    parse_topic,
    payload_format,
)
from tests.integration.conftest import CTX, Farm
from tests.support.mosquitto import Broker, mqtt_ingest_rate, start_broker

L, S, X, Y = (str(ULID()) for _ in range(4))
REF = TopicRef(L, S, X, None)
NOW = datetime.now(UTC).replace(microsecond=0)
QUEUED = 2500


def reading_json(
    value: float, *, sensor: str | None = None, unit: Any = "MEASUREMENT_UNIT_CELSIUS"
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "value": value,
        "unit": unit,
        "observe_time": NOW.isoformat().replace("+00:00", "Z"),
    }
    if sensor is not None:
        doc["sensor"] = sensor
    return doc


def reading_pb(value: float, *, sensor_id: str = "", at: datetime = NOW) -> pb.Reading:
    ts = Timestamp()
    ts.FromDatetime(at)
    r = pb.Reading(observe_time=ts, value=value, unit=pb.MEASUREMENT_UNIT_CELSIUS)
    if sensor_id:
        r.sensor_id = sensor_id
    return r


# --- parsing (no broker) ------------------------------------------------------------------------


def test_topic_names_license_section_sensor_and_optional_format() -> None:
    assert parse_topic(f"seedline/{L}/{S}/{X}") == TopicRef(L, S, X, None)
    assert parse_topic(f"seedline/{L}/{S}/{X}/pb").format is PayloadFormat.READING
    assert parse_topic(f"seedline/{L}/{S}/{X}/pb-batch").format is PayloadFormat.BATCH
    for bad in (
        "seedline/x",
        f"other/{L}/{S}/{X}",
        f"seedline/{L}/{S}/not-a-ulid",
        f"seedline/{L.lower()}/{S}/{X}",
        f"seedline/{L}/{S}/{X}/xml",
        f"seedline/{L}/{S}/{X}/pb/extra",
    ):
        with pytest.raises(Malformed):
            parse_topic(bad)


def test_content_type_selects_the_payload_format() -> None:
    assert format_from_content_type(None) is None
    assert format_from_content_type("application/json; charset=utf-8") is PayloadFormat.JSON
    assert format_from_content_type("application/x-protobuf") is PayloadFormat.READING
    assert (
        format_from_content_type(
            'application/x-protobuf; proto="seedline.telemetry.v1.BatchIngestReadingsRequest"'
        )
        is PayloadFormat.BATCH
    )
    for bad in ("text/plain", "application/x-protobuf; proto=seedline.telemetry.v1.Sensor"):
        with pytest.raises(Malformed):
            format_from_content_type(bad)
    assert payload_format(REF, None) is PayloadFormat.JSON
    assert (
        payload_format(TopicRef(L, S, X, PayloadFormat.READING), "application/x-protobuf")
        is PayloadFormat.READING
    )
    with pytest.raises(Malformed, match="topic says"):
        payload_format(TopicRef(L, S, X, PayloadFormat.READING), "application/json")


def test_rfc3339_times_become_aware_utc() -> None:
    assert parse_time("2026-01-31T12:00:00Z") == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert parse_time("2026-01-31T14:00:00.123456789+02:00") == datetime(
        2026, 1, 31, 12, 0, 0, 123456, tzinfo=UTC
    )
    for bad in ("2026-01-31T12:00:00", "31/01/2026", 1738324800, "2026-01-31"):
        with pytest.raises(ValueError, match="observe_time"):
            parse_time(bad)


def test_json_single_reading_uses_the_topic_sensor() -> None:
    for unit in ("MEASUREMENT_UNIT_CELSIUS", "celsius", 1):
        got = decode(REF, PayloadFormat.JSON, json.dumps(reading_json(21.5, unit=unit)).encode())
        assert got.readings == (ReadingIn(X, NOW, 21.5, pb.MEASUREMENT_UNIT_CELSIUS),)
        assert got.invalid == ()


def test_json_batch_keeps_good_readings_and_lists_bad_ones_by_position() -> None:
    doc = {
        "readings": [
            reading_json(1),
            reading_json(2, sensor=Y),
            reading_json(3, sensor=f"licenses/{L}/sensors/{Y}"),
            reading_json(4, sensor=f"licenses/{S}/sensors/{Y}"),  # another license
            reading_json(5, unit="FURLONG"),
            {"value": "hot", "unit": 1, "observe_time": "2026-01-01T00:00:00Z"},
            {"value": 7, "unit": 1},
            "not an object",
            reading_json(9, unit=0),
        ]
    }
    got = decode(REF, PayloadFormat.JSON, json.dumps(doc).encode())
    assert [(r.sensor_id, r.value) for r in got.readings] == [(X, 1.0), (Y, 2.0), (Y, 3.0)]
    assert got.positions == (0, 1, 2)
    assert [(r.index, r.reason) for r in got.invalid] == [
        (3, pb.REJECTION_REASON_OTHER_LICENSE),
        (4, pb.REJECTION_REASON_MALFORMED),
        (5, pb.REJECTION_REASON_MALFORMED),
        (6, pb.REJECTION_REASON_MALFORMED),
        (7, pb.REJECTION_REASON_MALFORMED),
        (8, pb.REJECTION_REASON_MALFORMED),
    ]
    assert "FURLONG" in got.invalid[1].message


def test_values_and_times_beyond_float_or_datetime_are_bad_readings() -> None:
    huge = {"readings": [{**reading_json(1), "value": 10**400}, reading_json(2)]}
    got = decode(REF, PayloadFormat.JSON, json.dumps(huge).encode())
    assert [r.value for r in got.readings] == [2.0]
    assert [(r.index, r.reason) for r in got.invalid] == [(0, pb.REJECTION_REASON_MALFORMED)]
    far = pb.Reading(value=1, unit=pb.MEASUREMENT_UNIT_CELSIUS)
    far.observe_time.seconds = 10**15
    got = decode(REF, PayloadFormat.READING, far.SerializeToString())
    assert got.readings == ()
    assert [(r.index, r.reason) for r in got.invalid] == [(0, pb.REJECTION_REASON_MALFORMED)]


def test_non_finite_values_are_left_to_the_pipeline() -> None:
    got = decode(
        REF, PayloadFormat.JSON, b'{"value": NaN, "unit": 1, "observe_time": "2026-01-01T00:00:00Z"}'
    )
    assert math.isnan(got.readings[0].value)


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[1, 2]",
        b'{"readings": {}}',
        b'{"readings": []}',
        b"\xff\xfe",
        json.dumps({"readings": [reading_json(1)] * 5001}).encode(),
    ],
)
def test_unreadable_json_messages_are_malformed(payload: bytes) -> None:
    with pytest.raises(Malformed):
        decode(REF, PayloadFormat.JSON, payload)


def test_protobuf_reading_and_batch() -> None:
    got = decode(REF, PayloadFormat.READING, reading_pb(20.0).SerializeToString())
    assert got.readings == (ReadingIn(X, NOW, 20.0, pb.MEASUREMENT_UNIT_CELSIUS),)
    batch = pb.BatchIngestReadingsRequest(
        parent=f"licenses/{L}", readings=[reading_pb(1.0, sensor_id=Y), reading_pb(2.0), pb.Reading(value=3)]
    )
    got = decode(REF, PayloadFormat.BATCH, batch.SerializeToString())
    assert [(r.sensor_id, r.value) for r in got.readings] == [(Y, 1.0), (X, 2.0)]
    assert [(r.index, r.reason) for r in got.invalid] == [(2, pb.REJECTION_REASON_MALFORMED)]
    with pytest.raises(Malformed, match="parent"):
        decode(
            REF,
            PayloadFormat.BATCH,
            pb.BatchIngestReadingsRequest(
                parent=f"licenses/{S}", readings=[reading_pb(1)]
            ).SerializeToString(),
        )
    with pytest.raises(Malformed, match="not a serialized"):
        decode(REF, PayloadFormat.READING, b"\xff\xff\xff")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEEDLINE_MQTT_URL", "mqtts://u:p%40ss@broker.example:8884")
    monkeypatch.setenv("SEEDLINE_MQTT_CLIENT_ID", "bridge 1")
    monkeypatch.setenv("SEEDLINE_MQTT_SHARE_GROUP", "g")
    s = MqttBridgeSettings()
    assert s.url.startswith("mqtts://")
    assert s.subscription() == "$share/g/seedline/#"
    assert s.gateway_id() == "mqtt:bridge-1"
    assert MqttBridgeSettings(protocol="3.1.1", share_group="g").subscription() == "seedline/#"


# --- a real broker --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Broker]:
    b = start_broker(Path(tmp_path_factory.mktemp("mqtt")))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    note = (
        f"MQTT tests: mosquitto on 127.0.0.1:{b.port}"
        if b.kind == "mosquitto"
        else f"MQTT tests: mosquitto binary not found, using amqtt (MQTT 3.1.1) on 127.0.0.1:{b.port}; "
        "amqtt keeps no session state, so broker redelivery is checked only as 'not acknowledged'"
    )
    if reporter is not None:
        reporter.write_line(note)
    try:
        yield b
    finally:
        b.stop()


class Recorder:
    """A stand-in pipeline: records submits, rejects values above 1000, can fail or hang."""

    def __init__(self) -> None:
        self.batches: list[tuple[str | None, str, list[ReadingIn]]] = []
        self.fail_next = 0
        self.hang = False

    @property
    def values(self) -> list[float]:
        return [r.value for _, _, rs in self.batches for r in rs]

    async def submit(
        self, *, license_id: str | None, gateway_id: str, sequence: int | None, readings: Sequence[ReadingIn]
    ) -> Ack:
        assert sequence is None
        if self.fail_next:
            self.fail_next -= 1
            raise DependencyUnavailable("database down")
        self.batches.append((license_id, gateway_id, list(readings)))
        if self.hang:
            await asyncio.Event().wait()
        rejected = tuple(
            Rejected(i, r.sensor_id, pb.REJECTION_REASON_OUT_OF_RANGE, f"value {r.value} out of range")
            for i, r in enumerate(readings)
            if r.value > 1000
        )
        return Ack(None, len(readings) - len(rejected), rejected, False)


def settings(broker: Broker, client_id: str | None = None, **extra: Any) -> MqttBridgeSettings:
    # A share group per test: a stopped bridge's persistent session stays in its group and keeps
    # getting its share of the messages (queued for its return), so groups must not leak across tests.
    extra.setdefault("share_group", f"g-{uuid.uuid4().hex[:8]}")
    return MqttBridgeSettings(
        session_expiry_seconds=120,
        url=broker.url,
        protocol=broker.protocol,
        client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
        reconnect_min_seconds=0.05,
        reconnect_max_seconds=0.5,
        **extra,
    )


@asynccontextmanager
async def running(pipeline: Any, s: MqttBridgeSettings) -> AsyncIterator[MqttBridge]:
    bridge = MqttBridge(pipeline, s)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        await asyncio.wait_for(bridge.subscribed.wait(), 10)
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@asynccontextmanager
async def publisher(broker: Broker) -> AsyncIterator[aiomqtt.Client]:
    version = aiomqtt.ProtocolVersion.V5 if broker.protocol == "5" else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=version, identifier=f"pub-{uuid.uuid4().hex[:8]}"
    ) as c:
        c.pending_calls_threshold = 100_000
        yield c


@asynccontextmanager
async def dead_letters(broker: Broker) -> AsyncIterator[list[dict[str, Any]]]:
    got: list[dict[str, Any]] = []
    async with publisher(broker) as c:
        await c.subscribe("seedline/dead-letter/#", qos=1)

        async def collect() -> None:
            async for m in c.messages:
                assert isinstance(m.payload, bytes)
                got.append({**json.loads(m.payload), "dead_letter_topic": m.topic.value})

        task = asyncio.create_task(collect())
        try:
            yield got
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


async def until(check: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def publish_json(c: aiomqtt.Client, topic: str, doc: Any) -> None:
    await c.publish(topic, json.dumps(doc), qos=1)


async def test_readings_reach_the_pipeline_and_problems_the_dead_letter_topic(broker: Broker) -> None:
    rec = Recorder()
    topic = f"seedline/{L}/{S}/{X}"
    async with running(rec, settings(broker)) as bridge, dead_letters(broker) as dead, publisher(broker) as c:
        await publish_json(c, topic, reading_json(1))
        await publish_json(
            c, topic, {"readings": [reading_json(2), reading_json(3, sensor=Y), reading_json(4, unit="X")]}
        )
        await c.publish(topic + "/pb", reading_pb(5).SerializeToString(), qos=1)
        batch = pb.BatchIngestReadingsRequest(readings=[reading_pb(6, sensor_id=Y), reading_pb(7)])
        await c.publish(topic + "/pb-batch", batch.SerializeToString(), qos=1)
        if broker.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = "application/x-protobuf; proto=seedline.telemetry.v1.Reading"
            await c.publish(topic, reading_pb(8).SerializeToString(), qos=1, properties=props)
        await c.publish(topic, b"{broken", qos=1)
        await c.publish("seedline/not/a/topic/at/all", b"{}", qos=1)
        await publish_json(c, topic, reading_json(5000))  # the pipeline rejects it
        await publish_json(c, topic, reading_json(9))  # still running after all that
        expected = {1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 9.0, 5000.0} | ({8.0} if broker.protocol == "5" else set())
        await until(lambda: set(rec.values) == expected, what="readings")
        await until(lambda: len(dead) == 4, what="dead letters")
    assert sorted(rec.values) == sorted(expected)  # each once
    assert {lic for lic, _, _ in rec.batches} == {L}
    assert {gw for _, gw, _ in rec.batches} == {bridge._settings.gateway_id()}
    assert all(d["dead_letter_topic"] == f"seedline/dead-letter/{d['topic']}" for d in dead)
    assert {d["bridge"] for d in dead} == {bridge._settings.client_id}
    broken = [d for d in dead if d["error"] and "invalid JSON" in d["error"]]
    assert len(broken) == 1
    assert broken[0]["payload_base64"]
    assert any("is not seedline/" in (d["error"] or "") for d in dead)
    rejected = [r for d in dead for r in d["rejected"]]
    assert {(r["index"], r["reason"]) for r in rejected} == {
        (2, "REJECTION_REASON_MALFORMED"),
        (0, "REJECTION_REASON_OUT_OF_RANGE"),
    }
    assert bridge.stats.messages_malformed == 2
    assert bridge.stats.readings_invalid == 1
    assert bridge.stats.readings_rejected == 1
    assert bridge.stats.dead_letters == 4


async def test_a_failed_commit_leaves_the_message_unacknowledged_and_it_comes_back(broker: Broker) -> None:
    rec = Recorder()
    rec.fail_next = 2
    async with running(rec, settings(broker)) as bridge, publisher(broker) as c:
        await publish_json(c, f"seedline/{L}/{S}/{X}", reading_json(42))
        # Each failure ends the session; mosquitto then redelivers the message, amqtt forgets it.
        failures = 2 if broker.redelivers else 1
        await until(lambda: bridge.stats.reconnects == failures, what="failed sessions")
        if broker.redelivers:
            await until(lambda: rec.values == [42.0], what="redelivery after the failures")
            await asyncio.sleep(0.3)
            assert bridge.stats.acknowledged == 1
        else:
            await asyncio.sleep(0.3)
            assert bridge.stats.acknowledged == 0
    assert rec.values == ([42.0] if broker.redelivers else [])


async def test_acknowledged_messages_stay_acknowledged_and_the_session_keeps_what_comes_meanwhile(
    broker: Broker,
) -> None:
    s = settings(broker)
    first, second = Recorder(), Recorder()
    topic = f"seedline/{L}/{S}/{X}"
    async with publisher(broker) as c:
        async with running(first, s):
            for i in range(10):
                await publish_json(c, topic, reading_json(i))
            await until(lambda: len(first.values) == 10, what="first ten")
        # The bridge is away: its persistent session queues them, more than mosquitto's default
        # per-session limit of 1000 (which would drop the rest silently): the shipped config keeps all.
        await asyncio.gather(*(publish_json(c, topic, reading_json(i)) for i in range(10, QUEUED + 10)))
        async with running(second, s):
            if broker.redelivers:
                await until(lambda: len(second.values) == QUEUED, what="the queued messages")
            await asyncio.sleep(0.3)
    assert sorted(first.values) == [float(i) for i in range(10)]
    assert sorted(second.values) == ([float(i) for i in range(10, QUEUED + 10)] if broker.redelivers else [])


async def test_a_crash_between_commit_and_puback_redelivers_the_message(broker: Broker) -> None:
    s = settings(broker)
    crashed, after = Recorder(), Recorder()
    crashed.hang = True  # "committed", then the process dies before the PUBACK
    bridge = MqttBridge(crashed, s)
    task = asyncio.create_task(bridge.run(asyncio.Event()))
    await asyncio.wait_for(bridge.subscribed.wait(), 10)
    async with publisher(broker) as c:
        await publish_json(c, f"seedline/{L}/{S}/{X}", reading_json(7))
        await until(lambda: crashed.values == [7.0], what="the hanging commit")
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    assert bridge.stats.acknowledged == 0
    if broker.redelivers:
        async with running(after, s):
            await until(lambda: after.values == [7.0], what="redelivery")
        # At least once: the reading was handed to the pipeline twice.
        assert crashed.values + after.values == [7.0, 7.0]


async def test_retained_readings_are_not_ingested_again_on_subscribe(broker: Broker) -> None:
    rec = Recorder()
    lic = str(ULID())
    async with publisher(broker) as c:
        await c.publish(f"seedline/{lic}/{S}/{X}", json.dumps(reading_json(1)), qos=1, retain=True)
        async with running(rec, settings(broker, share_group="", topic=f"seedline/{lic}/#")) as bridge:
            await publish_json(c, f"seedline/{lic}/{S}/{X}", reading_json(2))
            await until(lambda: rec.values == [2.0], what="the live reading")
            assert bridge.stats.retained_skipped == 1
        await c.publish(f"seedline/{lic}/{S}/{X}", b"", qos=1, retain=True)  # clear it


async def test_the_bridge_reconnects_after_a_broker_restart(broker: Broker) -> None:
    rec = Recorder()
    async with running(rec, settings(broker)) as bridge:
        await asyncio.to_thread(broker.restart)
        await until(lambda: bridge.stats.reconnects >= 1, what="reconnect")
        await asyncio.wait_for(bridge.subscribed.wait(), 10)
        async with publisher(broker) as c:
            await publish_json(c, f"seedline/{L}/{S}/{X}", reading_json(3))
            await until(lambda: rec.values == [3.0], what="reading after restart")


async def test_two_bridges_share_the_messages(broker: Broker) -> None:
    a, b = Recorder(), Recorder()
    licenses = [str(ULID()), str(ULID())]
    if broker.shared_subscriptions:
        group = f"g-{uuid.uuid4().hex[:8]}"
        sa, sb = settings(broker, share_group=group), settings(broker, share_group=group)
    else:  # amqtt has no $share: scale out by partitioning the topics instead
        print("amqtt: no shared subscriptions; the two bridges split the topics by license")
        sa, sb = (
            settings(broker, topic=f"seedline/{licenses[0]}/#"),
            settings(broker, topic=f"seedline/{licenses[1]}/#"),
        )
    async with running(a, sa), running(b, sb), publisher(broker) as c:
        for i in range(400):
            await publish_json(c, f"seedline/{licenses[i % 2]}/{S}/{X}", reading_json(i))
        await until(lambda: len(a.values) + len(b.values) >= 400, what="all readings")
        await asyncio.sleep(0.3)
    assert a.values
    assert b.values
    assert sorted(a.values + b.values) == [float(i) for i in range(400)]


# --- with the real pipeline and PostgreSQL ------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    e = db.make_engine(migrated, pool_size=5)
    yield e
    await e.dispose()


async def make_sensors(database: Database, farm: Farm, n: int) -> list[str]:
    from seedline_server.telemetry.sensors import NewSensor, create_sensor

    async def run(uow: UnitOfWork) -> list[str]:
        ids = []
        for i in range(n):
            row = await create_sensor(
                uow,
                farm.license_id,
                NewSensor(
                    farm.section_id, f"probe {i}", pb.METRIC_TEMPERATURE, pb.MEASUREMENT_UNIT_CELSIUS, 10
                ),
            )
            ids.append(row.id)
        return ids

    return await database.write(CTX, run)


async def test_two_bridges_commit_every_reading_once(
    broker: Broker, engine: AsyncEngine, database: Database, farm: Farm
) -> None:
    sensors = await make_sensors(database, farm, 4)
    pipelines = [IngestPipeline(engine, writers=1), IngestPipeline(engine, writers=1)]
    for p in pipelines:
        await p.start()
    share = {"share_group": f"g-{uuid.uuid4().hex[:8]}"}
    # amqtt has no $share: there the second bridge listens elsewhere, the first does all the work.
    second_topic = f"seedline/{farm.license_id}/#" if broker.shared_subscriptions else f"seedline/{ULID()}/#"
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    lic, sec = farm.license_id, farm.section_id
    sent = 0
    try:
        async with (
            running(pipelines[0], settings(broker, **share, topic=f"seedline/{lic}/#")) as one,
            running(pipelines[1], settings(broker, **share, topic=second_topic)) as two,
            dead_letters(broker) as dead,
            publisher(broker) as c,
        ):
            for i in range(300):  # single readings, round the sensors
                at = base + timedelta(seconds=i)
                doc = {"value": 20 + i % 5, "unit": "CELSIUS", "observe_time": at.isoformat()}
                await publish_json(c, f"seedline/{lic}/{sec}/{sensors[i % 4]}", doc)
                sent += 1
            for j in range(20):  # batches of 10, each reading naming its sensor
                readings = [
                    {
                        **reading_json(21.0, sensor=sensors[k % 4]),
                        "observe_time": (base + timedelta(minutes=10, seconds=j * 10 + k)).isoformat(),
                    }
                    for k in range(10)
                ]
                await publish_json(c, f"seedline/{lic}/{sec}/{sensors[0]}", {"readings": readings})
                sent += 10
            await publish_json(c, f"seedline/{lic}/{sec}/{sensors[0]}", reading_json(999.0))  # out of range
            accepted = lambda: one.stats.readings_accepted + two.stats.readings_accepted  # noqa: E731
            await until(lambda: accepted() == sent, within=30, what="commits")
            await until(lambda: len(dead) == 1, what="the out-of-range dead letter")
        if broker.shared_subscriptions:
            assert one.stats.readings_accepted > 0
            assert two.stats.readings_accepted > 0
        assert dead[0]["rejected"][0]["reason"] == "REJECTION_REASON_OUT_OF_RANGE"
    finally:
        for p in pipelines:
            await p.stop()
    async with engine.connect() as conn:
        total, distinct = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT (r.sensor_key, r.observe_time)) FROM readings r "
                    "JOIN sensors s ON s.key = r.sensor_key WHERE s.id = ANY(:ids)"
                ),
                {"ids": sensors},
            )
        ).one()
    assert (total, distinct) == (sent, sent)


async def test_the_mqtt_bridge_command_commits_published_batches(
    broker: Broker, migrated: str, database: Database, farm: Farm
) -> None:
    sensors = await make_sensors(database, farm, 3)
    # Two `seedline mqtt-bridge` processes share the group; the figures feed bench/bench_telemetry.
    result = await mqtt_ingest_rate(
        broker,
        migrated,
        license_id=farm.license_id,
        section_id=farm.section_id,
        sensor_ids=sensors,
        readings=3000,
        per_message=50,
        bridges=2 if broker.shared_subscriptions else 1,
        within=60,
    )
    assert result["readings"] == 3000
    assert result["readings_per_s"] > 0
