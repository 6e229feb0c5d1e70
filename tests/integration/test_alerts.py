"""Alert rules, alerts and WatchAlerts against real PostgreSQL, through a real gRPC server.

The alert hub is fed CommittedReadings directly (as the ingest pipeline's listener would be),
so these tests pin the alerting rules without depending on the ingest path.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, field_mask_pb2
from google.rpc import error_details_pb2, status_pb2
from seedline.telemetry.v1 import telemetry_pb2 as pb
from seedline.telemetry.v1 import telemetry_pb2_grpc
from sqlalchemy import func, select
from ulid import ULID

from seedline_server.api.interceptor import CallInterceptor
from seedline_server.api.telemetry_alerts import AlertRpcs
from seedline_server.domain.errors import ReferenceInvalid
from seedline_server.service import alerts as uses
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import alert_models as am
from seedline_server.store import db
from seedline_server.store import integration_models as im
from seedline_server.telemetry import sensors as telemetry_sensors
from seedline_server.telemetry.alerts import AlertHub
from seedline_server.telemetry.ingest import CommittedReading
from tests.integration.conftest import CTX, Farm
from tests.integration.test_outbox import add_integration
from tests.integration.test_telemetry_pipeline import add_sensor

pytestmark = pytest.mark.asyncio(loop_scope="session")

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
TEMPERATURE, HUMIDITY, CELSIUS, FAHRENHEIT, PERCENT = 1, 2, 1, 2, 3


class Servicer(AlertRpcs, telemetry_pb2_grpc.TelemetryServiceServicer):
    """The alert RPCs as the core servicer carries them (the mixin first: it overrides the stubs)."""

    def __init__(self, db: Database, hub: AlertHub) -> None:
        self._db = db
        self._alerts = hub
        self.heartbeat_seconds = 0.5


@dataclass
class Stack:
    db: Database
    hub: AlertHub
    stub: telemetry_pb2_grpc.TelemetryServiceStub


def dsn(url: str) -> str:
    return db.libpq_url(url)


@pytest_asyncio.fixture(loop_scope="session")
async def stack(database: Database, migrated: str) -> AsyncIterator[Stack]:
    hub = AlertHub(database, dsn(migrated), poll_interval=0.5, refresh_interval=0.5)
    await hub.start()
    server = grpc.aio.server(interceptors=[CallInterceptor(trust_forwarded=False)])
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(Servicer(database, hub), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Stack(database, hub, telemetry_pb2_grpc.TelemetryServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(grace=None)
        await hub.stop()


def section_name(farm: Farm) -> str:
    return f"licenses/{farm.license_id}/sections/{farm.section_id}"


def gt_rule(farm: Farm, threshold: float = 28.0, hold: int = 300, **kw: object) -> pb.AlertRule:
    return pb.AlertRule(
        display_name="Too hot",
        condition=pb.AlertCondition(
            metric=TEMPERATURE,
            section=section_name(farm),
            comparator=pb.COMPARATOR_GT,
            threshold=threshold,
            unit=CELSIUS,
            hold_duration=duration_pb2.Duration(seconds=hold),
        ),
        severity=pb.ALERT_SEVERITY_WARNING,
        enabled=True,
        **kw,  # type: ignore[arg-type]
    )


def reading(farm: Farm, sensor: str, seconds: float, value: float, unit: int = CELSIUS) -> CommittedReading:
    return CommittedReading(
        sensor_id=sensor,
        license_id=farm.license_id,
        section_id=farm.section_id,
        metric=TEMPERATURE,
        unit=unit,
        observe_time=T0 + timedelta(seconds=seconds),
        value=value,
    )


async def create_rule(s: Stack, farm: Farm, rule: pb.AlertRule) -> pb.AlertRule:
    created = await s.stub.CreateAlertRule(
        pb.CreateAlertRuleRequest(parent=f"licenses/{farm.license_id}", alert_rule=rule)
    )
    await s.hub.refresh()
    return created


async def alerts_of(db: Database, rule_name: str) -> list[am.Alert]:
    rule_id = rule_name.rsplit("/", 1)[1]

    async def run(uow: UnitOfWork) -> list[am.Alert]:
        stmt = select(am.Alert).where(am.Alert.rule_id == rule_id).order_by(am.Alert.id)
        return list((await uow.session.scalars(stmt)).all())

    return await db.read(CTX, run)


async def deliveries(db: Database, iid: str) -> list[tuple[str, str]]:
    async def run(uow: UnitOfWork) -> list[tuple[str, str]]:
        d = im.Delivery
        rows = await uow.session.execute(
            select(d.event_type, d.resource).where(d.integration_id == iid).order_by(d.id)
        )
        return [(e, r) for e, r in rows]

    return await db.read(CTX, run)


def status_of(exc: grpc.aio.AioRpcError) -> grpc.StatusCode:
    return exc.code()


# --- rules ----------------------------------------------------------------------------------------


async def test_rule_crud(stack: Stack, farm: Farm) -> None:
    parent = f"licenses/{farm.license_id}"
    created = await create_rule(stack, farm, gt_rule(farm))
    assert created.name.startswith(f"{parent}/alertRules/")
    assert created.condition.threshold == 28.0
    assert created.condition.hold_duration.seconds == 300
    assert created.etag

    got = await stack.stub.GetAlertRule(pb.GetAlertRuleRequest(name=created.name))
    assert got == created

    sensor = await add_sensor(stack.db, farm, HUMIDITY, PERCENT)
    humid = pb.AlertRule(
        display_name="Too humid",
        condition=pb.AlertCondition(
            metric=HUMIDITY,
            sensor=f"{parent}/sensors/{sensor}",
            comparator=pb.COMPARATOR_OUTSIDE_RANGE,
            lower_bound=40,
            upper_bound=65,
            unit=PERCENT,
        ),
        severity=pb.ALERT_SEVERITY_CRITICAL,
        enabled=False,
    )
    second = await create_rule(stack, farm, humid)

    page = await stack.stub.ListAlertRules(pb.ListAlertRulesRequest(parent=parent, page_size=1))
    assert [r.name for r in page.alert_rules] == [created.name]
    page2 = await stack.stub.ListAlertRules(
        pb.ListAlertRulesRequest(parent=parent, page_size=1, page_token=page.next_page_token)
    )
    assert [r.name for r in page2.alert_rules] == [second.name]
    assert not page2.next_page_token
    crit = await stack.stub.ListAlertRules(
        pb.ListAlertRulesRequest(
            parent=parent, filter="severity = ALERT_SEVERITY_CRITICAL AND enabled = false"
        )
    )
    assert [r.name for r in crit.alert_rules] == [second.name]
    by_section = await stack.stub.ListAlertRules(
        pb.ListAlertRulesRequest(parent=parent, filter=f'condition.section = "{section_name(farm)}"')
    )
    assert [r.name for r in by_section.alert_rules] == [created.name]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stack.stub.ListAlertRules(pb.ListAlertRulesRequest(parent=parent, filter="colour = red"))
    assert status_of(bad.value) == grpc.StatusCode.INVALID_ARGUMENT

    # Only what changes (AIP-134): the condition, severity... need not be restated.
    change = pb.AlertRule(name=created.name, display_name="Way too hot", etag=created.etag)
    updated = await stack.stub.UpdateAlertRule(
        pb.UpdateAlertRuleRequest(
            alert_rule=change, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
        )
    )
    assert updated.display_name == "Way too hot"
    assert updated.condition == created.condition
    assert updated.etag != created.etag
    with pytest.raises(grpc.aio.AioRpcError) as blank:  # what the mask names is still checked
        await stack.stub.UpdateAlertRule(
            pb.UpdateAlertRuleRequest(
                alert_rule=pb.AlertRule(name=created.name, etag=updated.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["severity"]),
            )
        )
    assert status_of(blank.value) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stack.stub.UpdateAlertRule(
            pb.UpdateAlertRuleRequest(
                alert_rule=change, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
            )
        )
    assert status_of(stale.value) == grpc.StatusCode.ABORTED

    await stack.stub.DeleteAlertRule(pb.DeleteAlertRuleRequest(name=created.name, request_id="del-1"))
    await stack.stub.DeleteAlertRule(pb.DeleteAlertRuleRequest(name=created.name, request_id="del-1"))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stack.stub.GetAlertRule(pb.GetAlertRuleRequest(name=created.name))
    assert status_of(gone.value) == grpc.StatusCode.NOT_FOUND


async def test_rule_validation(stack: Stack, farm: Farm) -> None:
    parent = f"licenses/{farm.license_id}"
    no_threshold = gt_rule(farm)
    no_threshold.condition.ClearField("threshold")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.CreateAlertRule(pb.CreateAlertRuleRequest(parent=parent, alert_rule=no_threshold))
    assert status_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT

    humid_sensor = await add_sensor(stack.db, farm, HUMIDITY, PERCENT)
    wrong_metric = gt_rule(farm)
    wrong_metric.condition.sensor = f"{parent}/sensors/{humid_sensor}"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.CreateAlertRule(pb.CreateAlertRuleRequest(parent=parent, alert_rule=wrong_metric))
    assert status_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT

    unknown = gt_rule(farm)
    unknown.condition.section = f"{parent}/sections/{ULID()}"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.CreateAlertRule(pb.CreateAlertRuleRequest(parent=parent, alert_rule=unknown))
    assert status_of(err.value) == grpc.StatusCode.FAILED_PRECONDITION

    other = gt_rule(farm)
    other.condition.section = f"licenses/{ULID()}/sections/{farm.section_id}"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.CreateAlertRule(pb.CreateAlertRuleRequest(parent=parent, alert_rule=other))
    assert status_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT

    first = await stack.stub.CreateAlertRule(
        pb.CreateAlertRuleRequest(parent=parent, alert_rule=gt_rule(farm), request_id="r-1")
    )
    again = await stack.stub.CreateAlertRule(
        pb.CreateAlertRuleRequest(parent=parent, alert_rule=gt_rule(farm), request_id="r-1")
    )
    assert again.name == first.name


# --- alerts ---------------------------------------------------------------------------------------


async def test_alert_opens_after_the_hold_and_closes_with_hysteresis(stack: Stack, farm: Farm) -> None:
    hook = await add_integration(stack.db, farm, events=["alert.opened", "alert.closed"])
    sensor = await add_sensor(stack.db, farm)
    rule = await create_rule(stack, farm, gt_rule(farm))

    stack.hub.on_readings([reading(farm, sensor, 0, 27.0), reading(farm, sensor, 10, 28.5)])
    stack.hub.on_readings([reading(farm, sensor, 200, 29.0)])
    await stack.hub.drain()
    assert await alerts_of(stack.db, rule.name) == []  # held 190 s of 300

    # 86 °F = 30 °C: readings in another unit of the metric are converted.
    stack.hub.on_readings([reading(farm, sensor, 310, 86.0, FAHRENHEIT)])
    await stack.hub.drain()
    [alert] = await alerts_of(stack.db, rule.name)
    assert alert.state == am.FIRING
    assert alert.start_time == T0 + timedelta(seconds=10)
    assert alert.last_value == pytest.approx(30.0)
    name = uses.alert_name(farm.license_id, alert.id)
    assert await deliveries(stack.db, hook) == [("alert.opened", name)]

    # Inside, but not by the 0.5 °C margin: still firing.
    stack.hub.on_readings([reading(farm, sensor, 320, 27.8), reading(farm, sensor, 330, 28.3)])
    await stack.hub.drain()
    [alert] = await alerts_of(stack.db, rule.name)
    assert alert.state == am.FIRING

    stack.hub.on_readings([reading(farm, sensor, 340, 27.4)])
    await stack.hub.drain()
    [alert] = await alerts_of(stack.db, rule.name)
    assert alert.state == am.RESOLVED
    assert alert.end_time == T0 + timedelta(seconds=340)
    assert alert.last_value == pytest.approx(27.4)
    assert await deliveries(stack.db, hook) == [("alert.opened", name), ("alert.closed", name)]

    got = await stack.stub.GetAlert(pb.GetAlertRequest(name=name))
    assert got.state == pb.ALERT_STATE_RESOLVED
    assert got.alert_rule == rule.name
    assert got.sensor == f"licenses/{farm.license_id}/sensors/{sensor}"
    assert got.condition.threshold == 28.0


async def test_a_rule_sets_its_own_hysteresis(stack: Stack, farm: Farm) -> None:
    parent = f"licenses/{farm.license_id}"
    sensor = await add_sensor(stack.db, farm)
    wide = gt_rule(farm, hold=0)
    wide.condition.hysteresis = 2.0
    rule = await create_rule(stack, farm, wide)
    assert rule.condition.HasField("hysteresis")
    assert rule.condition.hysteresis == 2.0
    default = await create_rule(stack, farm, gt_rule(farm, hold=0))
    assert not default.condition.HasField("hysteresis")  # unset: the metric's default margin

    stack.hub.on_readings([reading(farm, sensor, 0, 29.0)])
    stack.hub.on_readings([reading(farm, sensor, 10, 27.0)])  # 1 °C inside: past 0.5, not past 2
    await stack.hub.drain()
    [alert] = await alerts_of(stack.db, rule.name)
    assert alert.state == am.FIRING
    [other] = await alerts_of(stack.db, default.name)
    assert other.state == am.RESOLVED
    stack.hub.on_readings([reading(farm, sensor, 20, 25.9)])
    await stack.hub.drain()
    [alert] = await alerts_of(stack.db, rule.name)
    assert alert.state == am.RESOLVED
    got = await stack.stub.GetAlert(pb.GetAlertRequest(name=uses.alert_name(farm.license_id, alert.id)))
    assert got.condition.hysteresis == 2.0  # the alert keeps the condition it fired under

    for bad in (-1.0, math.inf):
        negative = gt_rule(farm)
        negative.condition.hysteresis = bad
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack.stub.CreateAlertRule(pb.CreateAlertRuleRequest(parent=parent, alert_rule=negative))
        assert status_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    too_wide = gt_rule(farm)
    too_wide.condition.ClearField("threshold")
    too_wide.condition.comparator = pb.COMPARATOR_OUTSIDE_RANGE
    too_wide.condition.lower_bound, too_wide.condition.upper_bound = 18.0, 28.0
    too_wide.condition.hysteresis = 5.0  # a value can never be 5 inside both ends of a 10-wide range
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.CreateAlertRule(pb.CreateAlertRuleRequest(parent=parent, alert_rule=too_wide))
    assert status_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    status = status_pb2.Status.FromString(
        dict(err.value.trailing_metadata() or ())["grpc-status-details-bin"]
    )
    bad = next(d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR))
    request = error_details_pb2.BadRequest()
    bad.Unpack(request)
    assert [v.field for v in request.field_violations] == ["alert_rule.condition"]
    assert "hysteresis" in request.field_violations[0].description


async def test_the_webhook_delivery_commits_with_the_alert(stack: Stack, farm: Farm) -> None:
    hook = await add_integration(stack.db, farm, events=["alert.opened"])
    sensor = await add_sensor(stack.db, farm)
    rule_pb = await create_rule(stack, farm, gt_rule(farm, hold=0))
    rule_id = rule_pb.name.rsplit("/", 1)[1]

    class Boom(Exception):
        pass

    async def open_then_fail(uow: UnitOfWork) -> None:
        rule = await uses.get_rule(uow, farm.license_id, rule_id)
        _, opened = await uses.open_alert(uow, uses.Opening(rule, sensor, farm.section_id, T0, 30.0, T0))
        assert opened
        assert len(await deliveries_in(uow, hook)) == 1  # written in this transaction...
        raise Boom

    with pytest.raises(Boom):
        await stack.db.write(CTX, open_then_fail)
    assert await alerts_of(stack.db, rule_pb.name) == []  # ...and rolled back with it
    assert await deliveries(stack.db, hook) == []

    stack.hub.on_readings([reading(farm, sensor, 0, 30.0)])
    await stack.hub.drain()
    assert len(await alerts_of(stack.db, rule_pb.name)) == 1
    assert len(await deliveries(stack.db, hook)) == 1


async def deliveries_in(uow: UnitOfWork, iid: str) -> list[str]:
    d = im.Delivery
    return list((await uow.session.scalars(select(d.id).where(d.integration_id == iid))).all())


async def test_two_evaluators_cannot_open_the_same_alert_twice(
    stack: Stack, farm: Farm, database: Database, migrated: str
) -> None:
    hook = await add_integration(stack.db, farm, events=["alert.opened", "alert.closed"])
    sensor = await add_sensor(stack.db, farm)
    rule = await create_rule(stack, farm, gt_rule(farm, hold=0))
    other = AlertHub(database, dsn(migrated), poll_interval=0.5)
    await other.start()
    try:
        batch = [reading(farm, sensor, 0, 35.0)]
        stack.hub.on_readings(batch)
        other.on_readings(batch)
        await asyncio.gather(stack.hub.drain(), other.drain())
        alerts = await alerts_of(stack.db, rule.name)
        assert [a.state for a in alerts] == [am.FIRING]
        assert [e for e, _ in await deliveries(stack.db, hook)] == ["alert.opened"]

        # Each process tracks it as firing; the first to see the clearing reading resolves it.
        clear = [reading(farm, sensor, 10, 20.0)]
        other.on_readings(clear)
        stack.hub.on_readings(clear)
        await asyncio.gather(stack.hub.drain(), other.drain())
        alerts = await alerts_of(stack.db, rule.name)
        assert [a.state for a in alerts] == [am.RESOLVED]
        assert [e for e, _ in await deliveries(stack.db, hook)] == ["alert.opened", "alert.closed"]

        async def fired(uow: UnitOfWork) -> int:
            e = am.AlertEvent
            return int(
                await uow.session.scalar(
                    select(func.count()).where(e.alert_id == alerts[0].id, e.change == uses.FIRED)
                )
                or 0
            )

        assert await stack.db.read(CTX, fired) == 1
    finally:
        await other.stop()


async def test_watcher_sees_open_acknowledge_and_close(stack: Stack, farm: Farm) -> None:
    parent = f"licenses/{farm.license_id}"
    sensor = await add_sensor(stack.db, farm)
    rule = await create_rule(stack, farm, gt_rule(farm, hold=0))
    stream = stack.stub.WatchAlerts(pb.WatchAlertsRequest(parent=parent))
    messages = stream.__aiter__()

    async def next_change() -> pb.WatchAlertsResponse:
        while True:
            msg = await asyncio.wait_for(messages.__anext__(), 10)
            if msg.change != pb.ALERT_CHANGE_UNSPECIFIED:
                return msg

    first = await asyncio.wait_for(messages.__anext__(), 10)  # nothing firing yet: a heartbeat
    assert first == pb.WatchAlertsResponse()

    stack.hub.on_readings([reading(farm, sensor, 0, 31.0)])
    fired = await next_change()
    assert fired.change == pb.ALERT_CHANGE_FIRED
    assert fired.alert.state == pb.ALERT_STATE_FIRING
    assert fired.alert.alert_rule == rule.name

    # A watcher that opens now gets the firing alert first.
    late = stack.stub.WatchAlerts(pb.WatchAlertsRequest(parent=parent, alert_rules=[rule.name]))
    current = await asyncio.wait_for(late.__aiter__().__anext__(), 10)
    assert current.change == pb.ALERT_CHANGE_CURRENT
    assert current.alert.name == fired.alert.name
    late.cancel()
    # Another severity floor hides it.
    critical = stack.stub.WatchAlerts(
        pb.WatchAlertsRequest(parent=parent, min_severity=pb.ALERT_SEVERITY_CRITICAL)
    )
    assert await asyncio.wait_for(critical.__aiter__().__anext__(), 10) == pb.WatchAlertsResponse()
    critical.cancel()

    acked = await stack.stub.AcknowledgeAlert(
        pb.AcknowledgeAlertRequest(name=fired.alert.name, note="door closed", etag=fired.alert.etag)
    )
    assert acked.acknowledge_note == "door closed"
    assert acked.acknowledger == "anonymous"
    again = await stack.stub.AcknowledgeAlert(pb.AcknowledgeAlertRequest(name=fired.alert.name, note="later"))
    assert again.acknowledge_note == "door closed"
    assert again.acknowledge_time == acked.acknowledge_time
    ack = await next_change()
    assert ack.change == pb.ALERT_CHANGE_ACKNOWLEDGED

    stack.hub.on_readings([reading(farm, sensor, 10, 20.0)])
    resolved = await next_change()
    assert resolved.change == pb.ALERT_CHANGE_RESOLVED
    assert resolved.alert.state == pb.ALERT_STATE_RESOLVED
    assert resolved.alert.end_time.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=10)
    stream.cancel()


async def test_list_alerts_filters_and_rule_changes_resolve(stack: Stack, farm: Farm) -> None:
    parent = f"licenses/{farm.license_id}"
    a, b = await add_sensor(stack.db, farm), await add_sensor(stack.db, farm)
    rule = await create_rule(stack, farm, gt_rule(farm, hold=0))
    stack.hub.on_readings([reading(farm, a, 0, 30.0)])
    await stack.hub.drain()
    stack.hub.on_readings([reading(farm, b, 1, 33.0)])
    await stack.hub.drain()

    firing = await stack.stub.ListAlerts(
        pb.ListAlertsRequest(parent=parent, filter="state = ALERT_STATE_FIRING")
    )
    assert [x.sensor.rsplit("/", 1)[1] for x in firing.alerts] == [a, b]
    page = await stack.stub.ListAlerts(pb.ListAlertsRequest(parent=parent, page_size=1))
    assert len(page.alerts) == 1
    assert page.next_page_token
    only_b = await stack.stub.ListAlerts(
        pb.ListAlertsRequest(
            parent=parent, filter=f'sensor = "{parent}/sensors/{b}" AND acknowledged = false'
        )
    )
    assert [x.sensor for x in only_b.alerts] == [f"{parent}/sensors/{b}"]
    later = await stack.stub.ListAlerts(
        pb.ListAlertsRequest(
            parent=parent, filter=f'start_time > "{(T0 + timedelta(seconds=0.5)).isoformat()}"'
        )
    )
    assert [x.sensor for x in later.alerts] == [f"{parent}/sensors/{b}"]

    # Raise the threshold to 31 °C: a's 30 °C no longer meets it (resolved), b's 33 °C does.
    change = pb.AlertRule()
    change.CopyFrom(rule)
    change.condition.threshold = 31.0
    await stack.stub.UpdateAlertRule(pb.UpdateAlertRuleRequest(alert_rule=change))
    states = {x.sensor_id: x.state for x in await alerts_of(stack.db, rule.name)}
    assert states == {a: am.RESOLVED, b: am.FIRING}

    # Disabling resolves the rest; the hub forgets the rule.
    now_rule = await stack.stub.GetAlertRule(pb.GetAlertRuleRequest(name=rule.name))
    now_rule.enabled = False
    await stack.stub.UpdateAlertRule(
        pb.UpdateAlertRuleRequest(
            alert_rule=now_rule, update_mask=field_mask_pb2.FieldMask(paths=["enabled"])
        )
    )
    assert {x.state for x in await alerts_of(stack.db, rule.name)} == {am.RESOLVED}
    await stack.hub.refresh()
    stack.hub.on_readings([reading(farm, a, 5, 40.0)])
    await stack.hub.drain()
    assert len(await alerts_of(stack.db, rule.name)) == 2


async def test_another_process_resolves_an_alert_it_did_not_open(
    stack: Stack, farm: Farm, database: Database, migrated: str
) -> None:
    sensor = await add_sensor(stack.db, farm)
    rule = await create_rule(stack, farm, gt_rule(farm, hold=0))
    other = AlertHub(database, dsn(migrated), poll_interval=0.5)
    await other.start()  # loads the rule before the alert exists
    try:
        stack.hub.on_readings([reading(farm, sensor, 0, 35.0)])
        await stack.hub.drain()
        stack.hub.on_readings([reading(farm, sensor, 5, 36.0)])
        await stack.hub.touch()  # the latest value while firing is recorded
        [alert] = await alerts_of(stack.db, rule.name)
        assert alert.last_value == 36.0

        await other.refresh()  # learns that the alert is firing
        other.on_readings([reading(farm, sensor, 10, 20.0)])
        await other.drain()
        [alert] = await alerts_of(stack.db, rule.name)
        assert alert.state == am.RESOLVED
        assert alert.end_time == T0 + timedelta(seconds=10)
    finally:
        await other.stop()


async def test_a_sensor_named_by_a_live_rule_cannot_be_deleted(stack: Stack, farm: Farm) -> None:
    sensor = await add_sensor(stack.db, farm)
    rule = gt_rule(farm)
    rule.condition.sensor = f"licenses/{farm.license_id}/sensors/{sensor}"
    created = await create_rule(stack, farm, rule)

    async def delete(uow: UnitOfWork) -> None:
        await telemetry_sensors.delete_sensor(uow, farm.license_id, sensor, "")

    with pytest.raises(ReferenceInvalid) as used:
        await stack.db.write(CTX, delete)
    assert used.value.metadata == {"alert_rule": created.name}
    await stack.stub.DeleteAlertRule(pb.DeleteAlertRuleRequest(name=created.name, etag=created.etag))
    await stack.db.write(CTX, delete)  # no live rule names it any more
