"""Telemetry end to end (issue #7, "Tests and figures"): two gateways, one rule, one watcher.

Against the running e2e server, a real broker (mosquitto, else amqtt) and a real
``seedline mqtt-bridge`` process on the e2e database:

- a simulated gateway streams sensor A's readings in numbered batches through ``IngestReadings``;
- another gateway publishes sensor B's readings over MQTT with QoS 1 (JSON batches, then single
  readings), which the bridge commits and only then acknowledges to the broker;
- both sensors go above the rule's threshold briefly (shorter than the hold: no alert), then
  long enough to fire, then back inside but within the hysteresis margin (still firing), then
  clearly inside (resolved);
- a ``WatchAlerts`` stream opened on the server sees each sensor's alert FIRED then RESOLVED,
  with the start and end times the contract defines;
- PostgreSQL holds exactly what the gRPC stream acknowledged plus what the MQTT publisher sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import grpc
import pytest
from google.protobuf import duration_pb2
from seedline.telemetry.v1 import telemetry_pb2 as pb

from tests.e2e.test_telemetry_ingest import Gateway, db_counts, make_site, new_sensor, reading, telemetry
from tests.support.mosquitto import BridgeProcess, Broker, start_broker
from tests.support.stack import EdgeProcess

pytestmark = pytest.mark.e2e

THRESHOLD, HOLD_SECONDS = 28.0, 1  # GT 28 °C for 1 s; the temperature margin is 0.5 °C
STEP = timedelta(milliseconds=20)  # observe-time spacing of each sensor's readings
# Each sensor's profile, in order: (count, °C). 20 hot readings span 0.38 s (< the hold: no
# alert); 150 span 2.98 s (the alert fires at the 51st, 1 s after the first); 27.8 °C is below the
# threshold but not by the margin (still firing); 26 °C clears it.
PROFILE = [(100, 25.0), (20, 30.0), (80, 25.0), (150, 30.0), (50, 27.8), (200, 26.0)]
N = sum(n for n, _ in PROFILE)
FIRST_HOT = 200  # index of the first reading of the run that fires
FIRST_CLEAR = 400  # index of the first reading back inside by the margin
GRPC_BATCH = 100
MQTT_BATCH = 20
MQTT_SINGLES = 60  # the last readings go one per message
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def profile() -> list[float]:
    return [value for n, value in PROFILE for _ in range(n)]


def bridge_stats(bridge: BridgeProcess) -> dict[str, int]:
    """The counters of the bridge's ``mqtt.stopped`` log line (written when SIGTERM drained it)."""
    for line in reversed(bridge.lines):
        clean = ANSI.sub("", line)
        if "mqtt.stopped" in clean:
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", clean)}
    raise AssertionError("no mqtt.stopped line:\n" + "\n".join(bridge.lines[-20:]))


async def publish_readings(broker: Broker, topic: str, t0: datetime, values: list[float]) -> int:
    """Publishes the readings with QoS 1 (each publish returns at the broker's PUBACK); returns
    how many messages were sent."""
    docs = [
        {"value": v, "unit": "MEASUREMENT_UNIT_CELSIUS", "observe_time": (t0 + i * STEP).isoformat()}
        for i, v in enumerate(values)
    ]
    cut = len(docs) - MQTT_SINGLES
    payloads = [json.dumps({"readings": docs[i : i + MQTT_BATCH]}) for i in range(0, cut, MQTT_BATCH)]
    payloads += [json.dumps(d) for d in docs[cut:]]
    version = aiomqtt.ProtocolVersion.V5 if broker.protocol == "5" else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=version, identifier=f"gw-mqtt-{uuid.uuid4().hex[:8]}", timeout=10
    ) as client:
        for payload in payloads:  # one at a time: the bridge receives them in observe-time order
            await client.publish(topic, payload, qos=1)
    return len(payloads)


