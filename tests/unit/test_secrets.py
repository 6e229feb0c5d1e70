"""Secrets at rest: AES-256-GCM envelopes, key rotation, the Secret wrapper and redaction."""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr
from sqlalchemy import String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from seedline_server import crypto, logs
from seedline_server.config import Settings
from seedline_server.crypto import KeyConfigError, KeyRing, Secret, SecretError, UnknownKeyId
from seedline_server.service.registry import snapshot

K1 = os.urandom(32)
K2 = os.urandom(32)
AD = b"licenses/01JD0000000000000000000000/integrations/01JD0000000000000000000001#api_key"


def ring(**keys: bytes) -> KeyRing:
    return KeyRing(keys, active=list(keys)[-1])


def test_round_trip() -> None:
    r = ring(k1=K1)
    for plaintext in (b"", b"x", b"hunter2" * 100, os.urandom(4096)):
        env = r.seal(plaintext, AD)
        # A plaintext long enough not to appear in random bytes by chance must not appear at all.
        assert len(plaintext) < 8 or plaintext not in env
        assert r.open(env, AD) == plaintext


def test_envelope_layout() -> None:
    env = ring(k1=K1).seal(b"abc", AD)
    assert env[0] == crypto.VERSION
    assert env[1] == 2
    assert env[2:4] == b"k1"
    assert len(env) == 4 + crypto.NONCE_BYTES + 3 + crypto.TAG_BYTES
    assert crypto.key_id_of(env) == "k1"


def test_any_flipped_byte_is_refused() -> None:
    r = ring(k1=K1)
    env = r.seal(b"webhook-signing-secret", AD)
    for i in range(len(env)):
        for bit in (0x01, 0x80):
            tampered = bytearray(env)
            tampered[i] ^= bit
            with pytest.raises(SecretError):
                r.open(bytes(tampered), AD)


def test_truncated_or_extended_is_refused() -> None:
    r = ring(k1=K1)
    env = r.seal(b"secret", AD)
    for n in range(len(env)):
        with pytest.raises(SecretError):
            r.open(env[:n], AD)
    with pytest.raises(SecretError):
        r.open(env + b"\x00", AD)


def test_wrong_associated_data_is_refused() -> None:
    r = ring(k1=K1)
    env = r.seal(b"secret", AD)
    other = AD.replace(b"01JD0000000000000000000001", b"01JD0000000000000000000002")
    with pytest.raises(SecretError, match="another owner"):
        r.open(env, other)
    with pytest.raises(SecretError):
        r.open(env, b"")


def test_rotation() -> None:
    old = ring(k1=K1)
    env1 = old.seal(b"partner credential", AD)
    rotated = KeyRing({"k1": K1, "k2": K2}, active="k2")
    assert rotated.open(env1, AD) == b"partner credential"
    assert rotated.needs_reseal(env1)
    env2 = rotated.reseal(env1, AD)
    assert crypto.key_id_of(env2) == "k2"
    assert not rotated.needs_reseal(env2)
    assert rotated.open(env2, AD) == b"partner credential"
    # Once everything is resealed the old key can be retired.
    retired = KeyRing({"k2": K2}, active="k2")
    assert retired.open(env2, AD) == b"partner credential"
    with pytest.raises(UnknownKeyId):
        retired.open(env1, AD)


def test_unknown_key_id_is_a_clear_error() -> None:
    env = ring(k1=K1).seal(b"s", AD)
    with pytest.raises(UnknownKeyId, match=r"key id 'k1'.*not configured.*configured: k9"):
        ring(k9=K1).open(env, AD)


def test_same_key_under_another_id_does_not_open() -> None:
    # The key id is authenticated: relabelling an envelope does not make it open.
    env = ring(k1=K1).seal(b"s", AD)
    relabelled = bytes([env[0], 2]) + b"k9" + env[4:]
    with pytest.raises(SecretError):
        ring(k9=K1).open(relabelled, AD)


def test_nonces_are_unique() -> None:
    r = ring(k1=K1)
    n = 5000
    nonces = {r.seal(b"same", AD)[4 : 4 + crypto.NONCE_BYTES] for _ in range(n)}
    assert len(nonces) == n


def test_secret_is_never_printed() -> None:
    s = Secret("hunter2")
    assert str(s) == "***"
    assert "hunter2" not in repr(s)
    assert f"{s}" == "***"
    assert f"{s:>20}" == "***"
    assert "hunter2" not in repr([s, {"k": s}])
    assert "hunter2" not in "%s %r" % (s, s)  # noqa: UP031
    assert s.reveal() == "hunter2"
    assert s == Secret("hunter2")
    assert s != Secret("hunter3")
    assert Secret(b"x") != Secret("x")
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_open_secret_wraps() -> None:
    r = ring(k1=K1)
    env = r.seal_secret(Secret("tok_live_abc"), AD)
    out = r.open_secret(env, AD)
    assert isinstance(out, Secret)
    assert out.reveal() == "tok_live_abc"
    assert "tok_live_abc" not in repr(out)
    assert "tok_live_abc" not in repr(r)


# --- configuration -------------------------------------------------------------------------------


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_keys_from_settings_comma_list(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, secret_keys=SecretStr(f"k1:{b64(K1)}, k2:{b64(K2)}"), secret_key_id="k2")
    r = KeyRing.from_settings(s)
    assert r.active == "k2"
    assert r.key_ids == ["k1", "k2"]
    assert "secret_keys=SecretStr('**********')" in repr(s)
    assert b64(K1) not in repr(s)


