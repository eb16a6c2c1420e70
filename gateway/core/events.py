"""Production events (SPEC §4 "Production events"): parse, de-duplicate, query. Pure.

A subscription with ``format = "event"`` carries one event object or a JSON array
of them::

    {"event_id": "E-123", "event_time": "2026-01-15T10:12:03.123Z",
     "machine_id": "M-001", "line_id": "LINE-A", "factory_id": "F01",
     "duration_ms": 4312, "defect_count": 0}

Rules (rejects use the reading reasons of `gateway.core.model`):

- ``event_id`` (string, or integer taken as its decimal string), ``event_time``,
  ``duration_ms`` and ``defect_count`` are required (``missing_field``; null is absent).
  ``event_time`` is required because it is the point's timestamp in InfluxDB: a
  receive-time default would turn every resend into an update.
- ``machine_id`` / ``line_id`` / ``factory_id`` come from the payload, else from the
  topic levels ``{equipment}`` (or ``{machine}``), ``{line}``, ``{factory}``, else
  (factory only) from ``[events] default_factory``; none of them -> ``missing_field``.
  They are tag values: the name rules of readings apply (``invalid_value``).
- ``event_time``: ISO 8601 or epoch s/ms/µs/ns like a reading ``ts``; more than
  ``max_future_s`` ahead -> ``future_timestamp``, older than ``max_age_s`` ->
  ``stale_timestamp``, unparseable -> ``malformed``.
- ``duration_ms``: a number in [0, 6 h] (``out_of_range`` outside, ``invalid_value``
  if not a number). ``defect_count``: an integer (integral floats accepted) >= -1;
  -1 means "unknown": stored and counted as an event, never as defects.
- One bad batch item rejects only that item.

De-duplication (`EventStore.add`): the same id with an identical event (all
normalized fields equal, so key order or ISO-vs-epoch spelling does not matter)
is a ``duplicate``: counted, not stored or written again. The same id with a
different event is an ``update``: the later receive wins in memory and in InfluxDB
(same tags + timestamp overwrite the point). If an update moves the point (other
machine/line/factory or event_time), the old point is rewritten as a tombstone
with ``superseded=true``; live points carry ``superseded=false``, so queries
filter on ``superseded = false``.

The store remembers at most ``[events] dedup_window`` ids, least recently
received first out. Stats are computed from these remembered events only;
older events stay in InfluxDB.

Why one module of ~530 lines: the parser, the de-duplicating store and the queries
all work on the one window of event ids and their per-machine defect history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.config import EventsConfig, Subscription, ValidationConfig
from gateway.core.alerts import iso_ms
from gateway.core.lineproto import quote_field, tag_set
from gateway.core.model import (
    FUTURE_TIMESTAMP,
    INVALID_VALUE,
    MALFORMED,
    MISSING_FIELD,
    OUT_OF_RANGE,
    STALE_TIMESTAMP,
    TOO_LARGE,
    RawMessage,
    Reject,
)
from gateway.core.normalize import name_problem
from gateway.core.snapshots import json_pieces
from gateway.core.timestamps import TimestampRangeError, parse_ts
from gateway.core.topics import TopicTemplate

MEASUREMENT: Final = "machine_events"
UNKNOWN_DEFECTS: Final = -1
MAX_DURATION_MS: Final = 6 * 3600 * 1000
MAX_EVENT_ID: Final = 256
REJECT_PAYLOAD_MAX: Final = 1024
CLAIM_CACHE_MAX: Final = 65_536
HOUR_NS: Final = 3600 * 1_000_000_000

STORED: Final = "stored"
DUPLICATE: Final = "duplicate"
UPDATE: Final = "update"
EVENT_RESULTS: Final = (STORED, DUPLICATE, UPDATE)

HEALTHY: Final = "healthy"
WARNING: Final = "warning"

_SNAPSHOT_VERSION: Final = 1


@dataclass(slots=True, frozen=True)
class Event:
    """One production event; `event_time` is ns since the epoch, UTC."""

    event_id: str
    event_time: int
    machine_id: str
    line_id: str
    factory_id: str
    duration_ms: float
    defect_count: int

    @property
    def defects(self) -> int:
        """Defects that count in totals (0 when unknown)."""
        return self.defect_count if self.defect_count > 0 else 0

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What identifies the InfluxDB point: tags and timestamp."""
        return self.factory_id, self.line_id, self.machine_id, self.event_time


