"""The value types that flow through the pipeline.

Plain slotted dataclasses: they are created once per reading on the hot path,
so they do no validation of their own. `gateway.core.normalize` is the one place
that turns untrusted bytes into a `Reading` (or a `Reject` saying why not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

# Reject reasons, SPEC §4 "Validation". The label values of
# edge_readings_rejected_total{reason}.
MALFORMED: Final = "malformed"
MISSING_FIELD: Final = "missing_field"
INVALID_VALUE: Final = "invalid_value"
OUT_OF_RANGE: Final = "out_of_range"
FUTURE_TIMESTAMP: Final = "future_timestamp"
STALE_TIMESTAMP: Final = "stale_timestamp"
TOO_LARGE: Final = "too_large"
SERIES_LIMIT: Final = "series_limit"
BAD_QUALITY: Final = "bad_quality"
DUPLICATE: Final = "duplicate"
REJECT_REASONS: Final = (
    MALFORMED,
    MISSING_FIELD,
    INVALID_VALUE,
    OUT_OF_RANGE,
    FUTURE_TIMESTAMP,
    STALE_TIMESTAMP,
    TOO_LARGE,
    SERIES_LIMIT,
    BAD_QUALITY,
    DUPLICATE,
)

# Alert kinds (SPEC §5) and severities, lowest first.
ZSCORE: Final = "zscore"
THRESHOLD_HIGH: Final = "threshold_high"
THRESHOLD_LOW: Final = "threshold_low"
OFFLINE: Final = "offline"
TREND: Final = "trend"
DRIFT: Final = "drift"  # a lasting level shift (gateway.core.detectors.drift)
MULTIVARIATE: Final = "multivariate"  # an equipment's sensors together (.equipment)
DEFECT_RATE: Final = "defect_rate"
SEVERITIES: Final = ("low", "medium", "high", "critical")
SEVERITY_RANK: Final = {s: i for i, s in enumerate(SEVERITIES)}

# The sensor name used for equipment-level alerts (offline, defect_rate).
EQUIPMENT_SENSOR: Final = "*"


@dataclass(slots=True)
class Reading:
    """One normalized measurement of one series (equipment + sensor).

    `ts` is nanoseconds since the Unix epoch, UTC. `tags` holds `line` and any
    other named topic-template levels; readings from one message may share the
    same dict, so treat it as read-only. `received` is `time.monotonic()` when
    the raw message arrived, for the pipeline-latency histogram.
    """

    equipment: str
    sensor: str
    value: float
    ts: int
    unit: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    source: str = "mqtt"
    received: float = 0.0

    @property
    def line(self) -> str:
        return self.tags.get("line", "")


@dataclass(slots=True, frozen=True)
class Reject:
    """Input that did not become a reading, and why (one of REJECT_REASONS)."""

    reason: str
    detail: str
    topic: str = ""
    payload: bytes = b""


@dataclass(slots=True)
class Finding:
    """One abnormal verdict of one detector for one reading."""

    kind: str
    severity: str
    value: float
    threshold: float
    message: str
    z: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass(slots=True, frozen=True)
class AlarmPolicy:
    """How the alerts of one series are annunciated (rule keys, ISA-18.2).

    `deadband` (absolute units) applies to threshold alerts; the delays run on the
    readings' timestamps. `priority` None means "follows severity". The
    rationalisation fields are carried in the alert's events as they are.
    """

    deadband: float = 0.0
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    priority: str | None = None
    cause: str | None = None
    consequence: str | None = None
    action: str | None = None
    response_time_s: float | None = None


DEFAULT_POLICY: Final = AlarmPolicy()


NO_FINDINGS: Final[tuple[Finding, ...]] = ()  # shared: a normal reading allocates no list


@dataclass(slots=True)
class Score:
    """What the detectors said about one reading.

    `z` is None while the series is warming up. Empty `findings` (the shared
    `NO_FINDINGS` tuple from the detectors) means the reading was normal for
    every detector.
    """

    z: float | None
    findings: Sequence[Finding]

    @property
    def anomaly(self) -> bool:
        return bool(self.findings)


class Completion:
    """Told when the readings of the messages it rides on are durable, or cannot be.

    A source that must answer only once its input is in the spool (HTTP ingest) puts
    one in `RawMessage.conn` of every message of a batch it delivers. The durable-write
    stage looks at the first message of each batch only, so sources that carry none
    (MQTT: `conn` is the connection) pay one type check per batch, nothing per message.
    """

    __slots__ = ()

    def durable(self) -> None:
        """The batch's readings and lines are in the spool, fsynced (or there is no sink)."""

    def failed(self, why: str) -> None:
        """The batch did not become durable; `why` is worded for the client."""


@dataclass(slots=True, frozen=True)
class RawMessage:
    """Bytes as they arrived from a source, before normalization."""

    topic: str
    payload: bytes
    received: float  # time.monotonic()
    received_ns: int  # time.time_ns(), used when a payload has no ts
    source: str = "mqtt"
    subscription: int = 0  # index into the source's subscription list
    # For acknowledging a QoS 1/2 message once its readings are durable: the
    # packet id, its QoS, and the connection it arrived on (acks never cross
    # connections: a packet id means nothing on the next one). Sources that are
    # answered only once the batch is durable put a `Completion` in `conn` instead.
    mid: int = 0
    qos: int = 0
    conn: object = None