def test_keys_from_settings_json_and_single_default(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, secret_keys=SecretStr(json.dumps({"2025-01": b64(K1)})))
    assert KeyRing.from_settings(s).active == "2025-01"


def test_keys_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEEDLINE_SECRET_KEYS", f"a:{b64(K1)},b:{b64(K2)}")
    monkeypatch.setenv("SEEDLINE_SECRET_KEY_ID", "a")
    monkeypatch.setenv("SEEDLINE_DATA_DIR", str(tmp_path))
    assert KeyRing.from_settings(Settings()).active == "a"


@pytest.mark.parametrize(
    ("keys", "active", "message"),
    [
        (f"k1:{b64(K1)},k2:{b64(K2)}", None, "must name the active key"),
        (f"k1:{b64(K1)}", "k2", "not among the keys"),
        (f"k1:{b64(os.urandom(16))}", None, "16 bytes; AES-256 needs 32"),
        ("k1:not base64!", None, "not valid base64"),
        (f"k1{b64(K1)}", None, "kid:base64key"),
        (f"bad id:{b64(K1)}", None, "must match"),
        (f"k1:{b64(K1)},k1:{b64(K2)}", None, "appears twice"),
        ("{not json", None, "not valid JSON"),
        ('{"k1": 1}', None, "JSON object"),
    ],
)
def test_bad_key_configuration(keys: str, active: str | None, message: str, tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, secret_keys=SecretStr(keys), secret_key_id=active)
    with pytest.raises(KeyConfigError, match=message):
        KeyRing.from_settings(s)


def test_no_key_outside_dev_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="SEEDLINE_SECRET_KEYS is not set"):
        KeyRing.from_settings(Settings(data_dir=tmp_path))
    assert not (tmp_path / crypto.DEV_KEY_FILE).exists()


def test_dev_key_is_generated_once_and_persisted(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "data")
    first = KeyRing.from_settings(s, dev=True)
    path = tmp_path / "data" / crypto.DEV_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env = first.seal(b"dev secret", AD)
    second = KeyRing.from_settings(s, dev=True)
    assert second.active == first.active
    assert second.open(env, AD) == b"dev secret"
    # Another data directory gets another key: there is no built-in key.
    third = KeyRing.from_settings(Settings(data_dir=tmp_path / "other"), dev=True)
    with pytest.raises(SecretError):
        third.open(env, AD)


def test_configured_keys_win_over_dev(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, secret_keys=SecretStr(f"prod:{b64(K1)}"))
    assert KeyRing.from_settings(s, dev=True).active == "prod"
    assert not (tmp_path / crypto.DEV_KEY_FILE).exists()


def test_corrupt_dev_key_file(tmp_path: Path) -> None:
    (tmp_path / crypto.DEV_KEY_FILE).write_text("{}")
    with pytest.raises(KeyConfigError, match="delete it"):
        KeyRing.from_settings(Settings(data_dir=tmp_path), dev=True)


# --- redaction: logs ---------------------------------------------------------------------------


def test_log_processor_masks_secret_keys() -> None:
    event = {
        "event": "integration configured",
        "password": "p4ss",
        "api_key": "ak",
        "apiKey": "ak2",
        "x-api-key": "ak3",
        "Authorization": "Bearer abc",
        "webhook_secret": "whsec",
        "client_credentials": "cc",
        "access_token": "at",
        "resource": "licenses/01JD/integrations/01JE",
        "nested": {"headers": {"authorization": "Basic xyz", "accept": "json"}, "items": [{"token": "t"}]},
        "wrapped": Secret("plain"),
    }
    out = logs.redact_secrets(None, "info", dict(event))
    text = repr(out)
    for leaked in ("p4ss", "ak", "ak2", "ak3", "Bearer abc", "whsec", "'cc'", "'at'", "xyz", "'t'", "plain"):
        assert leaked not in text.replace("'***'", ""), leaked
    assert out["resource"] == "licenses/01JD/integrations/01JE"
    assert out["nested"]["headers"]["accept"] == "json"
    assert out["event"] == "integration configured"


def test_configured_logging_never_prints_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logs.configure("json", "info")
        structlog.get_logger("t").info("webhook", webhook_secret="whsec_123", target="https://x")
        logging.getLogger("stdlib").info("plain stdlib line")
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert "whsec_123" not in err
    assert '"webhook_secret": "***"' in err
    assert "https://x" in err


# --- redaction: audit snapshots -------------------------------------------------------------------


class _TestBase(DeclarativeBase):
    pass


class _Integration(_TestBase):
    __tablename__ = "test_integrations"
    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    display_name: Mapped[str] = mapped_column(Text)
    api_key: Mapped[bytes] = mapped_column(info={"secret": True})
    create_time: Mapped[datetime]


def test_snapshot_masks_secret_columns() -> None:
    r = ring(k1=K1)
    row = _Integration(
        id="01JD0000000000000000000001",
        display_name="Acme ERP",
        api_key=r.seal(b"sk_live_abc", AD),
        create_time=datetime(2025, 1, 1, tzinfo=UTC),
    )
    snap = snapshot(row)  # type: ignore[arg-type]
    assert snap["api_key"] == "***"
    assert snap["display_name"] == "Acme ERP"
    assert "sk_live_abc" not in repr(snap)
    json.dumps(snap, default=str)  # still JSON-able for the audit log
