"""SQLAlchemy models of lab testing: metrics (reference data), samples, results, documents."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from seedline_server.store.models import AMOUNT, ULID, Base


class LabMetric(Base):
    """A well-known OpenTHC lab metric (read-only reference data loaded by migration 0004).

    ``superseded_by`` is set for OpenTHC's retired ids (a permanent redirect to the current one):
    they are kept so the reference is complete, never listed and never accepted on a result.
    """

    __tablename__ = "lab_metrics"
    __table_args__ = (
        # ListLabMetrics order: type (OpenTHC sort), display name (bytewise), id.
        Index("ix_lab_metrics_order", "type_sort", "display_name", "id"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    display_name: Mapped[str] = mapped_column(Text(collation="C"))
    type: Mapped[int] = mapped_column(SmallInteger)
    type_sort: Mapped[int] = mapped_column(SmallInteger)
    cas_number: Mapped[str] = mapped_column(Text, default="")
    default_uom: Mapped[int] = mapped_column(SmallInteger, default=0)
    metrc_name: Mapped[str] = mapped_column(Text, default="")
    biotrack_name: Mapped[str] = mapped_column(Text, default="")
    superseded_by: Mapped[str] = mapped_column(Text, default="")


class Sample(Base):
    """Material taken from a lot for a laboratory (OpenTHC Lab_Sample)."""

    __tablename__ = "lab_samples"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="ck_lab_samples_quantity_positive"),
        Index("ix_lab_samples_license_id_id", "license_id", "id"),
        Index("ix_lab_samples_lot", "source_lot_id", "id"),
        Index("ix_lab_samples_lab", "lab_license_id", "id"),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    source_lot_id: Mapped[str] = mapped_column(ForeignKey("lots.id"))
    # In the storage unit of the lot product's counting dimension (``unit``: g, l or ea).
    quantity: Mapped[Decimal] = mapped_column(AMOUNT)
    unit: Mapped[int] = mapped_column(SmallInteger)
    lab_license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    purpose: Mapped[int] = mapped_column(SmallInteger)
    requested_metric_types: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger), default=list)
    requested_metrics: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    state_tag: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[int] = mapped_column(SmallInteger)
    lab_result_id: Mapped[str] = mapped_column(Text, default="")
    close_note: Mapped[str] = mapped_column(Text, default="")
    close_time: Mapped[datetime | None]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)


class LabResult(Base):
    """A laboratory's measurements of a sample (OpenTHC Lab_Result) and the status computed.

    ``counts`` is False for results of research samples: they never change a lot's lab status.
    ``jurisdiction``, ``product_type`` and ``panel`` record what the status was computed with.
    A sample gets at most one result (unique ``sample_id``; NULL for external certificates).
    """

    __tablename__ = "lab_results"
    __table_args__ = (
        Index("ix_lab_results_license_id_id", "license_id", "id"),
        Index("ix_lab_results_lab", "lab_license_id", "id"),
        Index("ix_lab_results_sample", "sample_id", unique=True),
    )
    id: Mapped[str] = mapped_column(ULID, primary_key=True)
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    lab_license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    sample_id: Mapped[str | None] = mapped_column(ForeignKey("lab_samples.id"))
    status: Mapped[int] = mapped_column(SmallInteger)
    state: Mapped[int] = mapped_column(SmallInteger)
    counts: Mapped[bool] = mapped_column(Boolean)
    jurisdiction: Mapped[str] = mapped_column(String(8))
    product_type: Mapped[str] = mapped_column(ULID)
    panel: Mapped[str] = mapped_column(Text)
    missing_metrics: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    test_time: Mapped[datetime]
    certificate_number: Mapped[str] = mapped_column(Text, default="")
    coa_sha256: Mapped[str] = mapped_column(Text, default="")
    void_reason: Mapped[str] = mapped_column(Text, default="")
    void_confirmation: Mapped[dict[str, Any] | None]
    void_time: Mapped[datetime | None]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)


class LabResultMetric(Base):
    """One reported metric of a result, values as the laboratory printed them (decimal strings)."""

    __tablename__ = "lab_result_metrics"
    result_id: Mapped[str] = mapped_column(ForeignKey("lab_results.id"), primary_key=True)
    position: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    metric_id: Mapped[str] = mapped_column(ForeignKey("lab_metrics.id"))
    qom: Mapped[str] = mapped_column(Text, default="")
    uom: Mapped[int] = mapped_column(SmallInteger, default=0)
    lod: Mapped[str] = mapped_column(Text, default="")
    loq: Mapped[str] = mapped_column(Text, default="")
    limit: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[int] = mapped_column(SmallInteger)


class LabResultLot(Base):
    """A lot a result vouches for (the sample's source lot, the lots named, later attachments)."""

    __tablename__ = "lab_result_lots"
    __table_args__ = (Index("ix_lab_result_lots_lot", "lot_id", "result_id"),)
    result_id: Mapped[str] = mapped_column(ForeignKey("lab_results.id"), primary_key=True)
    lot_id: Mapped[str] = mapped_column(ForeignKey("lots.id"), primary_key=True)
    # Attachment order within the result (0 = the sample's source lot or the first lot named).
    position: Mapped[int] = mapped_column(Integer)
    attach_time: Mapped[datetime]


class LabDocument(Base):
    """The certificate of analysis of a result: the PDF itself and its SHA-256."""

    __tablename__ = "lab_documents"
    __table_args__ = (CheckConstraint("size = octet_length(content)", name="ck_lab_documents_size"),)
    result_id: Mapped[str] = mapped_column(ForeignKey("lab_results.id"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    source_uri: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime]