def event_line(ev: Event, superseded: bool = False) -> str:
    """One ``machine_events`` point in line protocol."""
    tags = tag_set([("factory", ev.factory_id), ("line", ev.line_id), ("machine", ev.machine_id)])
    flag = "true" if superseded else "false"
    return (
        f"{MEASUREMENT}{tags} event_id={quote_field(ev.event_id)},"
        f"duration_ms={float(ev.duration_ms)!r},defect_count={ev.defect_count}i,"
        f"superseded={flag} {ev.event_time}"
    )


def iso(ts_ns: int) -> str:
    """ns -> ISO 8601 UTC with ms (or ns when not a whole ms), ``Z`` suffix."""
    s = iso_ms(ts_ns)
    sub = ts_ns % 1_000_000
    return s if sub == 0 else f"{s[:-1]}{sub:06d}Z"


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if type(v) is bool:
        return "a boolean"
    names: dict[type, str] = {str: "a string", list: "an array", dict: "an object"}
    return names.get(type(v), f"a {type(v).__name__}")


# ------------------------------------------------------------------- parsing


class EventParser:
    """Turns messages of ``format = "event"`` subscriptions into `Event`s or `Reject`s."""

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        vcfg: ValidationConfig,
        default_factory: str = "",
    ) -> None:
        self._subs: list[tuple[int, TopicTemplate]] = [
            (i, s.compiled()) for i, s in enumerate(subscriptions) if s.format == "event"
        ]
        self._event_idx = {i for i, _ in self._subs}
        self.enabled = bool(self._subs)
        self._default_factory = default_factory
        self._max_payload = vcfg.max_payload_bytes
        self._max_batch = vcfg.max_batch_items
        self._future_ns = int(vcfg.max_future_s * 1e9)
        self._age_ns = int(vcfg.max_age_s * 1e9)
        self._claims: dict[tuple[int, str], dict[str, str] | None] = {}

    def claim(self, msg: RawMessage) -> dict[str, str] | None:
        """The topic's named levels if an event subscription owns `msg`, else None.

        An event subscription owns every topic its template matches, whichever
        subscription the source attributed the message to.
        """
        if not self.enabled:
            return None
        key = (msg.subscription, msg.topic)
        try:
            return self._claims[key]
        except KeyError:
            pass
        levels: dict[str, str] | None = None
        order = sorted(self._subs, key=lambda s: s[0] != msg.subscription)
        for _, tpl in order:
            m = tpl.match(msg.topic)
            if m is not None:
                levels = m
                break
        if len(self._claims) >= CLAIM_CACHE_MAX:
            self._claims.clear()
        self._claims[key] = levels
        return levels

    def parse(self, msg: RawMessage, levels: dict[str, str]) -> tuple[list[Event], list[Reject]]:
        """Events and rejects of one message; never raises."""
        try:
            return self._parse(msg, levels)
        except Exception as e:  # safety net: a bug must not stop ingest
            return [], [self._reject(msg, MALFORMED, f"could not be parsed ({type(e).__name__})")]

    def _reject(self, msg: RawMessage, reason: str, detail: str, i: int = -1) -> Reject:
        if i >= 0:
            detail = f"item {i}: {detail}"
        return Reject(reason, detail, msg.topic[:1024], bytes(msg.payload[:REJECT_PAYLOAD_MAX]))

    def _parse(self, msg: RawMessage, levels: dict[str, str]) -> tuple[list[Event], list[Reject]]:
        out: list[Event] = []
        rej: list[Reject] = []
        payload = msg.payload
        if len(payload) > self._max_payload:
            detail = f"payload of {len(payload)} bytes exceeds {self._max_payload}"
            return out, [self._reject(msg, TOO_LARGE, detail)]
        if not payload:
            return out, [self._reject(msg, MALFORMED, "payload is empty")]
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            return out, [self._reject(msg, MALFORMED, f"payload is not valid JSON ({e.msg})")]
        topic = self._topic_fields(levels)
        if type(topic) is tuple:
            return out, [self._reject(msg, topic[0], topic[1])]
        assert isinstance(topic, dict)
        if type(data) is dict:
            items: list[Any] = [data]
            single = True
        elif type(data) is list:
            if len(data) > self._max_batch:
                detail = f"batch of {len(data)} items exceeds {self._max_batch}"
                return out, [self._reject(msg, TOO_LARGE, detail)]
            items = data
            single = False
        else:
            detail = f"event payload is {_kind(data)}, not an object or array"
            return out, [self._reject(msg, MALFORMED, detail)]
        now = msg.received_ns
        for i, item in enumerate(items):
            idx = -1 if single else i
            if type(item) is not dict:
                rej.append(self._reject(msg, MALFORMED, f"is {_kind(item)}, not an object", idx))
                continue
            r = self._event(item, topic, now)
            if type(r) is tuple:
                rej.append(self._reject(msg, r[0], r[1], idx))
            else:
                out.append(r)  # type: ignore[arg-type]
        return out, rej

    def _topic_fields(self, levels: dict[str, str]) -> dict[str, str] | tuple[str, str]:
        out: dict[str, str] = {}
        for field, names in (
            ("machine_id", ("machine", "equipment")),
            ("line_id", ("line",)),
            ("factory_id", ("factory",)),
        ):
            for n in names:
                v = levels.get(n)
                if v is not None:
                    p = name_problem(v)
                    if p is not None:
                        return p[0], f"topic level {n} {p[1]}"
                    out[field] = v
                    break
        return out

    def _event(self, d: dict[str, Any], topic: dict[str, str], now: int) -> Event | tuple[str, str]:
        eid = d.get("event_id")
        if eid is None:
            return MISSING_FIELD, "no event_id"
        if type(eid) is int:
            eid = str(eid)
        elif type(eid) is not str:
            return INVALID_VALUE, f"event_id is {_kind(eid)}, not a string"
        if not eid.strip():
            return MISSING_FIELD, "event_id is empty"
        if len(eid) > MAX_EVENT_ID or not eid.isprintable():
            return INVALID_VALUE, "event_id is too long or has control characters"
        names: list[str] = []
        for field in ("machine_id", "line_id", "factory_id"):
            v = d.get(field)
            if v is None:
                v = topic.get(field)
                if v is None and field == "factory_id" and self._default_factory:
                    v = self._default_factory
                if v is None:
                    return MISSING_FIELD, f"no {field} in payload or topic"
            else:
                p = name_problem(v)
                if p is not None:
                    return p[0], f"{field} {p[1]}"
            names.append(v)
        ts = d.get("event_time")
        if ts is None:
            return MISSING_FIELD, "no event_time"
        try:
            tns = parse_ts(ts)
        except TimestampRangeError as e:
            return (FUTURE_TIMESTAMP if e.future else STALE_TIMESTAMP), str(e)
        except ValueError as e:
            return MALFORMED, f"event_time: {str(e)[:120]}"
        if tns > now + self._future_ns:
            return FUTURE_TIMESTAMP, f"event_time is {(tns - now) / 1e9:.0f} s ahead of the clock"
        if tns < now - self._age_ns:
            return STALE_TIMESTAMP, f"event_time is {(now - tns) / 1e9:.0f} s old"
        dur = d.get("duration_ms")
        if dur is None:
            return MISSING_FIELD, "no duration_ms"
        if type(dur) is not int and type(dur) is not float:
            return INVALID_VALUE, f"duration_ms is {_kind(dur)}, not a number"
        if not 0 <= dur <= MAX_DURATION_MS:
            return OUT_OF_RANGE, f"duration_ms {dur:g} outside [0, {MAX_DURATION_MS}] (6 h)"
        dc = d.get("defect_count")
        if dc is None:
            return MISSING_FIELD, "no defect_count"
        if type(dc) is float and dc.is_integer():
            dc = int(dc)
        if type(dc) is not int:
            return INVALID_VALUE, f"defect_count is {_kind(dc)}, not an integer"
        if dc < UNKNOWN_DEFECTS:
            return OUT_OF_RANGE, f"defect_count {dc} is negative (only -1 = unknown is allowed)"
        if dc > 1 << 62:
            return OUT_OF_RANGE, f"defect_count {dc} is too large"
        return Event(eid, tns, names[0], names[1], names[2], float(dur), dc)


