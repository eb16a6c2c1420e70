"""Untrusted MQTT payloads -> `Reading`s, or `Reject`s saying why not (SPEC §4).

`Normalizer.normalize(msg)` never raises. One module per concern: `normalizer` (the
message level: size, topic route, JSON decode), one per payload format
(`json_format`, `fields_format`), `checks` (the per-reading checks they all end in),
`names` (name and unit rules). Every sensor value a message offers
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

from gateway.core.normalize.names import name_problem
from gateway.core.normalize.normalizer import Normalizer

__all__ = ["Normalizer", "name_problem"]
