"""The MQTT bridge: readings that gateways publish to an MQTT broker, into the ingest pipeline.

Topic: ``seedline/{license}/{section}/{sensor}[/{format}]`` where the three ids are ULIDs.
Payload: JSON (a reading ``{"value", "unit", "observe_time"}`` or a batch ``{"readings": [...]}``
whose readings may each name their sensor) or protobuf (``seedline.telemetry.v1.Reading`` or
``BatchIngestReadingsRequest``). The format is told by the optional fifth topic level (``json``,
``pb``, ``pb-batch``) or else by the MQTT 5 content type; without either it is JSON.

The bridge subscribes with QoS 1 in a persistent session and acknowledges each message (PUBACK)
only after the pipeline has committed its readings, in the order the messages arrived: delivery
is at least once (a crash between the commit and the PUBACK redelivers the message and stores its
readings again). Malformed messages and readings, and readings the pipeline rejects, are
published to ``seedline/dead-letter/{original topic}`` with the reason, counted, and acknowledged:
they never stop the bridge. docs/telemetry-mqtt.md has the whole story.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt
import structlog
from google.protobuf.message import DecodeError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from seedline.telemetry.v1 import telemetry_pb2 as pb

from seedline_server.observability import hooks
from seedline_server.telemetry.ingest import Ack, ReadingIn, Rejected

log = structlog.get_logger("seedline.mqtt")

ROOT = "seedline"
MAX_READINGS_PER_MESSAGE = 5000
_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_SENSOR_NAME = re.compile(r"licenses/([^/]+)/sensors/([^/]+)")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.(\d+))?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_READING_TYPE = "seedline.telemetry.v1.Reading"
_BATCH_TYPE = "seedline.telemetry.v1.BatchIngestReadingsRequest"
_PROTO_MEDIA = ("application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf")


def _default_client_id() -> str:
    """`seedline-bridge-{hostname}`."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40]
    return f"seedline-bridge-{host}"


class MqttBridgeSettings(BaseSettings):
    """The bridge's settings, from ``SEEDLINE_MQTT_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="SEEDLINE_MQTT_", extra="ignore")

    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://[user:password@]host[:port] or mqtts:// for TLS.",
    )
    ca_file: str | None = Field(default=None, description="CA certificates (PEM) for mqtts://.")
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT version; 3.1.1 has no shared subscriptions or content types."
    )
    topic: str = Field(default=f"{ROOT}/#", description="Topic filter to subscribe to (under seedline/).")
    share_group: str = Field(
        default="seedline-bridge",
        description="MQTT 5 shared-subscription group ($share/{group}/{topic}); empty: no sharing.",
    )
    client_id: str = Field(
        default_factory=_default_client_id,
        description="Stable client id; distinct per bridge process, kept across its restarts.",
    )
    session_expiry_seconds: int = Field(
        default=86_400, ge=0, description="How long the broker keeps the session (and queues) while away."
    )
    receive_maximum: int = Field(
        default=2000, ge=1, le=65_535, description="Unacknowledged messages the broker may send at once."
    )
    max_batch_readings: int = Field(
        default=5000, ge=1, description="Readings of several messages handed to the pipeline in one submit."
    )
    max_batches_in_flight: int = Field(default=4, ge=1, le=64, description="Submits awaiting commit.")
    dead_letter_prefix: str = Field(default=f"{ROOT}/dead-letter", description="Dead-letter topic root.")
    keepalive_seconds: int = Field(default=30, ge=5, description="MQTT keepalive.")
    reconnect_min_seconds: float = Field(default=0.5, gt=0, description="First reconnect delay.")
    reconnect_max_seconds: float = Field(default=30.0, gt=0, description="Longest reconnect delay.")

    def subscription(self) -> str:
        """The topic filter actually subscribed to (shared when a group is set and MQTT 5)."""
        if self.share_group and self.protocol == "5":
            return f"$share/{self.share_group}/{self.topic}"
        return self.topic

    def gateway_id(self) -> str:
        """The gateway id readings are recorded with: ``mqtt:{client id}``, fitted to its pattern."""
        return ("mqtt:" + re.sub(r"[^A-Za-z0-9._:-]", "-", self.client_id))[:64]


class PayloadFormat(Enum):
    """How a message's payload is encoded."""

    JSON = "json"
    READING = "pb"
    BATCH = "pb-batch"


