"""Secrets at rest: AES-256-GCM envelopes under a rotating key ring, and the ``Secret`` wrapper.

Integration credentials and webhook secrets are stored sealed. An envelope describes itself::

    version (1 byte, 0x01) | key id length (1 byte) | key id (ASCII) | nonce (12 bytes) | ciphertext+tag

The header (version, key id) is authenticated together with the caller's *associated data*, which
binds a secret to its owner (e.g. ``licenses/01J…/integrations/01J…#api_key``): an envelope copied
into another row, or whose header was edited, does not open. Keys rotate by adding a new key and
making it active; envelopes sealed under an older key still open (the key id picks the key) and
:meth:`KeyRing.reseal` moves them to the active key.

Keys come from configuration (``SEEDLINE_SECRET_KEYS``, ``SEEDLINE_SECRET_KEY_ID``). Outside
development there is no default: :meth:`KeyRing.from_settings` fails with a clear message. For
``seedline dev`` and tests a key is generated once and persisted under the data directory.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from seedline_server.config import Settings

VERSION: Final = 1
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32
TAG_BYTES: Final = 16
REDACTED: Final = "***"
DEV_KEY_FILE: Final = "secret-keys.json"
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

T = TypeVar("T", str, bytes)


class SecretError(Exception):
    """An envelope cannot be opened, or the key configuration is unusable."""


class KeyConfigError(SecretError):
    """The configured keys are missing or malformed (raised at startup)."""


class UnknownKeyId(SecretError):
    """The envelope names a key the ring does not hold."""


class Secret(Generic[T]):
    """A secret value in memory: ``repr``, ``str`` and formatting show ``***``.

    Read it on purpose with :meth:`reveal`; equality is constant-time.
    """

    __slots__ = ("_value",)
    _value: T

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """The plaintext."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        mine, theirs = self._value, other._value
        a = mine.encode() if isinstance(mine, str) else bytes(mine)
        b = theirs.encode() if isinstance(theirs, str) else bytes(theirs)
        return type(mine) is type(theirs) and hmac.compare_digest(a, b)

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Secret is not pickled; seal it")


def _header(kid: str) -> bytes:
    raw = kid.encode("ascii")
    return bytes([VERSION, len(raw)]) + raw


