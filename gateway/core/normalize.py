"""Untrusted MQTT payloads -> `Reading`s, or `Reject`s saying why not (SPEC §4).

`Normalizer.normalize(msg)` never raises. Every sensor value a message offers
becomes exactly one Reading or one Reject; a problem with the message as a
whole (too large, not JSON, topic fits no template, batch too long) is one
Reject. One bad batch item rejects only that item.

Accepted payloads, by subscription format:

``json``
    ``23.5``; ``{"value": 23.5, "ts": ..., "unit": "celsius", "quality": "good"}``;
    or an array of such objects or numbers. Items may carry ``equipment``,
    ``sensor`` and ``line``, overriding the topic. Other keys are ignored.
``fields``
    ``{"ts": ..., "temperature": 71.2, "vibration": 3.1}`` (or an array of them):
    one reading per key other than ``ts``, ``unit``, ``quality``, ``equipment``
    and ``line``; the key is the sensor (a ``{sensor}`` topic level is ignored).
    ``unit`` may be a string for all fields or an object ``{field: unit}``.
``event``
    Not handled here: rejected as malformed (production events have their own path).

Decisions:

- ``value`` must be a JSON number. A numeric string (``"23.5"``), bool, null,
  array or object is ``invalid_value``. Bare ``NaN``/``Infinity`` and
  out-of-double numbers such as ``1e400`` are not JSON: the message is ``malformed``.
- ``ts`` follows `gateway.core.timestamps.parse_ts`; absent or null means receive
  time. An unparseable ``ts`` is ``malformed``; a parseable one past the int64 ns
  range is ``future_timestamp``/``stale_timestamp`` like any other.
- ``quality`` absent, null or "good" (any case) is good; anything else is ``bad_quality``.
- Null ``equipment``/``sensor``/``line``/``unit`` count as absent.
- Names (equipment, sensor, topic tag levels, ``line``): strings taken as-is
  (not trimmed). Missing, empty or all-whitespace -> ``missing_field``; not a
  string, longer than 256, containing ``+ # /`` or control characters ->
  ``invalid_value``. ``line`` may be "" (no line tag). ``unit``: a string of at
  most 64 printable characters, else ``invalid_value``.
- Per item the first failing check wins, in this order: invalid name/unit/line
  override, bad quality, missing equipment/sensor, missing/invalid value, bad
  ``ts``, physical bounds (``out_of_range``), series cap (``series_limit``),
  ``duplicate``. Rejected readings register no series and no de-dup key.
- Only readings whose ``ts`` came from the payload are de-duplicated.
- A reading without a payload ``ts`` is stamped with the receive time, made unique
  within its series (`SeriesRegistry.stamp`): a store that keeps one point per series
  and timestamp (InfluxDB) keeps every value of a burst, in arrival order.
- Reading.tags dicts are shared between readings (and messages) of one topic:
  read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson

from gateway.config import Subscription, ValidationConfig
from gateway.core.model import (
    BAD_QUALITY,
    DUPLICATE,
    FUTURE_TIMESTAMP,
    INVALID_VALUE,
    MALFORMED,
    MISSING_FIELD,
    OUT_OF_RANGE,
    SERIES_LIMIT,
    STALE_TIMESTAMP,
    TOO_LARGE,
    RawMessage,
    Reading,
    Reject,
)
from gateway.core.series import RecentKeys, SeriesRegistry
from gateway.core.timestamps import TimestampRangeError, parse_ts

Bounds = Callable[[str, str, str], tuple[float | None, float | None]]

MAX_NAME: Final = 256
MAX_UNIT: Final = 64
REJECT_PAYLOAD_MAX: Final = 1024
REJECT_TOPIC_MAX: Final = 1024
ROUTE_CACHE_MAX: Final = 65_536
NAME_CACHE_MAX: Final = 131_072
META_FIELDS: Final = frozenset({"ts", "unit", "quality", "equipment", "line"})

_E11: Final = 100_000_000_000
_E14: Final = 100_000_000_000_000
_E17: Final = 100_000_000_000_000_000
_MISSING: Final = object()
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if type(v) is bool:
        return "a boolean"
    if type(v) is str:
        return "a string"
    if type(v) is list:
        return "an array"
    if type(v) is dict:
        return "an object"
    return f"a {type(v).__name__}"


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def name_problem(v: object, allow_empty: bool = False) -> tuple[str, str] | None:
    """(reason, why) if `v` cannot be an equipment/sensor/tag name, else None.

    >>> name_problem("press-1") is None
    True
    >>> name_problem("a/b")
    ('invalid_value', "contains '+', '#' or '/'")
    """
    if type(v) is not str:
        return INVALID_VALUE, f"is {_kind(v)}, not a string"
    if not v.strip():
        if allow_empty and not v:
            return None
        return MISSING_FIELD, "is empty"
    if len(v) > MAX_NAME:
        return INVALID_VALUE, f"is longer than {MAX_NAME} characters"
    if "/" in v or "+" in v or "#" in v:
        return INVALID_VALUE, "contains '+', '#' or '/'"
    if not v.isprintable():
        return INVALID_VALUE, "contains control characters"
    return None


def _unit_problem(v: object) -> str | None:
    if type(v) is not str:
        return f"is {_kind(v)}, not a string"
    if len(v) > MAX_UNIT:
        return f"is longer than {MAX_UNIT} characters"
    if not v.isprintable():
        return "contains control characters"
    return None


# A route: what a topic means. (reason, detail) are set when the topic is unusable.
_Route = tuple[str, str, bool, str, "str | None", "str | None", dict[str, str]]
_When = tuple[int, str, str]


class Normalizer:
    """Turns `RawMessage`s into readings for one source's subscriptions.

    `bounds(equipment, sensor, line) -> (min, max)` gives physical bounds
    (either may be None); results are cached per (equipment, sensor, line), so
    call `invalidate_bounds()` when the rules change.
    """

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        cfg: ValidationConfig,
        bounds: Bounds | None = None,
        source: str = "mqtt",
    ) -> None:
        self._subs = [(s.compiled(), s.format, s.unit) for s in subscriptions]
        self._single = len(self._subs) == 1
        self.cfg = cfg
        self.source = source
        self.series = SeriesRegistry(cfg.max_series)
        self.recent = RecentKeys(cfg.dedup_window)
        self.internal_errors = 0  # exceptions the safety net turned into rejects
        self._bounds = bounds
        self._bounds_cache: dict[tuple[str, str, str], tuple[float | None, float | None]] = {}
        self._bounds_max = max(ROUTE_CACHE_MAX, 2 * cfg.max_series)
        self._max_payload = cfg.max_payload_bytes
        self._max_batch = cfg.max_batch_items
        self._future_ns = int(cfg.max_future_s * 1e9)
        self._age_ns = int(cfg.max_age_s * 1e9)
        self._routes: dict[object, _Route] = {}
        self._ok_names: set[str] = set()
        self._ok_units: set[str] = set()
        # per-message state, set at the top of normalize()
        self._topic = ""
        self._payload = b""
        self._now = 0
        self._nowt: _When = (0, "", "")
        self._received = 0.0

    # -- public -------------------------------------------------------------

    def normalize(self, msg: RawMessage) -> tuple[list[Reading], list[Reject]]:
        """Readings and rejects for one raw message; never raises."""
        try:
            return self._normalize(msg)
        except Exception as e:  # safety net: a bug must not stop ingest
            self.internal_errors += 1
            topic = getattr(msg, "topic", "")
            payload = getattr(msg, "payload", b"")
            return [], [
                Reject(
                    MALFORMED,
                    f"could not be normalized ({type(e).__name__})",
                    str(topic)[:REJECT_TOPIC_MAX],
                    bytes(payload[:REJECT_PAYLOAD_MAX]) if isinstance(payload, bytes) else b"",
                )
            ]

    def invalidate_bounds(self) -> None:
        """Forget cached physical bounds (after a rules reload)."""
        self._bounds_cache.clear()

    # -- message level ------------------------------------------------------

    def _normalize(self, msg: RawMessage) -> tuple[list[Reading], list[Reject]]:
        payload = msg.payload
        topic = msg.topic
        out: list[Reading] = []
        rej: list[Reject] = []
        self._topic = topic if len(topic) <= REJECT_TOPIC_MAX else topic[:REJECT_TOPIC_MAX]
        cut = payload if len(payload) <= REJECT_PAYLOAD_MAX else payload[:REJECT_PAYLOAD_MAX]
        self._payload = cut if type(cut) is bytes else bytes(cut)
        if len(payload) > self._max_payload:
            self._reject(
                rej, TOO_LARGE, f"payload of {len(payload)} bytes exceeds {self._max_payload}", -1
            )
            return out, rej
        idx = msg.subscription
        key: object = topic if self._single else (idx, topic)
        route = self._routes.get(key)
        if route is None:
            route = self._route(idx, topic)
            if len(topic) <= REJECT_TOPIC_MAX:
                if len(self._routes) >= ROUTE_CACHE_MAX:
                    self._routes.clear()
                self._routes[key] = route
        why, detail, fields, unit, eq, sn, tags = route
        if why:
            self._reject(rej, why, detail, -1)
            return out, rej
        if not payload:
            self._reject(rej, MALFORMED, "payload is empty", -1)
            return out, rej
        try:
            data = _loads(payload)
        except _JSONDecodeError as e:
            self._reject(rej, MALFORMED, f"payload is not valid JSON ({e.msg})", -1)
            return out, rej
        now = self._now = msg.received_ns
        self._nowt = (now, "", "")
        self._received = msg.received
        t = type(data)
        if fields:
            if t is dict:
                self._fields(out, rej, data, eq, tags, unit, -1)
            elif t is list:
                if len(data) > self._max_batch:
                    self._too_long(rej, len(data))
                    return out, rej
                for i, item in enumerate(data):
                    if type(item) is dict:
                        self._fields(out, rej, item, eq, tags, unit, i)
                    else:
                        self._reject(rej, MALFORMED, f"is {_kind(item)}, not an object", i)
            else:
                self._reject(rej, MALFORMED, f"fields payload is {_kind(data)}, not an object", -1)
            return out, rej
        if t is dict:
            self._obj(out, rej, data, eq, sn, tags, unit, -1)
        elif t is float or t is int:
            self._emit(out, rej, eq, sn, tags, data, unit, self._nowt, False, -1, None)
        elif t is list:
            if len(data) > self._max_batch:
                self._too_long(rej, len(data))
                return out, rej
            nowt = self._nowt
            for i, item in enumerate(data):
                ti = type(item)
                if ti is dict:
                    self._obj(out, rej, item, eq, sn, tags, unit, i)
                elif ti is float or ti is int:
                    self._emit(out, rej, eq, sn, tags, item, unit, nowt, False, i, None)
                elif ti is list:
                    self._reject(rej, MALFORMED, "is an array, not an object or number", i)
                else:
                    self._reject(rej, INVALID_VALUE, f"value is {_kind(item)}, not a number", i)
        else:
            self._reject(rej, INVALID_VALUE, f"value is {_kind(data)}, not a number", -1)
        return out, rej

    def _route(self, idx: int, topic: str) -> _Route:
        subs = self._subs
        n = len(subs)
        order = [idx, *(j for j in range(n) if j != idx)] if 0 <= idx < n else list(range(n))
        for j in order:
            template, fmt, unit = subs[j]
            m = template.match(topic)
            if m is None:
                continue
            if fmt == "event":
                return (MALFORMED, "event format not handled here", False, "", None, None, {})
            eq = m.pop("equipment", None)
            sn = m.pop("sensor", None)
            for name, v in (("equipment", eq), ("sensor", sn), *m.items()):
                if v is None:
                    continue
                p = name_problem(v)
                if p is not None:
                    return (p[0], f"topic level {name} {p[1]}", False, "", None, None, {})
            return ("", "", fmt == "fields", unit, eq, sn, m)
        return (MALFORMED, "topic matches no subscription template", False, "", None, None, {})

    def _too_long(self, rej: list[Reject], n: int) -> None:
        self._reject(rej, TOO_LARGE, f"batch of {n} items exceeds {self._max_batch}", -1)

    def _reject(
        self, rej: list[Reject], reason: str, detail: str, i: int, key: str | None = None
    ) -> None:
        if key is not None:
            detail = f"field {_short(key)}: {detail}"
        if i >= 0:
            detail = f"item {i}: {detail}"
        rej.append(Reject(reason, detail, self._topic, self._payload))

    # -- item level ---------------------------------------------------------

    def _name(self, v: object, what: str, allow_empty: bool = False) -> tuple[str, str] | None:
        if type(v) is str and v in self._ok_names:
            return None
        p = name_problem(v, allow_empty)
        if p is not None:
            return p[0], f"{what} {p[1]}"
        if len(self._ok_names) < NAME_CACHE_MAX:
            self._ok_names.add(v)  # type: ignore[arg-type]
        return None

    def _unit(self, v: object) -> str | None:
        if type(v) is str and v in self._ok_units:
            return None
        p = _unit_problem(v)
        if p is not None:
            return f"unit {p}"
        if len(self._ok_units) < NAME_CACHE_MAX:
            self._ok_units.add(v)  # type: ignore[arg-type]
        return None

    def _line(self, tags: dict[str, str], v: object) -> dict[str, str] | tuple[str, str]:
        if v == tags.get("line"):
            return tags
        if v != "":
            p = self._name(v, "line")
            if p is not None:
                return p
            return {**tags, "line": v}  # type: ignore[dict-item]
        if type(v) is not str:
            return INVALID_VALUE, f"line is {_kind(v)}, not a string"
        return {k: x for k, x in tags.items() if k != "line"}

    def _when(self, ts: object) -> _When:
        """(ts ns, "", "") or (0, reason, detail) for a payload timestamp."""
        if type(ts) is int and -_E17 < ts < _E17:  # epoch s/ms/µs; see gateway.core.timestamps
            a = ts if ts >= 0 else -ts
            tns = ts * 1_000_000_000 if a < _E11 else ts * 1_000_000 if a < _E14 else ts * 1_000
        else:
            try:
                tns = parse_ts(ts)
            except TimestampRangeError as e:
                return 0, FUTURE_TIMESTAMP if e.future else STALE_TIMESTAMP, str(e)
            except ValueError as e:
                return 0, MALFORMED, str(e)[:120]
        now = self._now
        if tns > now + self._future_ns:
            return (
                0,
                FUTURE_TIMESTAMP,
                f"ts is {(tns - now) / 1e9:.0f} s ahead of the gateway clock",
            )
        if tns < now - self._age_ns:
            return 0, STALE_TIMESTAMP, f"ts is {(now - tns) / 1e9:.0f} s old"
        return tns, "", ""

    def _obj(
        self,
        out: list[Reading],
        rej: list[Reject],
        d: dict[str, Any],
        eq: str | None,
        sn: str | None,
        tags: dict[str, str],
        unit: str,
        i: int,
    ) -> None:
        """One ``json`` object: {"value", "ts", "unit", "quality", overrides}."""
        value = d.get("value", _MISSING)
        ts = d.get("ts")
        if len(d) > (value is not _MISSING) + (ts is not None):  # overrides, unit, quality
            v = d.get("equipment")
            if v is not None:
                p = self._name(v, "equipment")
                if p is not None:
                    return self._reject(rej, p[0], p[1], i)
                eq = v
            v = d.get("sensor")
            if v is not None:
                p = self._name(v, "sensor")
                if p is not None:
                    return self._reject(rej, p[0], p[1], i)
                sn = v
            v = d.get("line")
            if v is not None:
                lt = self._line(tags, v)
                if type(lt) is tuple:
                    return self._reject(rej, lt[0], lt[1], i)
                tags = lt  # type: ignore[assignment]
            v = d.get("unit")
            if v is not None:
                up = self._unit(v)
                if up is not None:
                    return self._reject(rej, INVALID_VALUE, up, i)
                unit = v
            q = d.get("quality")
            if q is not None and q != "good" and not (type(q) is str and q.lower() == "good"):
                return self._reject(rej, BAD_QUALITY, f"quality is {_short(q)}", i)
        if value is _MISSING:
            if eq is None or sn is None:  # report the name first, as _emit would
                what = "equipment" if eq is None else "sensor"
                return self._reject(rej, MISSING_FIELD, f"no {what} in topic or payload", i)
            return self._reject(rej, MISSING_FIELD, "no value in payload", i)
        if ts is None:
            self._emit(out, rej, eq, sn, tags, value, unit, self._nowt, False, i, None)
        else:
            self._emit(out, rej, eq, sn, tags, value, unit, self._when(ts), True, i, None)

    def _fields(
        self,
        out: list[Reading],
        rej: list[Reject],
        d: dict[str, Any],
        eq: str | None,
        tags: dict[str, str],
        unit: str,
        i: int,
    ) -> None:
        """One ``fields`` object: every non-metadata key is a sensor."""
        n = len(d) - sum(1 for k in META_FIELDS if k in d)
        if n == 0:
            return self._reject(rej, MISSING_FIELD, "no sensor fields", i)
        if n > self._max_batch:
            return self._reject(rej, TOO_LARGE, f"{n} fields exceed {self._max_batch}", i)
        err: tuple[str, str] | None = None
        units: dict[str, Any] | None = None
        v = d.get("equipment")
        if v is not None:
            err = self._name(v, "equipment")
            eq = v
        v = d.get("line")
        if v is not None and err is None:
            lt = self._line(tags, v)
            if type(lt) is tuple:
                err = lt
            else:
                tags = lt  # type: ignore[assignment]
        v = d.get("unit")
        if v is not None and err is None:
            if type(v) is dict:
                units = v
            else:
                up = self._unit(v)
                if up is not None:
                    err = INVALID_VALUE, up
                else:
                    unit = v
        q = d.get("quality")
        if (
            err is None
            and q is not None
            and q != "good"
            and not (type(q) is str and q.lower() == "good")
        ):
            err = BAD_QUALITY, f"quality is {_short(q)}"
        ts = d.get("ts")
        when = self._nowt if ts is None else self._when(ts)
        dedup = ts is not None
        emit = self._emit
        for k, value in d.items():
            if k in META_FIELDS:
                continue
            if err is not None:
                self._reject(rej, err[0], err[1], i, k)
                continue
            p = self._name(k, "sensor name")
            if p is not None:
                self._reject(rej, p[0], p[1], i, k)
                continue
            u = unit
            if units is not None:
                u = units.get(k, unit)
                if u is None:
                    u = unit
                up = self._unit(u)
                if up is not None:
                    self._reject(rej, INVALID_VALUE, up, i, k)
                    continue
            emit(out, rej, eq, k, tags, value, u, when, dedup, i, k)

    def _emit(
        self,
        out: list[Reading],
        rej: list[Reject],
        eq: str | None,
        sn: str | None,
        tags: dict[str, str],
        value: object,
        unit: str,
        when: _When,
        dedup: bool,
        i: int,
        key: str | None,
    ) -> None:
        """The per-reading checks shared by every shape; appends to `out` or `rej`."""
        if eq is None:
            return self._reject(rej, MISSING_FIELD, "no equipment in topic or payload", i, key)
        if sn is None:
            return self._reject(rej, MISSING_FIELD, "no sensor in topic or payload", i, key)
        tv = type(value)
        if tv is float:
            if value - value != 0.0:  # type: ignore[operator]
                return self._reject(rej, INVALID_VALUE, "value is NaN or infinite", i, key)
            fv: float = value  # type: ignore[assignment]
        elif tv is int:
            try:
                fv = float(value)  # type: ignore[arg-type]
            except OverflowError:
                return self._reject(rej, INVALID_VALUE, "value is too large for a float", i, key)
        else:
            return self._reject(
                rej, INVALID_VALUE, f"value is {_kind(value)}, not a number", i, key
            )
        tns, why, detail = when
        if why:
            return self._reject(rej, why, detail, i, key)
        bounds = self._bounds
        if bounds is not None:
            bkey = (eq, sn, tags.get("line", ""))
            b = self._bounds_cache.get(bkey)
            if b is None:
                b = self._lookup_bounds(bounds, bkey)
            lo, hi = b
            if (lo is not None and fv < lo) or (hi is not None and fv > hi):
                return self._reject(
                    rej, OUT_OF_RANGE, f"value {fv:g} outside physical bounds [{lo}, {hi}]", i, key
                )
        if not self.series.admit(eq, sn):
            return self._reject(
                rej, SERIES_LIMIT, f"new series {eq}/{sn} exceeds max_series", i, key
            )
        if dedup:
            if self.recent.seen_before((eq, sn, tns)):
                return self._reject(rej, DUPLICATE, f"{eq}/{sn} at ts {tns} seen before", i, key)
        else:  # receive time: unique within the series, or InfluxDB keeps only the last
            tns = self.series.stamp(eq, sn, tns)
        out.append(Reading(eq, sn, fv, tns, unit, tags, self.source, self._received))

    def _lookup_bounds(
        self, bounds: Bounds, bkey: tuple[str, str, str]
    ) -> tuple[float | None, float | None]:
        try:
            lo, hi = bounds(*bkey)
        except Exception:  # a broken rule lookup must not reject data
            self.internal_errors += 1
            lo = hi = None
        cache = self._bounds_cache
        if len(cache) >= self._bounds_max:
            cache.clear()
        b = cache[bkey] = (lo, hi)
        return b
