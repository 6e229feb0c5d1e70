"""SQLAlchemy models of telemetry: sensors, readings (partitioned by day), roll-ups, gateways.

``readings`` is declared here so that Alembic knows it, but it is written only with binary COPY
by :mod:`seedline_server.telemetry.ingest` and read with plain SQL; its daily partitions
(``readings_pYYYYMMDD``) are created and dropped by :mod:`seedline_server.telemetry.partitions`.
Readings carry the sensor's ``key`` (a bigint), not its ULID, to keep rows small.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from seedline_server.store.models import TZ, ULID, Base


class Sensor(Base):
    """A sensor: one metric at one section of a license. Deleted sensors keep their row."""

    __tablename__ = "sensors"
    __table_args__ = (
        Index("ix_sensors_license_id_id", "license_id", "id"),
        Index("ix_sensors_section_metric", "section_id", "metric"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    key: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    section_id: Mapped[str] = mapped_column(ForeignKey("sections.id"))
    display_name: Mapped[str] = mapped_column(Text)
    metric: Mapped[int] = mapped_column(SmallInteger)
    unit: Mapped[int] = mapped_column(SmallInteger)
    reporting_interval_seconds: Mapped[int] = mapped_column(Integer)
    # Not maintained: the status is computed from last_observe_time when a sensor is read.
    status: Mapped[int] = mapped_column(SmallInteger, default=0)
    last_observe_time: Mapped[datetime | None]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)
    delete_time: Mapped[datetime | None]


class IngestGateway(Base):
    """The committed high-water mark of a gateway's batch sequences (the de-duplication key)."""

    __tablename__ = "ingest_gateways"
    __table_args__ = (PrimaryKeyConstraint("license_id", "gateway_id"),)
    license_id: Mapped[str] = mapped_column(ULID)
    gateway_id: Mapped[str] = mapped_column(Text)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[datetime]


class IngestBatch(Base):
    """The acknowledgement of each committed batch, repeated when the batch is replayed (30 days)."""

    __tablename__ = "ingest_batches"
    __table_args__ = (
        PrimaryKeyConstraint("license_id", "gateway_id", "sequence"),
        Index("ix_ingest_batches_commit_time", "commit_time"),
    )
    license_id: Mapped[str] = mapped_column(ULID)
    gateway_id: Mapped[str] = mapped_column(Text)
    sequence: Mapped[int] = mapped_column(BigInteger)
    accepted: Mapped[int] = mapped_column(Integer)
    # The rejected readings as a serialized IngestReadingsResponse (only its rejections).
    rejected: Mapped[bytes] = mapped_column(LargeBinary)
    commit_time: Mapped[datetime]


readings = Table(
    "readings",
    Base.metadata,
    Column("sensor_key", BigInteger, nullable=False),
    Column("observe_time", TZ, nullable=False),
    Column("value", Double, nullable=False),
    Index("ix_readings_time_brin", "observe_time", postgresql_using="brin"),
    Index("ix_readings_sensor_time", "sensor_key", "observe_time"),
    postgresql_partition_by="RANGE (observe_time)",
)


def _rollup(name: str) -> Table:
    return Table(
        name,
        Base.metadata,
        Column("sensor_key", BigInteger, nullable=False),
        Column("bucket_start", TZ, nullable=False),
        Column("min", Double, nullable=False),
        Column("max", Double, nullable=False),
        Column("sum", Double, nullable=False),
        Column("count", BigInteger, nullable=False),
        PrimaryKeyConstraint("sensor_key", "bucket_start"),
    )


readings_1m = _rollup("readings_1m")
readings_1h = _rollup("readings_1h")


def _section_rollup(name: str) -> Table:
    """Per section and metric, in the metric's first listed unit, by the section of each reading."""
    return Table(
        name,
        Base.metadata,
        Column("section_id", String(26), nullable=False),
        Column("metric", SmallInteger, nullable=False),
        Column("bucket_start", TZ, nullable=False),
        Column("min", Double, nullable=False),
        Column("max", Double, nullable=False),
        Column("sum", Double, nullable=False),
        Column("count", BigInteger, nullable=False),
        PrimaryKeyConstraint("section_id", "metric", "bucket_start"),
    )


section_readings_1m = _section_rollup("section_readings_1m")
section_readings_1h = _section_rollup("section_readings_1h")


_PARTITION = re.compile(r"^readings_p\d{8}$")


def include_name(name: str | None, type_: str, parent_names: Mapping[Any, str | None]) -> bool:
    """Alembic ``include_name`` hook: leave ``readings``' daily partitions out of autogenerate.

    The server creates and drops them (and their indexes), so they are not the models' drift.
    """
    if type_ == "table":
        return name is None or _PARTITION.match(name) is None
    if type_ == "index":
        table = parent_names.get("table_name") or ""
        return _PARTITION.match(table) is None
    return True