# --------------------------------------------------------------------- store


def _row(e: Event) -> list[Any]:
    """An event as a snapshot row (`EventStore.restore` reads the same order)."""
    return [
        e.event_id, e.event_time, e.machine_id, e.line_id, e.factory_id, e.duration_ms,
        e.defect_count,
    ]  # fmt: skip


class EventStore:
    """Remembered events by id (bounded, least recently received out) and stats over them.

    Not thread-safe; one owner task. Windows are half-open [start, end) on event_time.
    """

    __slots__ = ("_by_factory", "_by_id", "_by_machine", "evicted", "max_ids", "warning_rate")

    def __init__(self, max_ids: int = 100_000, warning_rate_per_h: float = 2.0) -> None:
        self.max_ids = max_ids
        self.warning_rate = warning_rate_per_h
        self.evicted = 0
        self._by_id: dict[str, Event] = {}
        self._by_machine: dict[str, dict[str, Event]] = {}
        self._by_factory: dict[str, dict[str, Event]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, event_id: str) -> Event | None:
        return self._by_id.get(event_id)

    def add(self, ev: Event) -> tuple[str, Event | None]:
        """(`STORED` | `DUPLICATE` | `UPDATE`, the replaced event for an update)."""
        old = self._by_id.pop(ev.event_id, None)
        if old is not None and old == ev:
            self._by_id[ev.event_id] = old  # refreshed: most recently received
            return DUPLICATE, None
        if old is not None:
            self._unindex(old)
        self._by_id[ev.event_id] = ev
        self._by_machine.setdefault(ev.machine_id, {})[ev.event_id] = ev
        self._by_factory.setdefault(ev.factory_id, {})[ev.event_id] = ev
        while len(self._by_id) > self.max_ids:
            oldest = next(iter(self._by_id))
            self._unindex(self._by_id.pop(oldest))
            self.evicted += 1
        return (STORED, None) if old is None else (UPDATE, old)

    def _unindex(self, ev: Event) -> None:
        for index, name in ((self._by_machine, ev.machine_id), (self._by_factory, ev.factory_id)):
            d = index.get(name)
            if d is not None:
                d.pop(ev.event_id, None)
                if not d:
                    del index[name]

    # -- queries ----------------------------------------------------------

    def counts(self, machine: str, start_ns: int, end_ns: int) -> tuple[int, int]:
        """(events, defects) of `machine` with event_time in [start, end)."""
        n = defects = 0
        for e in self._by_machine.get(machine, {}).values():
            if start_ns <= e.event_time < end_ns:
                n += 1
                if e.defect_count > 0:
                    defects += e.defect_count
        return n, defects

    def stats(self, machine: str, start_ns: int, end_ns: int) -> dict[str, Any]:
        """The SPEC §4 ``/api/stats`` object; raises ValueError unless start < end."""
        if not start_ns < end_ns:
            raise ValueError("start must be before end")
        n, defects = self.counts(machine, start_ns, end_ns)
        rate = defects * HOUR_NS / (end_ns - start_ns)
        return {
            "machine_id": machine,
            "start": iso(start_ns),
            "end": iso(end_ns),
            "events_count": n,
            "defects_count": defects,
            "avg_defect_rate": rate,
            "status": WARNING if rate >= self.warning_rate else HEALTHY,
        }

    def top_defect_lines(
        self, factory: str, start_ns: int, end_ns: int, limit: int = 10
    ) -> list[dict[str, Any]]:
        """Lines of `factory` by total defects in [start, end), most first (then line_id)."""
        if not start_ns < end_ns:
            raise ValueError("from must be before to")
        lines: dict[str, list[int]] = {}
        for e in self._by_factory.get(factory, {}).values():
            if start_ns <= e.event_time < end_ns:
                acc = lines.get(e.line_id)
                if acc is None:
                    acc = lines[e.line_id] = [0, 0]
                acc[0] += e.defects
                acc[1] += 1
        ranked = sorted(lines.items(), key=lambda kv: (-kv[1][0], kv[0]))[: max(0, limit)]
        return [
            {
                "line_id": line,
                "total_defects": d,
                "event_count": n,
                "defects_percent": round(d * 100 / n, 2),
            }
            for line, (d, n) in ranked
        ]

    def defect_rate(self, machine: str, now_ns: int, window_ns: int) -> float:
        """Defects per hour of `machine` over the trailing window (event_time >= now - window)."""
        since = now_ns - window_ns
        defects = 0
        for e in self._by_machine.get(machine, {}).values():
            if e.event_time >= since and e.defect_count > 0:
                defects += e.defect_count
        return defects * HOUR_NS / window_ns

    # -- persistence ------------------------------------------------------

    def snapshot(self) -> bytes:
        """Remembered events, oldest received first, as JSON bytes."""
        return b"".join(self.snapshot_chunks())

    def snapshot_chunks(self, per_chunk: int = 5000) -> Iterator[bytes]:
        """`snapshot` in pieces that join to it (a full window of 100,000 events takes
        ~100 ms at once); the events are those remembered when the first piece is taken."""
        events = list(self._by_id.values())
        return json_pieces(
            _SNAPSHOT_VERSION,
            "events",
            (
                [_row(e) for e in events[i : i + per_chunk]]
                for i in range(0, len(events), per_chunk)
            ),
        )

    def restore(self, data: bytes) -> None:
        """Replace all state with a `snapshot()`. Raises ValueError on bad data."""
        try:
            doc = orjson.loads(data)
            if doc.get("version") != _SNAPSHOT_VERSION:
                raise ValueError(f"unsupported events snapshot version {doc.get('version')!r}")
            events = [
                Event(str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), float(r[5]), int(r[6]))
                for r in doc["events"]
            ]
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"bad events snapshot: {e}") from None
        self._by_id.clear()
        self._by_machine.clear()
        self._by_factory.clear()
        for ev in events:
            self.add(ev)