def test_grpc_and_mqtt_gateways_fire_and_clear_an_alert_and_every_acknowledged_reading_is_stored(
    channel: grpc.Channel,
    stack: EdgeProcess,
    e2e_pg_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker = start_broker(tmp_path / "mqtt")
    bridge: BridgeProcess | None = None
    watch: Any = None
    try:
        with capsys.disabled():
            print(f"\n[telemetry flow] broker: {broker.kind} on 127.0.0.1:{broker.port}")
        bridge = BridgeProcess(
            broker,
            e2e_pg_url,
            client_id=f"e2e-bridge-{uuid.uuid4().hex[:8]}",
            share_group=f"e2e-{uuid.uuid4().hex[:8]}" if broker.shared_subscriptions else "",
        ).start()

        # 1. A license, a section, two temperature sensors.
        license_, section = make_site(channel)
        sensor_a = new_sensor(channel, license_, section, "canopy A (gRPC)")
        sensor_b = new_sensor(channel, license_, section, "canopy B (MQTT)")
        id_a, id_b = (s.name.rsplit("/", 1)[1] for s in (sensor_a, sensor_b))

        # 2. A rule for every temperature sensor of the section, and a watcher.
        rule = telemetry(channel).CreateAlertRule(
            pb.CreateAlertRuleRequest(
                parent=license_,
                alert_rule=pb.AlertRule(
                    display_name="Flower 2 too hot",
                    condition=pb.AlertCondition(
                        metric=pb.METRIC_TEMPERATURE,
                        section=section,
                        comparator=pb.COMPARATOR_GT,
                        threshold=THRESHOLD,
                        unit=pb.MEASUREMENT_UNIT_CELSIUS,
                        hold_duration=duration_pb2.Duration(seconds=HOLD_SECONDS),
                    ),
                    severity=pb.ALERT_SEVERITY_WARNING,
                    enabled=True,
                ),
            )
        )
        changes: queue.Queue[pb.WatchAlertsResponse] = queue.Queue()
        watch = telemetry(channel).WatchAlerts(
            pb.WatchAlertsRequest(parent=license_, alert_rules=[rule.name]), timeout=60
        )

        def collect() -> None:
            try:
                for message in watch:
                    if message.change != pb.ALERT_CHANGE_UNSPECIFIED:  # not a heartbeat
                        changes.put(message)
            except grpc.RpcError:
                pass  # cancelled at the end

        watcher = threading.Thread(target=collect, daemon=True)
        watcher.start()
        time.sleep(0.7)  # the watch is open and the hubs have loaded the new rule

        # 3. The two gateways, at the same time.
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
        values = profile()
        readings_a = [reading(id_a, t0 + i * STEP, v) for i, v in enumerate(values)]
        batches = [readings_a[i : i + GRPC_BATCH] for i in range(0, N, GRPC_BATCH)]
        batches[-1].append(reading(id_a, t0 + N * STEP, 500.0))  # outside the physical range
        gateway = Gateway(license_, f"gw-grpc-{uuid.uuid4().hex[:8]}", batches)
        grpc_errors: list[BaseException] = []

        def stream() -> None:
            try:
                gateway.run(stack.server.target)
            except BaseException as exc:  # reported below, with the rest
                grpc_errors.append(exc)

        streamer = threading.Thread(target=stream)
        streamer.start()
        topic = f"seedline/{license_.split('/')[1]}/{section.rsplit('/', 1)[1]}/{id_b}"
        messages = asyncio.run(publish_readings(broker, topic, t0, values))
        streamer.join(30)
        assert not streamer.is_alive(), "the gRPC gateway did not finish"
        assert not grpc_errors, grpc_errors

        # What the gRPC stream acknowledged: every batch, each reading but the out-of-range one.
        assert not gateway.unacked
        assert sorted(gateway.acks) == list(range(1, len(batches) + 1))
        acknowledged = sum(a.accepted_count for a in gateway.acks.values())
        last = gateway.acks[len(batches)]
        assert [(r.index, r.reason) for r in last.rejected_readings] == [
            (GRPC_BATCH, pb.REJECTION_REASON_OUT_OF_RANGE)
        ]
        assert acknowledged == N
        assert db_counts(e2e_pg_url, [id_a]) == (acknowledged, acknowledged)  # committed before the ack

        # The broker PUBACKed every MQTT message to the publisher; the bridge acknowledges each
        # to the broker only after its readings are committed. Wait for the commits, then let the
        # bridge drain (SIGTERM) and read its counters.
        deadline = time.monotonic() + 10
        while db_counts(e2e_pg_url, [id_b])[0] < N and time.monotonic() < deadline:
            time.sleep(0.1)
        code = bridge.stop()
        stats = bridge_stats(bridge)
        bridge = None
        assert code == 0
        assert stats["messages"] == stats["acknowledged"] == messages
        assert stats["readings_accepted"] == N
        assert stats["readings_rejected"] == stats["readings_invalid"] == stats["dead_letters"] == 0

        # 5. The database holds exactly what was acknowledged over gRPC plus what was sent over MQTT.
        assert db_counts(e2e_pg_url, [id_b]) == (N, N)
        assert db_counts(e2e_pg_url, [id_a, id_b]) == (acknowledged + N, acknowledged + N)

        # 4. The watcher saw each sensor's alert fire, then resolve (and nothing else).
        seen: list[pb.WatchAlertsResponse] = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            resolved = {m.alert.sensor for m in seen if m.change == pb.ALERT_CHANGE_RESOLVED}
            if resolved >= {sensor_a.name, sensor_b.name}:
                break
            with contextlib.suppress(queue.Empty):
                seen.append(changes.get(timeout=0.2))
        time.sleep(0.3)  # anything more (a second alert from the short run, a duplicate) shows too
        while not changes.empty():
            seen.append(changes.get_nowait())
        by_sensor = {
            s.name: [(m.change, m.alert.state) for m in seen if m.alert.sensor == s.name]
            for s in (sensor_a, sensor_b)
        }
        expected = [
            (pb.ALERT_CHANGE_FIRED, pb.ALERT_STATE_FIRING),
            (pb.ALERT_CHANGE_RESOLVED, pb.ALERT_STATE_RESOLVED),
        ]
        listed = telemetry(channel).ListAlerts(pb.ListAlertsRequest(parent=license_))
        stored = {
            s.name: [a.state for a in listed.alerts if a.sensor == s.name] for s in (sensor_a, sensor_b)
        }
        assert by_sensor == {sensor_a.name: expected, sensor_b.name: expected}, (
            f"watched (change, state): gRPC sensor A {by_sensor[sensor_a.name]}, MQTT sensor B "
            f"{by_sensor[sensor_b.name]}; alerts stored: A {stored[sensor_a.name]}, B {stored[sensor_b.name]}"
        )
        for s in (sensor_a, sensor_b):
            fired, cleared = (m.alert for m in seen if m.alert.sensor == s.name)
            assert fired.name == cleared.name
            assert (fired.alert_rule, fired.section) == (rule.name, section)
            assert fired.condition.threshold == THRESHOLD
            assert fired.start_time.ToDatetime(tzinfo=UTC) == t0 + FIRST_HOT * STEP
            assert not fired.HasField("end_time")
            assert cleared.start_time == fired.start_time
            assert cleared.end_time.ToDatetime(tzinfo=UTC) == t0 + FIRST_CLEAR * STEP
            assert cleared.last_value == pytest.approx(26.0)
        assert stored == {sensor_a.name: [pb.ALERT_STATE_RESOLVED], sensor_b.name: [pb.ALERT_STATE_RESOLVED]}
    finally:
        if watch is not None:
            watch.cancel()
        if bridge is not None:
            bridge.stop()
        broker.stop()
