"""MQTT payloads and topics of the simulator (pure, no network).

Plant mode publishes one JSON object per reading (SPEC §4 "Accepted payloads"):
``{"value": 23.51, "ts": 1767225600123, "unit": "celsius"}``, ``ts`` in epoch ms.

Load mode publishes to synthetic series ``{prefix}/load/eq-{e:04d}/s-{s:02d}`` (10
sensors per equipment, line ``load``). A message holds ``batch`` readings of ONE
series: an object ``{"value", "ts"}`` when batch is 1, else a JSON array of them,
so the topic template ``plant/{line}/{equipment}/{sensor}`` names every item.

Timestamps of one series are strictly increasing (`MsClock`), because the gateway
drops a second reading of a series with the same ``ts`` as a duplicate.

>>> import orjson
>>> orjson.loads(reading_payload(23.514, 1767225600123, "celsius", 2))
{'value': 23.51, 'ts': 1767225600123, 'unit': 'celsius'}
>>> load_topics(12, "plant")[11]
'plant/load/eq-0001/s-01'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import orjson

LOAD_LINE = "load"
LOAD_SENSORS_PER_EQUIPMENT = 10


def reading_payload(value: float, ts_ms: int, unit: str | None = None, decimals: int = 2) -> bytes:
    """One reading as a JSON object: value (rounded), ts (epoch ms int), unit."""
    obj: dict[str, object] = {"value": round(value, decimals), "ts": ts_ms}
    if unit:
        obj["unit"] = unit
    return orjson.dumps(obj)


def batch_payload(values: Sequence[float], ts_ms: Sequence[int]) -> bytes:
    """Readings of one series: a bare object for one reading, else a JSON array."""
    items = [{"value": v, "ts": t} for v, t in zip(values, ts_ms, strict=True)]
    return orjson.dumps(items[0] if len(items) == 1 else items)


def load_series(index: int) -> tuple[str, str]:
    """``(equipment, sensor)`` of synthetic load series `index`."""
    eq, s = divmod(index, LOAD_SENSORS_PER_EQUIPMENT)
    return f"eq-{eq:04d}", f"s-{s:02d}"


def load_topics(series: int, prefix: str = "plant") -> list[str]:
    """The topics of `series` synthetic load series."""
    out = []
    for i in range(series):
        eq, sensor = load_series(i)
        out.append(f"{prefix}/{LOAD_LINE}/{eq}/{sensor}")
    return out


class MsClock:
    """Epoch-millisecond timestamps, strictly increasing per series key.

    Normally the wall clock; when a series publishes faster than 1 per ms its
    timestamps run ahead of the clock by the excess.

    >>> clock = MsClock(lambda: 5_000_000)  # frozen at 5 ms
    >>> [clock.next("a"), clock.next("a"), clock.next("b")]
    [5, 6, 5]
    """

    __slots__ = ("_last", "_time_ns")

    def __init__(self, time_ns: Callable[[], int] = time.time_ns) -> None:
        self._time_ns = time_ns
        self._last: dict[object, int] = {}

    def next(self, key: object) -> int:
        """The next timestamp (ms) for `key`."""
        now = self._time_ns() // 1_000_000
        last = self._last.get(key)
        ts = now if last is None or now > last else last + 1
        self._last[key] = ts
        return ts

    def run(self, key: object, n: int) -> list[int]:
        """`n` consecutive timestamps for `key`, all distinct and increasing."""
        first = self.next(key)
        if n > 1:
            self._last[key] = first + n - 1
        return list(range(first, first + n))
