"""SQLAlchemy 2.0 models: the tables behind the registry, plants, audit and idempotency."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, Numeric, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime

ULID = String(26)
TZ = DateTime(timezone=True)
# 20 integer digits: the contract admits 12 integer digits in kg or lb, i.e. up to ~4.5e14 g.
AMOUNT = Numeric(24, 4)


class Base(DeclarativeBase):
    """Declarative base; ``metadata`` is what Alembic migrates."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB, datetime: TZ}


class Company(Base):
    """A legal entity holding licenses."""

    __tablename__ = "companies"
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    display_name: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime]


class License(Base):
    """A state-issued license; the container of all regulated material."""

    __tablename__ = "licenses"
    __table_args__ = (UniqueConstraint("jurisdiction", "license_number", name="uq_license_number"),)
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    company_id: Mapped[str] = mapped_column(ForeignKey("companies.id"), index=True)
    license_number: Mapped[str] = mapped_column(Text)
    display_name: Mapped[str] = mapped_column(Text)
    type: Mapped[int]
    jurisdiction: Mapped[str] = mapped_column(String(8))
    active: Mapped[bool]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)


class Contact(Base):
    """A person attached to a license."""

    __tablename__ = "contacts"
    __table_args__ = (Index("ix_contacts_license_id_id", "license_id", "id"),)
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    display_name: Mapped[str] = mapped_column(Text)
    type: Mapped[int]
    email: Mapped[str] = mapped_column(Text, default="")
    phone: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime]


class Section(Base):
    """A room, area or zone inside a license."""

    __tablename__ = "sections"
    __table_args__ = (
        UniqueConstraint("license_id", "display_name", name="uq_section_name"),
        Index("ix_sections_license_id_id", "license_id", "id"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    display_name: Mapped[str] = mapped_column(Text)
    type: Mapped[int]
    active: Mapped[bool]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)


class Variety(Base):
    """A strain / cultivar."""

    __tablename__ = "varieties"
    __table_args__ = (
        UniqueConstraint("license_id", "display_name", name="uq_variety_name"),
        Index("ix_varieties_license_id_id", "license_id", "id"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    display_name: Mapped[str] = mapped_column(Text)
    type: Mapped[int]
    create_time: Mapped[datetime]


class Product(Base):
    """What a lot is "of"; its package type fixes how lots are counted."""

    __tablename__ = "products"
    __table_args__ = (Index("ix_products_license_id_id", "license_id", "id"),)
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    display_name: Mapped[str] = mapped_column(Text)
    product_type: Mapped[str] = mapped_column(ULID)
    package_type: Mapped[int]
    bulk_unit: Mapped[int]
    unit_size_value: Mapped[Decimal | None] = mapped_column(AMOUNT)
    unit_size_unit: Mapped[int]
    pack_unit_count: Mapped[int]
    serving_size_value: Mapped[Decimal | None] = mapped_column(AMOUNT)
    serving_size_unit: Mapped[int]
    servings_per_unit: Mapped[int]
    create_time: Mapped[datetime]


class Plant(Base):
    """A plant tracked individually."""

    __tablename__ = "plants"
    __table_args__ = (
        # Keyset pagination walks (license_id, id); the filtered lists use the others.
        Index("ix_plants_license_id_id", "license_id", "id"),
        Index("ix_plants_license_section", "license_id", "section_id", "id"),
        Index("ix_plants_license_variety", "license_id", "variety_id", "id"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    display_name: Mapped[str] = mapped_column(Text, default="")
    variety_id: Mapped[str] = mapped_column(ForeignKey("varieties.id"))
    section_id: Mapped[str] = mapped_column(ForeignKey("sections.id"))
    source_lot: Mapped[str] = mapped_column(Text, default="")
    batch: Mapped[str] = mapped_column(Text, default="")
    phase: Mapped[int]
    state: Mapped[int]
    plant_time: Mapped[datetime]
    vegetative_time: Mapped[datetime | None]
    flowering_time: Mapped[datetime | None]
    harvest_time: Mapped[datetime | None]
    destruction: Mapped[dict[str, Any] | None]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)


class PlantEvent(Base):
    """One entry in a plant's history."""

    __tablename__ = "plant_events"
    __table_args__ = (Index("ix_plant_events_plant_time", "plant_id", "event_time"),)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    plant_id: Mapped[str] = mapped_column(ForeignKey("plants.id"))
    type: Mapped[int]
    event_time: Mapped[datetime]
    actor: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]]
    audit_event_id: Mapped[str] = mapped_column(ULID)


class AuditEvent(Base):
    """Append-only, hash-chained record of every mutation."""

    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(ULID, unique=True)
    license_id: Mapped[str | None] = mapped_column(ULID, index=True)
    event_time: Mapped[datetime]
    principal: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(Text)
    resource: Mapped[str] = mapped_column(Text, index=True)
    action: Mapped[str] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    request_id: Mapped[str] = mapped_column(Text, default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class IdempotencyKey(Base):
    """The first response to a request id, replayed on retries (AIP-155)."""

    __tablename__ = "idempotency_keys"
    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    response: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime]