# ------------------------------------------------------------------- the path


class EventPath:
    """Parser + store + line building, as the pipeline uses them (pure, one owner task).

    `ingest` appends line protocol to `lines` and returns rejects; per-result counts
    and touched machines accumulate until `drain()`.
    """

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        vcfg: ValidationConfig,
        ecfg: EventsConfig,
    ) -> None:
        self.cfg = ecfg
        self._subscriptions = list(subscriptions)
        self._vcfg = vcfg
        self.parser = EventParser(subscriptions, vcfg, ecfg.default_factory)
        self.store = EventStore(ecfg.dedup_window, ecfg.warning_rate_per_h)
        self.claim: Callable[[RawMessage], dict[str, str] | None] = self.parser.claim
        self._counts = dict.fromkeys(EVENT_RESULTS, 0)
        self._touched: dict[str, tuple[str, int]] = {}  # machine -> (line, newest event_time)

    def also_claim(self, source: str, topic: str, subscription: Subscription) -> None:
        """Also take `source`'s messages on `topic` as events (HTTP ingest's /api/events),
        parsed by `subscription`. The other sources' messages are claimed as before, by
        the event subscriptions they had (none: one falsy check per message)."""
        before = self.parser.claim
        self.parser = EventParser(
            [*self._subscriptions, subscription], self._vcfg, self.cfg.default_factory
        )

        def claim(msg: RawMessage) -> dict[str, str] | None:
            if msg.topic == topic and msg.source == source:
                return {}
            return before(msg)

        self.claim = claim

    def ingest(self, msg: RawMessage, levels: dict[str, str], lines: list[str]) -> list[Reject]:
        events, rejects = self.parser.parse(msg, levels)
        add = self.store.add
        counts = self._counts
        touched = self._touched
        for ev in events:
            result, old = add(ev)
            counts[result] += 1
            if result == DUPLICATE:
                continue
            if old is not None and old.key != ev.key:
                lines.append(event_line(old, superseded=True))
                touched.setdefault(old.machine_id, (old.line_id, 0))
            lines.append(event_line(ev))
            prev = touched.get(ev.machine_id)
            if prev is None or ev.event_time >= prev[1]:
                touched[ev.machine_id] = (ev.line_id, ev.event_time)
        return rejects

    def drain(self) -> tuple[dict[str, int], dict[str, tuple[str, int]]]:
        """(counts by result, machine -> (line, newest event_time)) since the last drain."""
        counts, touched = self._counts, self._touched
        self._counts = dict.fromkeys(EVENT_RESULTS, 0)
        self._touched = {}
        return counts, touched

    def rate(self, machine: str, now_ns: int) -> float:
        """The machine's defects per hour over ``[events] rate_window_s``."""
        return self.store.defect_rate(machine, now_ns, int(self.cfg.rate_window_s * 1e9))
