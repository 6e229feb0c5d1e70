"""lab: metrics, samples, results, certificates

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 19:07:12.940272
"""

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The OpenTHC lab metric index shipped with the package (copied unmodified from openthc/api).
METRIC_INDEX = Path(__file__).resolve().parents[2] / "reference" / "lab-metric-index.json"

# OpenTHC lab metric type ULID -> (seedline.lab.v1.LabMetricType, sort key).
_TYPES = {
    "018NY6XC00LMT0BY5GND653C0C": (1, 100),  # General
    "018NY6XC00LMT0HRHFRZGY72C7": (2, 200),  # Cannabinoid
    "018NY6XC00LMT07DPNKHQV2GRS": (3, 300),  # Terpene
    "018NY6XC00LMT09ZG05C2NE7KX": (4, 400),  # Pesticide
    "018NY6XC00LMT0V6XE7P0BHBCR": (5, 500),  # Metal
    "018NY6XC00LMT0AQAMJEDSD0NW": (6, 600),  # Solvent
    "018NY6XC00LMT0B7NMK7RGYAMN": (7, 700),  # Microbe
    "018NY6XC00LMT0GDBPF0V9B71Z": (8, 800),  # Mycotoxin
}
# LAB_METRIC_TYPE_FOREIGN_MATTER: OpenTHC files these under General; they sort right after it.
_FOREIGN_MATTER = (9, 110)
_FOREIGN_MATTER_IDS = {
    "018NY6XC00LMA50497RDC53DB5",  # Seeds
    "018NY6XC00LMQAZZSDXPYH62SS",  # Stems
    "018NY6XC00LMHGENRW0DAPFQRZ",  # Other (foreign matter)
}
# OpenTHC uom -> seedline.lab.v1.LabUnit.
_UNITS = {"pct": 1, "mg/g": 2, "ppm": 3, "ppb": 4, "ug/g": 5, "ugkg": 6, "cfu/g": 7, "aw": 8, "bool": 9}
# Known errors in the reference, corrected here (the JSON stays as published).
_UOM_FIXES = {"018NY6XC00LMZNYH6GBG7P12EA": 9}  # Visual Inspection: published as "aw"; pass/fail


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def metric_rows() -> list[dict[str, Any]]:
    """One lab_metrics row per entry of the index (retired ids as superseded_by rows)."""
    index = json.loads(METRIC_INDEX.read_text(encoding="utf-8"))
    rows = []
    for m in index["lab_metric"]:
        metric_type, sort = _TYPES.get(m.get("type") or "", (0, 0))
        if m["id"] in _FOREIGN_MATTER_IDS:
            metric_type, sort = _FOREIGN_MATTER
        metrc = m.get("metrc") if isinstance(m.get("metrc"), dict) else {}
        biotrack = m.get("biotrack") if isinstance(m.get("biotrack"), dict) else {}
        rows.append(
            {
                "id": m["id"],
                "display_name": _text(m.get("name")),
                "type": metric_type,
                "type_sort": sort,
                "cas_number": _text(m.get("cas")),
                "default_uom": _UOM_FIXES.get(m["id"], _UNITS.get(_text(m.get("uom")), 0)),
                "metrc_name": _text(metrc.get("name")),
                "biotrack_name": _text(biotrack.get("name")) or _text(biotrack.get("path")),
                "superseded_by": _text(m.get("goto")),
            }
        )
    return rows


