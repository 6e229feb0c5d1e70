"""SQLAlchemy models of telemetry alerting: rules, alerts, and the alert change log.

At most one alert per (rule, sensor) is firing: a partial unique index enforces it, so two
server processes that judge the same sensor cannot both open an alert (the second insert does
nothing and that process adopts the first one's alert).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Double, ForeignKey, Index, SmallInteger, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from seedline_server.store import telemetry_models as telemetry_models  # the sensors table
from seedline_server.store.models import ULID, Base

FIRING = 1  # seedline.telemetry.v1.AlertState.ALERT_STATE_FIRING
RESOLVED = 2  # ALERT_STATE_RESOLVED


class AlertRule(Base):
    """A rule raising alerts when a sensor's readings meet its condition (soft-deleted).

    The scope is a section (every sensor of ``metric`` there) or one sensor. ``hold_seconds``
    is the condition's hold duration.
    """

    __tablename__ = "alert_rules"
    __table_args__ = (
        CheckConstraint("(section_id IS NULL) <> (sensor_id IS NULL)", name="ck_alert_rules_scope"),
        CheckConstraint("comparator IN (1, 2, 3)", name="ck_alert_rules_comparator"),
        CheckConstraint("hysteresis IS NULL OR hysteresis >= 0", name="ck_alert_rules_hysteresis"),
        Index("ix_alert_rules_license_id_id", "license_id", "id"),
        Index("ix_alert_rules_sensor", "sensor_id", postgresql_where=text("delete_time IS NULL")),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    display_name: Mapped[str] = mapped_column(Text)
    metric: Mapped[int] = mapped_column(SmallInteger)
    section_id: Mapped[str | None] = mapped_column(ForeignKey("sections.id"))
    sensor_id: Mapped[str | None] = mapped_column(ForeignKey("sensors.id"))
    comparator: Mapped[int] = mapped_column(SmallInteger)
    threshold: Mapped[float | None] = mapped_column(Double)
    lower_bound: Mapped[float | None] = mapped_column(Double)
    upper_bound: Mapped[float | None] = mapped_column(Double)
    unit: Mapped[int] = mapped_column(SmallInteger)
    hold_seconds: Mapped[float] = mapped_column(Double)
    # How far back inside a value must be to resolve, in ``unit``; NULL: the metric's default.
    hysteresis: Mapped[float | None] = mapped_column(Double)
    severity: Mapped[int] = mapped_column(SmallInteger)
    enabled: Mapped[bool]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    delete_time: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(default=1)


class Alert(Base):
    """One occurrence of a rule's condition holding for one sensor.

    ``condition`` is the rule's condition when the alert fired (the AlertRule columns of the
    condition, as JSON), so later rule changes do not rewrite history.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint("state IN (1, 2)", name="ck_alerts_state"),
        Index("ix_alerts_license_id_id", "license_id", "id"),
        Index("ix_alerts_rule", "rule_id", "id"),
        Index("ix_alerts_firing", "license_id", "id", postgresql_where=text("state = 1")),
        Index(
            "ux_alerts_one_firing", "rule_id", "sensor_id", unique=True, postgresql_where=text("state = 1")
        ),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    rule_id: Mapped[str] = mapped_column(ForeignKey("alert_rules.id"))
    sensor_id: Mapped[str] = mapped_column(ForeignKey("sensors.id"))
    section_id: Mapped[str] = mapped_column(ULID)
    condition: Mapped[dict[str, Any]]
    severity: Mapped[int] = mapped_column(SmallInteger)
    state: Mapped[int] = mapped_column(SmallInteger)
    start_time: Mapped[datetime]
    end_time: Mapped[datetime | None]
    last_value: Mapped[float] = mapped_column(Double)
    last_value_time: Mapped[datetime]
    acknowledge_time: Mapped[datetime | None]
    acknowledger: Mapped[str] = mapped_column(Text, default="")
    acknowledge_note: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)


class AlertEvent(Base):
    """A committed alert change, for WatchAlerts in every server process (kept briefly).

    ``alert`` is the alert's columns after the change (times as RFC 3339 text).
    """

    __tablename__ = "alert_events"
    __table_args__ = (
        Index("ix_alert_events_license", "license_id", "seq"),
        Index("ix_alert_events_time", "event_time"),
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    license_id: Mapped[str] = mapped_column(ULID)
    alert_id: Mapped[str] = mapped_column(ULID)
    change: Mapped[int] = mapped_column(SmallInteger)
    event_time: Mapped[datetime]
    alert: Mapped[dict[str, Any]]