def _split(envelope: bytes) -> tuple[bytes, str, bytes, bytes]:
    """(header, key id, nonce, ciphertext+tag) of a well-formed envelope."""
    if len(envelope) < 2 or envelope[0] != VERSION:
        version = envelope[0] if envelope else None
        raise SecretError(f"not a sealed secret of a known version (version byte {version!r})")
    end = 2 + envelope[1]
    if envelope[1] == 0 or len(envelope) < end + NONCE_BYTES + TAG_BYTES:
        raise SecretError("sealed secret is truncated")
    try:
        kid = envelope[2:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise SecretError("sealed secret has a malformed key id") from exc
    if not _KID.fullmatch(kid):
        raise SecretError("sealed secret has a malformed key id")
    return envelope[:end], kid, envelope[end : end + NONCE_BYTES], envelope[end + NONCE_BYTES :]


def key_id_of(envelope: bytes) -> str:
    """The id of the key that sealed ``envelope``."""
    return _split(envelope)[1]


def _decode_key(kid: str, text: str) -> bytes:
    if not _KID.fullmatch(kid):
        raise KeyConfigError(f"secret key id {kid!r} must match {_KID.pattern}")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyConfigError(f"secret key {kid!r} is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise KeyConfigError(f"secret key {kid!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
    return key


def parse_keys(text: str) -> dict[str, bytes]:
    """Keys from ``SEEDLINE_SECRET_KEYS``: a JSON object ``{"kid": "base64"}`` or ``kid:base64,…``."""
    text = text.strip()
    pairs: list[tuple[str, str]] = []
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise KeyConfigError("SEEDLINE_SECRET_KEYS is not valid JSON") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise KeyConfigError('SEEDLINE_SECRET_KEYS must be a JSON object {"key id": "base64 key"}')
        pairs = [(str(k), v) for k, v in data.items()]
    else:
        for entry in filter(None, (e.strip() for e in text.split(","))):
            kid, sep, key = entry.partition(":")
            if not sep:
                raise KeyConfigError("SEEDLINE_SECRET_KEYS entries must look like kid:base64key")
            pairs.append((kid.strip(), key))
    keys: dict[str, bytes] = {}
    for kid, key in pairs:
        if kid in keys:
            raise KeyConfigError(f"secret key id {kid!r} appears twice")
        keys[kid] = _decode_key(kid, key)
    if not keys:
        raise KeyConfigError("SEEDLINE_SECRET_KEYS holds no keys")
    return keys


def generate_key() -> str:
    """A fresh random 256-bit key, base64 (for ``SEEDLINE_SECRET_KEYS``)."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


class KeyRing:
    """Keys by id and the active one; seals under the active key, opens under any."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if not keys:
            raise KeyConfigError("a key ring needs at least one key")
        for kid, key in keys.items():
            if not _KID.fullmatch(kid):
                raise KeyConfigError(f"secret key id {kid!r} must match {_KID.pattern}")
            if len(key) != KEY_BYTES:
                raise KeyConfigError(f"secret key {kid!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
        if active not in keys:
            raise KeyConfigError(
                f"the active secret key id {active!r} is not among the keys ({', '.join(sorted(keys))})"
            )
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self.active = active

    def __repr__(self) -> str:
        return f"KeyRing(active={self.active!r}, key_ids={sorted(self._aead)!r})"

    @property
    def key_ids(self) -> list[str]:
        """Ids of every key held."""
        return sorted(self._aead)

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt ``plaintext`` under the active key, bound to ``associated_data``."""
        header = _header(self.active)
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._aead[self.active].encrypt(nonce, plaintext, header + associated_data)

    def open(self, envelope: bytes, associated_data: bytes) -> bytes:
        """Decrypt an envelope sealed under any key of the ring for the same ``associated_data``.

        Raises:
            UnknownKeyId: the key that sealed it is not configured (a retired key?).
            SecretError: the envelope is malformed, was altered, or belongs to other associated data.

        """
        header, kid, nonce, body = _split(bytes(envelope))
        aead = self._aead.get(kid)
        if aead is None:
            raise UnknownKeyId(
                f"sealed secret was encrypted with key id {kid!r}, which is not configured "
                f"(configured: {', '.join(self.key_ids)}); keep retired keys in SEEDLINE_SECRET_KEYS "
                "until every secret is resealed"
            )
        try:
            return aead.decrypt(nonce, body, header + associated_data)
        except InvalidTag as exc:
            raise SecretError(
                "sealed secret does not authenticate: it was altered or belongs to another owner"
            ) from exc

    def needs_reseal(self, envelope: bytes) -> bool:
        """Whether ``envelope`` was sealed under a key other than the active one."""
        return key_id_of(envelope) != self.active

    def reseal(self, envelope: bytes, associated_data: bytes) -> bytes:
        """The same secret sealed under the active key (a fresh nonce even when already active)."""
        return self.seal(self.open(envelope, associated_data), associated_data)

    def seal_secret(self, value: Secret[str], associated_data: bytes) -> bytes:
        """Seal a text secret."""
        return self.seal(value.reveal().encode(), associated_data)

    def open_secret(self, envelope: bytes, associated_data: bytes) -> Secret[str]:
        """Open a text secret, wrapped so it does not leak through repr or logs."""
        return Secret(self.open(envelope, associated_data).decode())

    @classmethod
    def from_settings(cls, settings: Settings, *, dev: bool = False) -> KeyRing:
        """The ring configured by ``SEEDLINE_SECRET_KEYS`` / ``SEEDLINE_SECRET_KEY_ID``.

        Args:
            settings: the server settings.
            dev: ``seedline dev`` and tests; with no keys configured, use (and on first use,
                create) a key persisted under ``data_dir``. Never a fixed key.

        Raises:
            KeyConfigError: no keys configured outside development, or a malformed configuration.

        """
        if settings.secret_keys is None or not settings.secret_keys.get_secret_value().strip():
            if not dev:
                raise KeyConfigError(
                    "SEEDLINE_SECRET_KEYS is not set: configure at least one 32-byte key as "
                    "'kid:base64key' (generate one with: python -c 'import base64,os; "
                    "print(base64.b64encode(os.urandom(32)).decode())') and SEEDLINE_SECRET_KEY_ID"
                )
            return dev_keyring(settings.data_dir)
        keys = parse_keys(settings.secret_keys.get_secret_value())
        active = settings.secret_key_id
        if active is None:
            if len(keys) != 1:
                raise KeyConfigError(
                    "SEEDLINE_SECRET_KEY_ID must name the active key when several keys are configured"
                )
            active = next(iter(keys))
        return cls(keys, active)


def dev_keyring(data_dir: Path) -> KeyRing:
    """The development ring: ``data_dir/secret-keys.json``, created (mode 0600) on first use."""
    path = data_dir / DEV_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        kid = "dev-" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        content = json.dumps({"active": kid, "keys": {kid: generate_key()}}, indent=2)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content + "\n")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = {str(k): _decode_key(str(k), str(v)) for k, v in dict(data["keys"]).items()}
        active = str(data["active"])
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyConfigError(f"{path} is not a valid development key file; delete it to start over") from exc
    return KeyRing(keys, active)


def is_secret_column(info: Mapping[str, object]) -> bool:
    """Whether a column's ``info`` marks it secret (``mapped_column(..., info={"secret": True})``)."""
    return bool(info.get("secret"))