def upgrade() -> None:
    op.create_index("ix_lots_lab_result", "lots", ["lab_result"], unique=False)
    op.create_table(
        "lab_metrics",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("display_name", sa.Text(collation="C"), nullable=False),
        sa.Column("type", sa.SmallInteger(), nullable=False),
        sa.Column("type_sort", sa.SmallInteger(), nullable=False),
        sa.Column("cas_number", sa.Text(), nullable=False),
        sa.Column("default_uom", sa.SmallInteger(), nullable=False),
        sa.Column("metrc_name", sa.Text(), nullable=False),
        sa.Column("biotrack_name", sa.Text(), nullable=False),
        sa.Column("superseded_by", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lab_metrics_order", "lab_metrics", ["type_sort", "display_name", "id"], unique=False)
    lab_metrics = sa.table(
        "lab_metrics",
        *(
            sa.column(c, sa.Text())
            for c in ("id", "display_name", "cas_number", "metrc_name", "biotrack_name", "superseded_by")
        ),
        *(sa.column(c, sa.SmallInteger()) for c in ("type", "type_sort", "default_uom")),
    )
    op.bulk_insert(lab_metrics, metric_rows())
    op.create_table(
        "lab_samples",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("license_id", sa.String(length=26), nullable=False),
        sa.Column("source_lot_id", sa.String(length=26), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=24, scale=4), nullable=False),
        sa.Column("unit", sa.SmallInteger(), nullable=False),
        sa.Column("lab_license_id", sa.String(length=26), nullable=False),
        sa.Column("purpose", sa.SmallInteger(), nullable=False),
        sa.Column("requested_metric_types", postgresql.ARRAY(sa.SmallInteger()), nullable=False),
        sa.Column("requested_metrics", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("state_tag", sa.Text(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("lab_result_id", sa.Text(), nullable=False),
        sa.Column("close_note", sa.Text(), nullable=False),
        sa.Column("close_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("quantity > 0", name="ck_lab_samples_quantity_positive"),
        sa.ForeignKeyConstraint(
            ["lab_license_id"],
            ["licenses.id"],
        ),
        sa.ForeignKeyConstraint(
            ["license_id"],
            ["licenses.id"],
        ),
        sa.ForeignKeyConstraint(
            ["source_lot_id"],
            ["lots.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lab_samples_lab", "lab_samples", ["lab_license_id", "id"], unique=False)
    op.create_index("ix_lab_samples_license_id_id", "lab_samples", ["license_id", "id"], unique=False)
    op.create_index("ix_lab_samples_lot", "lab_samples", ["source_lot_id", "id"], unique=False)
    op.create_table(
        "lab_results",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("license_id", sa.String(length=26), nullable=False),
        sa.Column("lab_license_id", sa.String(length=26), nullable=False),
        sa.Column("sample_id", sa.String(length=26), nullable=True),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("counts", sa.Boolean(), nullable=False),
        sa.Column("jurisdiction", sa.String(length=8), nullable=False),
        sa.Column("product_type", sa.String(length=26), nullable=False),
        sa.Column("panel", sa.Text(), nullable=False),
        sa.Column("missing_metrics", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("test_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("certificate_number", sa.Text(), nullable=False),
        sa.Column("coa_sha256", sa.Text(), nullable=False),
        sa.Column("void_reason", sa.Text(), nullable=False),
        sa.Column("void_confirmation", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("void_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lab_license_id"],
            ["licenses.id"],
        ),
        sa.ForeignKeyConstraint(
            ["license_id"],
            ["licenses.id"],
        ),
        sa.ForeignKeyConstraint(
            ["sample_id"],
            ["lab_samples.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lab_results_lab", "lab_results", ["lab_license_id", "id"], unique=False)
    op.create_index("ix_lab_results_license_id_id", "lab_results", ["license_id", "id"], unique=False)
    op.create_index("ix_lab_results_sample", "lab_results", ["sample_id"], unique=True)
    op.create_table(
        "lab_documents",
        sa.Column("result_id", sa.String(length=26), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("size = octet_length(content)", name="ck_lab_documents_size"),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["lab_results.id"],
        ),
        sa.PrimaryKeyConstraint("result_id"),
    )
    op.create_table(
        "lab_result_lots",
        sa.Column("result_id", sa.String(length=26), nullable=False),
        sa.Column("lot_id", sa.String(length=26), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("attach_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["lot_id"],
            ["lots.id"],
        ),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["lab_results.id"],
        ),
        sa.PrimaryKeyConstraint("result_id", "lot_id"),
    )
    op.create_index("ix_lab_result_lots_lot", "lab_result_lots", ["lot_id", "result_id"], unique=False)
    op.create_table(
        "lab_result_metrics",
        sa.Column("result_id", sa.String(length=26), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("metric_id", sa.String(length=26), nullable=False),
        sa.Column("qom", sa.Text(), nullable=False),
        sa.Column("uom", sa.SmallInteger(), nullable=False),
        sa.Column("lod", sa.Text(), nullable=False),
        sa.Column("loq", sa.Text(), nullable=False),
        sa.Column("limit", sa.Text(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["metric_id"],
            ["lab_metrics.id"],
        ),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["lab_results.id"],
        ),
        sa.PrimaryKeyConstraint("result_id", "position"),
    )


def downgrade() -> None:
    op.drop_index("ix_lots_lab_result", table_name="lots")
    op.drop_table("lab_result_metrics")
    op.drop_index("ix_lab_result_lots_lot", table_name="lab_result_lots")
    op.drop_table("lab_result_lots")
    op.drop_table("lab_documents")
    op.drop_index("ix_lab_results_sample", table_name="lab_results")
    op.drop_index("ix_lab_results_license_id_id", table_name="lab_results")
    op.drop_index("ix_lab_results_lab", table_name="lab_results")
    op.drop_table("lab_results")
    op.drop_index("ix_lab_samples_lot", table_name="lab_samples")
    op.drop_index("ix_lab_samples_license_id_id", table_name="lab_samples")
    op.drop_index("ix_lab_samples_lab", table_name="lab_samples")
    op.drop_table("lab_samples")
    op.drop_index("ix_lab_metrics_order", table_name="lab_metrics")
    op.drop_table("lab_metrics")
