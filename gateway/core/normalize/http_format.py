"""HTTP ingest: line protocol points -> readings, and the normalizer of source ``http`` (pure).

`HttpNormalizer` is a `Normalizer` for the messages the HTTP endpoints deliver
(`gateway.http.ingest`): JSON bodies go through the ``json`` / ``fields`` formats
exactly as MQTT payloads do (topics `TOPIC_JSON` / `TOPIC_FIELDS`), line protocol
bodies (topic `TOPIC_LINEPROTO`) through `lineproto_in` and the mapping below; both
end in the same per-reading checks (`checks.ItemChecks`). Each message carries an
`IngestTicket` in `RawMessage.conn`: the normalizer notes the readings and rejects on
it, the durable-write stage resolves it, and the HTTP handler answers from it.

Mapping of a point (``[http_ingest]`` keys in brackets):

- ``readings,equipment=E,sensor=S,line=L,unit=U value=V`` (measurement
  [readings_measurement], our own schema, `gateway.core.lineproto`): one reading
  E/S from field [value_field]; its other fields (``z``, ``anomaly``) are ignored.
- any other measurement M: equipment = the first of [equipment_tags] present;
  every numeric field F is a reading of sensor ``P.F`` where P is the [sensor_tag]
  tag if present, else M; a field named [value_field] is sensor P itself.
  ``line`` = the [line_tag] tag, unit = the [unit_tag] tag.
- every other tag is kept as a tag of the readings, except ``equipment``,
  ``sensor``, ``unit``, ``source`` (our schema's own) and [drop_tags].
- integer and unsigned fields are readings too; booleans 1.0 / 0.0 ([booleans]);
  string fields are skipped (not a reading, not a reject).
- timestamp x precision -> ns; none: the receive time (made unique per series, not
  de-duplicated, as a bare MQTT value). Future / stale bounds as for MQTT.

A reject names its line (``line 3: ...``; ``line 3: field 'temp': ...`` for one
field) and carries the line as payload. A line that is not line protocol, or whose
equipment or names are unusable, is one reject; a field that fails a reading check
is one reject for that field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from gateway.config import HttpIngestConfig, Subscription, ValidationConfig
from gateway.core.model import (
    FUTURE_TIMESTAMP,
    INVALID_VALUE,
    MALFORMED,
    MISSING_FIELD,
    STALE_TIMESTAMP,
    TOO_LARGE,
    Completion,
    RawMessage,
    Reading,
    Reject,
)
from gateway.core.normalize.checks import Bounds, When
from gateway.core.normalize.lineproto_in import FieldValue, LineError, parse_line, split_lines
from gateway.core.normalize.names import short
from gateway.core.normalize.normalizer import REJECT_PAYLOAD_MAX, Normalizer

SOURCE: Final = "http"
TOPIC_LINEPROTO: Final = "$http/write"  # '$': no MQTT wildcard subscription matches these
TOPIC_JSON: Final = "$http/json"
TOPIC_FIELDS: Final = "$http/fields"
TOPIC_EVENTS: Final = "$http/events"
# tag keys a reading's own fields write (gateway.core.lineproto): never extra tags
RESERVED_TAGS: Final = frozenset({"equipment", "sensor", "unit", "source", "line"})

# ns per unit of a write request's `precision` (v2: ns us ms s; v1 also n u m h)
PRECISIONS: Final = {
    "ns": 1,
    "n": 1,
    "us": 1_000,
    "u": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def http_subscriptions() -> list[Subscription]:
    """The JSON formats of `HttpNormalizer`, as subscriptions over its fixed topics."""
    return [
        Subscription(topic=TOPIC_JSON, template=TOPIC_JSON, format="json"),
        Subscription(topic=TOPIC_FIELDS, template=TOPIC_FIELDS, format="fields"),
    ]


def http_event_subscription() -> Subscription:
    """The events path claims `TOPIC_EVENTS` messages through this subscription."""
    return Subscription(topic=TOPIC_EVENTS, template=TOPIC_EVENTS, format="event")


class IngestTicket(Completion):
    """One delivered HTTP message's way back to its request.

    `done(None)` once durable, `done(why)` if it cannot be; `readings` and `rejects`
    are noted by the normalizer before that. `precision` (ns per timestamp unit) and
    `first_line` (lines of the body before this piece) are for line protocol.
    """

    __slots__ = ("_done", "first_line", "precision", "readings", "rejects")

    def __init__(
        self, done: Callable[[str | None], None], precision: int = 1, first_line: int = 0
    ) -> None:
        self._done = done
        self.precision = precision
        self.first_line = first_line
        self.readings = 0
        self.rejects: list[Reject] = []

    def note(self, readings: int, rejects: Sequence[Reject]) -> None:
        self.readings += readings
        self.rejects.extend(rejects)

    def durable(self) -> None:
        self._done(None)

    def failed(self, why: str) -> None:
        self._done(why)


class HttpNormalizer(Normalizer):
    """The normalizer of source ``http``: JSON formats by topic, line protocol by mapping."""

    def __init__(
        self, vcfg: ValidationConfig, icfg: HttpIngestConfig, bounds: Bounds | None = None
    ) -> None:
        super().__init__(http_subscriptions(), vcfg, bounds, source=SOURCE)
        self.icfg = icfg
        self._readings_m = icfg.readings_measurement
        self._eq_tags = tuple(icfg.equipment_tags)
        self._eq_tags_text = ", ".join(icfg.equipment_tags)
        self._sensor_tag = icfg.sensor_tag
        self._line_tag = icfg.line_tag
        self._unit_tag = icfg.unit_tag
        self._value_field = icfg.value_field
        self._sep = icfg.sensor_separator
        self._booleans = icfg.booleans
        self._not_extra = RESERVED_TAGS | {
            icfg.sensor_tag,
            icfg.line_tag,
            icfg.unit_tag,
            *icfg.equipment_tags,
            *icfg.drop_tags,
        }
        self._lineno = 0  # > 0 while a line protocol line is normalized
        self._line_raw = b""

    def normalize(self, msg: RawMessage) -> tuple[list[Reading], list[Reject]]:
        """Readings and rejects of one HTTP message, noted on its ticket; never raises."""
        ticket = msg.conn
        if msg.topic == TOPIC_LINEPROTO:
            try:
                out, rej = self._lineproto(msg, ticket)
            except Exception as e:  # safety net: a bug must not stop ingest
                self.internal_errors += 1
                out = []
                rej = [
                    Reject(MALFORMED, f"could not be normalized ({type(e).__name__})", msg.topic)
                ]
            self._lineno = 0
        else:
            self._lineno = 0
            out, rej = super().normalize(msg)
        if isinstance(ticket, IngestTicket):
            ticket.note(len(out), rej)
        return out, rej

    def _reject(
        self, rej: list[Reject], reason: str, detail: str, i: int, key: str | None = None
    ) -> None:
        if not self._lineno:
            return super()._reject(rej, reason, detail, i, key)
        if key is not None:
            detail = f"field {short(key)}: {detail}"
        rej.append(
            Reject(
                reason,
                f"line {self._lineno}: {detail}",
                self._topic,
                self._line_raw[:REJECT_PAYLOAD_MAX],
            )
        )

    def _when_ns(self, tns: int) -> When:
        now = self._now
        if tns > now + self._future_ns:
            ahead = (tns - now) / 1e9
            return 0, FUTURE_TIMESTAMP, f"ts is {ahead:.0f} s ahead of the gateway clock"
        if tns < now - self._age_ns:
            return 0, STALE_TIMESTAMP, f"ts is {(now - tns) / 1e9:.0f} s old"
        return tns, "", ""

    def _lineproto(self, msg: RawMessage, ticket: object) -> tuple[list[Reading], list[Reject]]:
        out: list[Reading] = []
        rej: list[Reject] = []
        self._topic = msg.topic
        self._payload = b""
        now = self._now = msg.received_ns
        self._nowt = (now, "", "")
        self._received = msg.received
        mult, base = 1, 0
        if isinstance(ticket, IngestTicket):
            mult, base = ticket.precision, ticket.first_line
        max_line = self._max_payload
        point = self._point
        for n, raw in split_lines(msg.payload):
            self._lineno = base + n
            self._line_raw = raw
            if len(raw) > max_line:
                self._reject(rej, TOO_LARGE, f"line of {len(raw)} bytes exceeds {max_line}", -1)
                continue
            try:
                m, tags, fields, ts = parse_line(raw.decode())
            except UnicodeDecodeError:
                self._reject(rej, MALFORMED, "not UTF-8", -1)
                continue
            except LineError as e:
                self._reject(rej, MALFORMED, str(e), -1)
                continue
            point(out, rej, m, tags, fields, ts, mult)
        return out, rej

    def _point(
        self,
        out: list[Reading],
        rej: list[Reject],
        measurement: str,
        tags: list[tuple[str, str]],
        fields: list[tuple[str, FieldValue]],
        ts: int | None,
        mult: int,
    ) -> None:
        """One parsed point: its numeric fields through the reading checks."""
        td = dict(tags)
        own = measurement == self._readings_m
        eq = None
        for k in self._eq_tags:
            eq = td.get(k)
            if eq:
                break
        if not eq:
            what = "equipment" if own else self._eq_tags_text
            return self._reject(rej, MISSING_FIELD, f"no equipment tag ({what})", -1)
        p = self._name(eq, "equipment")
        if p is not None:
            return self._reject(rej, p[0], p[1], -1)
        prefix = td.get(self._sensor_tag)
        if own and not prefix:
            return self._reject(rej, MISSING_FIELD, f"no sensor tag ({self._sensor_tag})", -1)
        if not prefix:
            prefix = measurement
        unit = td.get(self._unit_tag, "")
        if unit:
            up = self._unit(unit)
            if up is not None:
                return self._reject(rej, INVALID_VALUE, up, -1)
        not_extra = self._not_extra
        extra = {k: v for k, v in td.items() if k not in not_extra}
        line = td.get(self._line_tag)
        if line:
            p = self._name(line, "line")
            if p is not None:
                return self._reject(rej, p[0], p[1], -1)
            extra["line"] = line
        if ts is None:
            when, dedup = self._nowt, False
        else:
            when, dedup = self._when_ns(ts * mult), True
        value_field = self._value_field
        emit = self._emit
        for k, v in fields:
            if own and k != value_field:
                continue
            tv = type(v)
            if tv is str:
                continue
            if tv is bool:
                if not self._booleans:
                    continue
                v = 1.0 if v else 0.0
            sn = prefix if k == value_field else f"{prefix}{self._sep}{k}"
            p = self._name(sn, "sensor")
            if p is not None:
                self._reject(rej, p[0], p[1], -1, k)
                continue
            emit(out, rej, eq, sn, extra, v, unit, when, dedup, -1, k)
