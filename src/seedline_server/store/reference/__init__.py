"""Reference data shipped with the server (package data, installed with the wheel).

- ``lab-metric-index.json``: the OpenTHC well-known lab metrics (MIT, see ``OPENTHC-LICENSE``),
  copied unmodified from github.com/openthc/api; migration 0004 loads it into ``lab_metrics``.
- ``lab-panels.json``: the default lab testing panels (which metrics a result must report per
  jurisdiction and product type, and their limits); ``SEEDLINE_LAB_PANELS_PATH`` replaces it.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
LAB_METRIC_INDEX = HERE / "lab-metric-index.json"
DEFAULT_LAB_PANELS = HERE / "lab-panels.json"
