"""docs/configuration.md is generated from the settings models and must not go stale."""

from __future__ import annotations

import re
from pathlib import Path

from seedline_server.config import Settings
from seedline_server.telemetry.mqtt_bridge import MqttBridgeSettings
from tests.support import tools

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"


def test_committed_page_is_what_the_generator_writes() -> None:
    assert DOC.read_text(encoding="utf-8") == tools.load("gen_config_docs").render(), (
        "docs/configuration.md is stale: run .venv/bin/python tools/gen_config_docs.py and commit it"
    )


def test_every_setting_has_a_row_and_a_description() -> None:
    rows = re.findall(r"^\| `([A-Z0-9_]+)`", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    expected = ["DATABASE_URL"]
    expected += [f"SEEDLINE_{n.upper()}" for n in Settings.model_fields if n != "database_url"]
    expected += [f"SEEDLINE_MQTT_{n.upper()}" for n in MqttBridgeSettings.model_fields]
    assert rows == expected
    for model in (Settings, MqttBridgeSettings):
        missing = [n for n, f in model.model_fields.items() if not (f.description or "").strip()]
        assert missing == [], f"{model.__name__}: add description= to {missing}"


def test_rows_carry_type_range_and_default() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "| `SEEDLINE_DB_POOL_SIZE` | integer, 1 ≤ x ≤ 200 | `10` |" in text
    assert "| `SEEDLINE_LOG_FORMAT` | `console` or `json` | `console` |" in text
    assert "| `SEEDLINE_SECRET_KEYS` | secret string (optional) | unset |" in text
    assert "| `SEEDLINE_RUN_WORKER` | boolean | `true` |" in text
    assert "| `SEEDLINE_MQTT_PROTOCOL` | `5` or `3.1.1` | `5` |" in text