class Malformed(ValueError):
    """A message the bridge cannot read at all (topic, encoding, structure)."""


class _BadReading(ValueError):
    def __init__(self, reason: int, message: str, sensor: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.sensor = sensor


@dataclass(frozen=True)
class TopicRef:
    """What a reading topic names."""

    license_id: str
    section_id: str
    sensor_id: str
    format: PayloadFormat | None


@dataclass(frozen=True)
class Decoded:
    """A message's readings: the good ones (with their position in the message) and the bad ones."""

    readings: tuple[ReadingIn, ...]
    positions: tuple[int, ...]
    invalid: tuple[Rejected, ...]


def parse_topic(topic: str) -> TopicRef:
    """Reads ``seedline/{license}/{section}/{sensor}[/{format}]``.

    Raises:
        Malformed: when the topic does not have that shape or an id is not a ULID.

    """
    levels = topic.split("/")
    if len(levels) not in (4, 5) or levels[0] != ROOT:
        raise Malformed(f"topic {topic!r} is not {ROOT}/{{license}}/{{section}}/{{sensor}}[/{{format}}]")
    for what, value in zip(("license", "section", "sensor"), levels[1:4], strict=True):
        if not _ULID.fullmatch(value):
            raise Malformed(f"topic {topic!r}: {what} {value!r} is not a ULID")
    fmt: PayloadFormat | None = None
    if len(levels) == 5:
        try:
            fmt = PayloadFormat(levels[4])
        except ValueError:
            raise Malformed(f"topic {topic!r}: unknown format {levels[4]!r} (json, pb, pb-batch)") from None
    return TopicRef(levels[1], levels[2], levels[3], fmt)


def format_from_content_type(content_type: str | None) -> PayloadFormat | None:
    """The payload format an MQTT 5 content type names; None when it names none.

    ``application/json`` is JSON; ``application/x-protobuf; proto=seedline.telemetry.v1.Reading``
    (or ``...BatchIngestReadingsRequest``) is protobuf, ``application/protobuf`` likewise; a
    protobuf type without ``proto`` is a Reading.

    Raises:
        Malformed: for any other content type.

    """
    if not content_type or not content_type.strip():
        return None
    media, *params = (part.strip() for part in content_type.split(";"))
    media = media.lower()
    if media in ("application/json", "text/json"):
        return PayloadFormat.JSON
    if media in _PROTO_MEDIA:
        names = dict(p.partition("=")[::2] for p in params if "=" in p)
        kinds = {k.strip().lower(): v.strip().strip('"') for k, v in names.items()}
        message_type = kinds.get("proto") or kinds.get("messagetype") or _READING_TYPE
        if message_type == _READING_TYPE:
            return PayloadFormat.READING
        if message_type == _BATCH_TYPE:
            return PayloadFormat.BATCH
        raise Malformed(f"content type {content_type!r}: unsupported message type {message_type!r}")
    raise Malformed(f"unsupported content type {content_type!r}")


def payload_format(ref: TopicRef, content_type: str | None) -> PayloadFormat:
    """The format from the topic suffix or the content type (they must agree), JSON by default.

    Raises:
        Malformed: for an unknown content type or a conflict between the two.

    """
    by_type = format_from_content_type(content_type)
    if ref.format is not None and by_type is not None and ref.format is not by_type:
        raise Malformed(f"topic says {ref.format.value} but content type says {content_type!r}")
    return ref.format or by_type or PayloadFormat.JSON


def decode(ref: TopicRef, fmt: PayloadFormat, payload: bytes) -> Decoded:
    """Parses a payload into readings; a bad reading is listed alone, the others kept.

    Raises:
        Malformed: when the payload as a whole cannot be read.

    """
    if fmt is PayloadFormat.JSON:
        items, getter = _json_items(payload), _json_reading
    elif fmt is PayloadFormat.READING:
        items, getter = [_proto(pb.Reading, payload)], _proto_reading
    else:
        batch = _proto(pb.BatchIngestReadingsRequest, payload)
        if batch.parent not in ("", f"licenses/{ref.license_id}"):
            raise Malformed(f"parent {batch.parent!r} is not the topic's license licenses/{ref.license_id}")
        items, getter = list(batch.readings), _proto_reading
        _check_count(len(items))
    readings: list[ReadingIn] = []
    positions: list[int] = []
    invalid: list[Rejected] = []
    for index, item in enumerate(items):
        try:
            readings.append(getter(item, ref))
            positions.append(index)
        except _BadReading as bad:
            invalid.append(Rejected(index=index, sensor=bad.sensor, reason=bad.reason, message=str(bad)))
        except (ValueError, OverflowError) as exc:  # e.g. a timestamp or number beyond datetime/float
            invalid.append(
                Rejected(index=index, sensor="", reason=pb.REJECTION_REASON_MALFORMED, message=str(exc))
            )
    return Decoded(tuple(readings), tuple(positions), tuple(invalid))


def _check_count(n: int) -> None:
    if not 1 <= n <= MAX_READINGS_PER_MESSAGE:
        raise Malformed(f"a batch holds 1 to {MAX_READINGS_PER_MESSAGE} readings, not {n}")


def _proto(kind: type[Any], payload: bytes) -> Any:
    try:
        return kind.FromString(payload)
    except DecodeError as exc:
        raise Malformed(f"not a serialized {kind.DESCRIPTOR.full_name}: {exc}") from None


def _json_items(payload: bytes) -> list[Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Malformed("JSON payload is not an object")
    if "readings" not in doc:
        return [doc]
    items = doc["readings"]
    if not isinstance(items, list):
        raise Malformed('"readings" is not an array')
    _check_count(len(items))
    return items


def _sensor_id(named: str, ref: TopicRef) -> str:
    """The sensor a reading names (short id or resource name), else the topic's."""
    if not named:
        return ref.sensor_id
    if _ULID.fullmatch(named):
        return named
    match = _SENSOR_NAME.fullmatch(named)
    if match is None or not _ULID.fullmatch(match[2]):
        raise _BadReading(
            pb.REJECTION_REASON_MALFORMED, f"sensor {named!r} is not a sensor id or name", named
        )
    if match[1] != ref.license_id:
        raise _BadReading(
            pb.REJECTION_REASON_OTHER_LICENSE, f"sensor {named!r} is not in license {ref.license_id}", named
        )
    return match[2]


def _unit(raw: object, sensor: str) -> int:
    number: int | None = None
    if isinstance(raw, bool):
        number = None
    elif isinstance(raw, int):
        number = raw if raw in pb.MeasurementUnit.values() else None
    elif isinstance(raw, str):
        name = raw.strip().upper()
        for candidate in (name, f"MEASUREMENT_UNIT_{name}"):
            if candidate in pb.MeasurementUnit.keys():  # noqa: SIM118 (enum wrapper, not a dict)
                number = pb.MeasurementUnit.Value(candidate)
                break
    if not number:
        raise _BadReading(pb.REJECTION_REASON_MALFORMED, f"unknown unit {raw!r}", sensor)
    return number


def parse_time(raw: object) -> datetime:
    """An RFC 3339 timestamp (with a zone offset) as an aware UTC datetime.

    Raises:
        ValueError: when it is not one.

    """
    if not isinstance(raw, str):
        raise ValueError(f"observe_time {raw!r} is not an RFC 3339 string")
    match = _RFC3339.fullmatch(raw.strip())
    if match is None:
        raise ValueError(f"observe_time {raw!r} is not RFC 3339 (e.g. 2026-01-31T12:00:00Z)")
    text = raw.strip().replace("z", "Z").replace("t", "T")
    if match[1] and len(match[1]) > 6:  # datetime keeps microseconds: cut finer fractions
        text = text.replace("." + match[1], "." + match[1][:6])
    return datetime.fromisoformat(text).astimezone(UTC)


def _json_reading(item: object, ref: TopicRef) -> ReadingIn:
    if not isinstance(item, dict):
        raise _BadReading(pb.REJECTION_REASON_MALFORMED, "reading is not an object")
    named = item.get("sensor_id", item.get("sensor", ""))
    if not isinstance(named, str):
        raise _BadReading(pb.REJECTION_REASON_MALFORMED, f"sensor {named!r} is not a string")
    sensor = _sensor_id(named, ref)
    value = item.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadReading(pb.REJECTION_REASON_MALFORMED, f"value {value!r} is not a number", named)
    unit = _unit(item.get("unit"), named)
    try:
        observed = parse_time(item.get("observe_time"))
    except ValueError as exc:
        raise _BadReading(pb.REJECTION_REASON_MALFORMED, str(exc), named) from None
    return ReadingIn(sensor_id=sensor, observe_time=observed, value=float(value), unit=unit)


def _proto_reading(item: Any, ref: TopicRef) -> ReadingIn:
    which = item.WhichOneof("sensor_ref")
    named = str(getattr(item, which)) if which else ""
    sensor = _sensor_id(named, ref)
    if not item.HasField("observe_time"):
        raise _BadReading(pb.REJECTION_REASON_MALFORMED, "observe_time is missing", named)
    unit = _unit(int(item.unit), named)
    observed = item.observe_time.ToDatetime(tzinfo=UTC)
    return ReadingIn(sensor_id=sensor, observe_time=observed, value=float(item.value), unit=unit)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _payload(message: aiomqtt.Message) -> bytes:
    raw = message.payload
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    return b"" if raw is None else str(raw).encode()


def _reason_name(reason: int) -> str | int:
    if reason in pb.RejectionReason.values():
        return pb.RejectionReason.Name(pb.RejectionReason.ValueType(reason))
    return reason


# --- the bridge ---------------------------------------------------------------------------------


class Submitter(Protocol):
    """What the bridge needs of the ingest pipeline (``IngestPipeline`` fits)."""

    async def submit(
        self, *, license_id: str | None, gateway_id: str, sequence: int | None, readings: Sequence[ReadingIn]
    ) -> Ack:
        """Validates and commits readings; returns once they are durably committed."""
        ...


@dataclass
class BridgeStats:
    """Counters of one bridge process (logged with each dead letter and at shutdown)."""

    messages: int = 0
    readings_submitted: int = 0
    readings_accepted: int = 0
    readings_rejected: int = 0
    readings_invalid: int = 0
    messages_malformed: int = 0
    dead_letters: int = 0
    acknowledged: int = 0
    retained_skipped: int = 0
    reconnects: int = 0


@dataclass
class _Item:
    """One received message on its way to the pipeline and back to the broker."""

    message: aiomqtt.Message
    error: str | None = None
    decoded: Decoded | None = None
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.decoded.readings) if self.decoded else 0


class _SessionFailed(Exception):
    """Processing failed (pipeline or broker): end the session, reconnect, get redeliveries."""


class MqttBridge:
    """Subscribes to the readings topics and feeds the ingest pipeline, acking after commit."""

    def __init__(self, pipeline: Submitter, settings: MqttBridgeSettings) -> None:
        self._pipeline = pipeline
        self._settings = settings
        self._gateway_id = settings.gateway_id()
        self.stats = BridgeStats()
        self.subscribed = asyncio.Event()
        """Set while the bridge holds a subscription (tests wait for it)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Runs until ``stop`` is set, reconnecting with exponential backoff and jitter."""
        s = self._settings
        delay = s.reconnect_min_seconds
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._session(stop)
            except (aiomqtt.MqttError, _SessionFailed, OSError) as exc:
                self.stats.reconnects += 1
                log.warning("mqtt.session_lost", error=str(exc), retry_in=round(delay, 2))
            finally:
                self.subscribed.clear()
            if stop.is_set():
                break
            if time.monotonic() - started > s.reconnect_max_seconds:
                delay = s.reconnect_min_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay * random.uniform(0.8, 1.2))  # noqa: S311
            delay = min(delay * 2, s.reconnect_max_seconds)
        log.info("mqtt.stopped", **vars(self.stats))

    def _client(self) -> aiomqtt.Client:
        s = self._settings
        url = urlsplit(s.url)
        if url.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"SEEDLINE_MQTT_URL {s.url!r}: scheme must be mqtt:// or mqtts://")
        secure = url.scheme in ("mqtts", "ssl")
        tls = ssl.create_default_context(cafile=s.ca_file) if secure else None
        v5 = s.protocol == "5"
        properties: Properties | None = None
        if v5:
            properties = _properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = s.session_expiry_seconds
            properties.ReceiveMaximum = s.receive_maximum
        client = aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or (8883 if secure else 1883),
            username=unquote(url.username) if url.username else None,
            password=unquote(url.password) if url.password else None,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            clean_start=False if v5 else 3,  # 3: paho's "first only", the only value 3.1.1 allows
            properties=properties,
            keepalive=s.keepalive_seconds,
            tls_context=tls,
            timeout=30,
        )
        # aiomqtt 2.5 has no manual-ack option of its own; its paho-mqtt 2 client does: with it on,
        # paho sends no PUBACK until ack() is called (see _process).
        client._client.manual_ack_set(True)
        client.pending_calls_threshold = 10_000
        return client

    async def _session(self, stop: asyncio.Event) -> None:
        client = self._client()
        async with client:
            await client.subscribe(self._settings.subscription(), qos=1)
            log.info(
                "mqtt.subscribed", topic=self._settings.subscription(), client_id=self._settings.client_id
            )
            self.subscribed.set()
            session = _Session(self, client)
            reader = asyncio.create_task(session.read())
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait((reader, stopper, session.failed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
                reader.cancel()
                await asyncio.wait((reader, stopper))
            if session.failed.done():
                await session.abandon()
                raise _SessionFailed(str(session.failed.exception()))
            lost = None if reader.cancelled() else reader.exception()
            if lost is not None:  # the connection broke (aiomqtt.MqttError)
                await session.abandon()
                raise _SessionFailed(str(lost)) from lost
            # Stop: what was handed to the pipeline is committed and acknowledged; what was still
            # waiting in this process stays unacknowledged and comes back in the next session.
            await session.drain()

    # The per-message work: decide what a message holds, then dead-letter and ack it.

    def prepare(self, message: aiomqtt.Message) -> _Item:
        """Parses one message (never raises: problems are recorded on the item)."""
        self.stats.messages += 1
        item = _Item(message)
        topic = message.topic.value
        if topic.startswith(self._settings.dead_letter_prefix + "/"):
            return item  # our own dead letters match seedline/#: acknowledge, do nothing
        if message.retain:
            # Sent because we (re)subscribed, not because it was just published: a retained reading
            # was ingested when it was published, so ingesting it at every reconnect would repeat it.
            self.stats.retained_skipped += 1
            return item
        try:
            ref = parse_topic(topic)
            content_type = getattr(message.properties, "ContentType", None) if message.properties else None
            fmt = payload_format(ref, content_type)
            item.decoded = decode(ref, fmt, _payload(message))
        except Exception as exc:  # a message must never stop the bridge: dead-letter it
            item.error = str(exc) if isinstance(exc, Malformed) else f"unreadable message: {exc!r}"
            self.stats.messages_malformed += 1
            return item
        self.stats.readings_invalid += len(item.decoded.invalid)
        return item

    async def submit(self, items: Sequence[_Item]) -> None:
        """Hands the readings of several messages to the pipeline, one submit per license."""
        groups: dict[str, tuple[list[ReadingIn], list[tuple[_Item, int]]]] = {}
        for item in items:
            if item.decoded is None:
                continue
            license_id = parse_topic(item.message.topic.value).license_id
            readings, origins = groups.setdefault(license_id, ([], []))
            readings.extend(item.decoded.readings)
            origins.extend((item, pos) for pos in item.decoded.positions)
        if not groups:
            return
        order = list(groups)
        acks = await asyncio.gather(
            *(
                self._pipeline.submit(
                    license_id=lic, gateway_id=self._gateway_id, sequence=None, readings=groups[lic][0]
                )
                for lic in order
            )
        )
        for lic, ack in zip(order, acks, strict=True):
            readings, origins = groups[lic]
            self.stats.readings_submitted += len(readings)
            self.stats.readings_accepted += ack.accepted
            self.stats.readings_rejected += len(ack.rejected)
            for rej in ack.rejected:
                item, pos = origins[rej.index]
                item.rejected.append(
                    Rejected(index=pos, sensor=rej.sensor, reason=rej.reason, message=rej.message)
                )

    async def dead_letter(self, client: aiomqtt.Client, item: _Item) -> None:
        """Publishes a message's problems to the dead-letter topic (QoS 1, awaited)."""
        problems = sorted(
            [*(item.decoded.invalid if item.decoded else ()), *item.rejected], key=lambda r: r.index
        )
        if item.error is None and not problems:
            return
        message = item.message
        content_type = getattr(message.properties, "ContentType", None) if message.properties else None
        body = {
            "topic": message.topic.value,
            "error": item.error,
            "rejected": [
                {
                    "index": r.index,
                    "sensor": r.sensor,
                    "reason": _reason_name(r.reason),
                    "message": r.message,
                }
                for r in problems
            ],
            "content_type": content_type,
            "payload_base64": base64.b64encode(_payload(message)).decode(),
            "bridge": self._settings.client_id,
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        properties: Properties | None = None
        if self._settings.protocol == "5":
            properties = _properties(PacketTypes.PUBLISH)
            properties.ContentType = "application/json"
        await client.publish(
            f"{self._settings.dead_letter_prefix}/{message.topic.value}",
            json.dumps(body, separators=(",", ":")),
            qos=1,
            properties=properties,
        )
        self.stats.dead_letters += 1
        log.warning(
            "mqtt.dead_letter",
            topic=message.topic.value,
            error=item.error,
            rejected=len(problems),
            malformed=self.stats.messages_malformed,
            dead_letters=self.stats.dead_letters,
        )


class _Session:
    """One connection's message flow: batches are submitted concurrently, acknowledged in order."""

    def __init__(self, bridge: MqttBridge, client: aiomqtt.Client) -> None:
        self._bridge = bridge
        self._client = client
        self._settings = bridge._settings
        self._slots = asyncio.Semaphore(self._settings.max_batches_in_flight)
        self._tail: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def read(self) -> None:
        batch: list[_Item] = []
        size = 0
        async for message in self._client.messages:
            item = self._bridge.prepare(message)
            if batch and size + item.size > self._settings.max_batch_readings:
                await self._flush(batch)
                batch, size = [], 0
            batch.append(item)
            size += item.size
            # Idle (nothing more queued) or full: hand the batch over. Under load the queue is never
            # empty, so batches grow to max_batch_readings; at a trickle each message goes alone.
            if len(self._client.messages) == 0 or size >= self._settings.max_batch_readings:
                await self._flush(batch)
                batch, size = [], 0

    async def _flush(self, batch: list[_Item]) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._process(batch, self._tail))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._tail = task

    async def _process(self, batch: list[_Item], previous: asyncio.Task[None] | None) -> None:
        """Submits a batch, dead-letters its problems, then acks it after the batches before it.

        A failure is recorded in ``failed`` (which ends the session) instead of being raised; a
        batch after a failed one is not acknowledged either, so PUBACKs stay in arrival order and
        everything unacknowledged is redelivered in the next session.
        """
        try:
            with hooks.mqtt_batch(len(batch)):  # a span per batch of messages, counted when committed
                await self._bridge.submit(batch)
            await asyncio.gather(*(self._bridge.dead_letter(self._client, item) for item in batch))
            if previous is not None:
                await previous  # PUBACKs go out in the order the messages arrived
            if self.failed.done():
                return
            for item in batch:
                # The readings are committed (or dead-lettered): now the broker may forget them.
                self._client._client.ack(item.message.mid, item.message.qos)
            self._bridge.stats.acknowledged += len(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.failed.done():
                log.error("mqtt.batch_failed", error=repr(exc), messages=len(batch))
                self.failed.set_exception(exc)
        finally:
            self._slots.release()

    async def drain(self) -> None:
        """Waits until every batch handed over is committed and acknowledged (or failed)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.failed.done():
            log.warning("mqtt.drain_failed", error=str(self.failed.exception()))

    async def abandon(self) -> None:
        """Cancels batches still in flight: their messages stay unacknowledged and come back."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def serve(
    database_url: str, settings: MqttBridgeSettings, stop: asyncio.Event, *, writers: int = 2
) -> BridgeStats:
    """Runs a bridge with its own ingest pipeline until ``stop`` is set (``seedline mqtt-bridge``).

    Migrates the database first (like ``seedline worker``). On stop, the batches already handed to
    the pipeline are committed and acknowledged before the pipeline stops.
    """
    from seedline_server.service.uow import Database
    from seedline_server.store import db
    from seedline_server.telemetry.alerts import AlertHub
    from seedline_server.telemetry.ingest import IngestPipeline

    await db.migrate(database_url)
    engine = db.make_engine(database_url, pool_size=writers + 4)
    pipeline = IngestPipeline(engine, writers=writers)
    # Every process that ingests evaluates the alert rules on what it committed: readings that
    # arrive only over MQTT raise and clear alerts like those of the gRPC stream.
    alerts = AlertHub(Database(db.sessionmaker(engine)), db.libpq_url(database_url))
    await alerts.start()
    pipeline.add_listener(alerts.on_readings)
    await pipeline.start()
    bridge = MqttBridge(pipeline, settings)
    try:
        await bridge.run(stop)
    finally:
        await pipeline.stop()
        await alerts.stop()  # after the pipeline: the last commits' alerts are persisted
        await engine.dispose()
    return bridge.stats
