"""SQLAlchemy models of lab testing: metrics (reference data), samples, results, documents."""

from __future__ import annotations
