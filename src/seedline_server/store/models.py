"""SQLAlchemy 2.0 models: the tables behind the registry, plants, audit and idempotency."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    LargeBinary,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
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


class Lot(Base):
    """An amount of one product in one section (OpenTHC inventory).

    ``quantity`` is in the storage unit of the product's counting dimension (g, l or ea), rounded
    once at the boundary; PostgreSQL refuses a negative value whatever the code does.
    """

    __tablename__ = "lots"
    __table_args__ = (
        CheckConstraint("quantity >= 0", name="ck_lots_quantity_non_negative"),
        # Keyset pagination walks (license_id, id); each filter has its own (license_id, x, id)
        # index so a filtered page is an index range scan, not a filter over the license.
        Index("ix_lots_license_id_id", "license_id", "id"),
        Index("ix_lots_license_product", "license_id", "product_id", "id"),
        Index("ix_lots_license_variety", "license_id", "variety_id", "id"),
        Index("ix_lots_license_section", "license_id", "section_id", "id"),
        Index("ix_lots_license_status", "license_id", "status", "id"),
        # Voiding a lab result finds the lots it governs.
        Index("ix_lots_lab_result", "lab_result"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    display_name: Mapped[str] = mapped_column(Text, default="")
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"))
    variety_id: Mapped[str | None] = mapped_column(ForeignKey("varieties.id"))
    section_id: Mapped[str] = mapped_column(ForeignKey("sections.id"))
    quantity: Mapped[Decimal] = mapped_column(AMOUNT)
    status: Mapped[int] = mapped_column(SmallInteger)
    lab_status: Mapped[int] = mapped_column(SmallInteger)
    lab_result: Mapped[str] = mapped_column(Text, default="")
    origin: Mapped[int] = mapped_column(SmallInteger)
    source_lots: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    source_collection: Mapped[str] = mapped_column(Text, default="")
    source_transfer: Mapped[str] = mapped_column(Text, default="")
    supplier_license_number: Mapped[str] = mapped_column(Text, default="")
    manifest_number: Mapped[str] = mapped_column(Text, default="")
    state_tag: Mapped[str] = mapped_column(Text, default="")
    state_system_id: Mapped[str] = mapped_column(Text, default="")
    destruction: Mapped[dict[str, Any] | None]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)


class LotAdjustment(Base):
    """A quantity change of a lot that is not a split, conversion or transfer (the adjust log)."""

    __tablename__ = "lot_adjustments"
    __table_args__ = (Index("ix_lot_adjustments_lot", "lot_id", "seq"),)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    lot_id: Mapped[str] = mapped_column(ForeignKey("lots.id"))
    before: Mapped[Decimal] = mapped_column(AMOUNT)
    after: Mapped[Decimal] = mapped_column(AMOUNT)
    reason: Mapped[int] = mapped_column(SmallInteger)
    note: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(Text)
    adjust_time: Mapped[datetime]
    audit_event_id: Mapped[str] = mapped_column(ULID)


class Collection(Base):
    """A harvest batch: wet weight from plants, later net collected into lots."""

    __tablename__ = "collections"
    __table_args__ = (Index("ix_collections_license_id_id", "license_id", "id"),)
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    display_name: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[int] = mapped_column(SmallInteger)
    total_wet: Mapped[Decimal] = mapped_column(AMOUNT)
    total_dry: Mapped[Decimal | None] = mapped_column(AMOUNT)
    waste: Mapped[Decimal | None] = mapped_column(AMOUNT)
    output_lots: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    create_time: Mapped[datetime]
    close_time: Mapped[datetime | None]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)


class CollectionWeight(Base):
    """One raw (wet) weighing of one plant into a collection."""

    __tablename__ = "collection_weights"
    __table_args__ = (
        CheckConstraint("wet_weight > 0", name="ck_collection_weights_positive"),
        Index("ix_collection_weights_collection", "collection_id", "seq"),
        Index("ix_collection_weights_plant", "plant_id"),
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    collection_id: Mapped[str] = mapped_column(ForeignKey("collections.id"))
    plant_id: Mapped[str] = mapped_column(ForeignKey("plants.id"))
    wet_weight: Mapped[Decimal] = mapped_column(AMOUNT)
    harvest: Mapped[bool]
    collect_time: Mapped[datetime]


class LineageEdge(Base):
    """A directed material link (upstream → downstream) between two resources, by name.

    Names rather than foreign keys because nodes are of several kinds (lots, plants,
    collections, transfers, samples) and may sit in different licenses after a transfer.
    """

    __tablename__ = "lineage_edges"
    __table_args__ = (
        Index("ix_lineage_edges_source", "source", "target"),
        Index("ix_lineage_edges_target", "target", "source"),
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    operation: Mapped[int] = mapped_column(SmallInteger)
    quantity: Mapped[Decimal | None] = mapped_column(AMOUNT)
    unit: Mapped[int] = mapped_column(SmallInteger, default=0)
    time: Mapped[datetime]


class Transfer(Base):
    """A B2B transfer from a source license to a target license (named under the source)."""

    __tablename__ = "transfers"
    __table_args__ = (
        Index("ix_transfers_source_id", "source_license_id", "id"),
        Index("ix_transfers_target_id", "target_license_id", "id"),
        Index("ix_transfers_state_depart", "state", "planned_depart_time"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    source_license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    target_license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    state: Mapped[int] = mapped_column(SmallInteger)
    planned_depart_time: Mapped[datetime | None]
    planned_arrive_time: Mapped[datetime | None]
    transporter_license_id: Mapped[str] = mapped_column(Text, default="")
    vehicle: Mapped[dict[str, Any] | None]
    driver: Mapped[dict[str, Any] | None]
    notes: Mapped[str] = mapped_column(Text, default="")
    commit_signature: Mapped[dict[str, Any] | None]
    depart_time: Mapped[datetime | None]
    receive_time: Mapped[datetime | None]
    state_reason: Mapped[str] = mapped_column(Text, default="")
    external_id: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)


class TransferItem(Base):
    """One line item: a quantity of one source lot, in the lot's storage unit."""

    __tablename__ = "transfer_items"
    __table_args__ = (
        UniqueConstraint("transfer_id", "lot_id", name="uq_transfer_items_lot"),
        CheckConstraint("quantity > 0", name="ck_transfer_items_quantity_positive"),
        Index("ix_transfer_items_lot", "lot_id"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    transfer_id: Mapped[str] = mapped_column(ForeignKey("transfers.id"))
    lot_id: Mapped[str] = mapped_column(ForeignKey("lots.id"))
    quantity: Mapped[Decimal] = mapped_column(AMOUNT)
    # The storage unit of ``quantity`` and ``received_quantity`` (g, l or ea: the lot's dimension).
    unit: Mapped[int] = mapped_column(SmallInteger)
    unit_price: Mapped[str] = mapped_column(Text, default="")
    currency_code: Mapped[str] = mapped_column(String(3), default="")
    received_quantity: Mapped[Decimal | None] = mapped_column(AMOUNT)
    received_lot: Mapped[str] = mapped_column(Text, default="")
    rejection_reason: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[int] = mapped_column(SmallInteger)


class TransferEvent(Base):
    """A committed change to a transfer, kept for WatchTransfers (resume tokens are ``seq``)."""

    __tablename__ = "transfer_events"
    __table_args__ = (
        Index("ix_transfer_events_source", "source_license_id", "seq"),
        Index("ix_transfer_events_target", "target_license_id", "seq"),
        Index("ix_transfer_events_time", "event_time"),
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    transfer_id: Mapped[str] = mapped_column(ULID)
    source_license_id: Mapped[str] = mapped_column(ULID)
    target_license_id: Mapped[str] = mapped_column(ULID)
    type: Mapped[int] = mapped_column(SmallInteger)
    # Whether the target license may see it (not while the transfer is a draft).
    visible_to_target: Mapped[bool]
    event_time: Mapped[datetime]
    snapshot: Mapped[bytes] = mapped_column(LargeBinary)


class ApiKey(Base):
    """An API key for systems: only a hash of its secret is stored."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    display_name: Mapped[str] = mapped_column(Text)
    secret_hash: Mapped[str] = mapped_column(String(64))
    licenses: Mapped[list[str]] = mapped_column(ARRAY(Text))  # license ids
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    creator: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime]
    expire_time: Mapped[datetime]
    last_use_time: Mapped[datetime | None]
    revoke_time: Mapped[datetime | None]


class Session(Base):
    """A session opened with OpenSession: only a hash of its token is stored."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_api_key", "api_key_id"),)
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    principal: Mapped[str] = mapped_column(Text)
    principal_kind: Mapped[int] = mapped_column(SmallInteger)
    credential_type: Mapped[int] = mapped_column(SmallInteger)
    api_key_id: Mapped[str | None] = mapped_column(ULID)
    # Permissions per license id at opening ({"<license id or *>": ["perm", ...]}).
    grants: Mapped[dict[str, Any]]
    create_time: Mapped[datetime]
    expire_time: Mapped[datetime]
    revoke_time: Mapped[datetime | None]


class AuditEvent(Base):
    """Append-only, hash-chained record of every mutation: one chain per license.

    ``sequence`` counts a license's events from 1 without gaps (events without a license form
    their own chain); ``seq`` is the global insertion order, storage only.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint(
            "license_id", "sequence", name="uq_audit_events_chain", postgresql_nulls_not_distinct=True
        ),
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(ULID, unique=True)
    license_id: Mapped[str | None] = mapped_column(ULID)
    sequence: Mapped[int] = mapped_column(BigInteger)
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
