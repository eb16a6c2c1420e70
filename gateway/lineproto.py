r"""InfluxDB line protocol for the `readings` and `alerts` measurements (SPEC §7).

Pure and batch-oriented: one call turns a batch into one `bytes` body. The
tag part of a readings line is cached per series, so a steady stream pays
for escaping once per series, not once per reading.

>>> from gateway.model import Reading, Score
>>> r = Reading("press 1", "temperature", 21.5, 1700000000000000000, "celsius",
...             {"line": "line-1"}, "mqtt")
>>> print(ReadingLines().build([(r, Score(0.5, []))]).decode().replace(" value", "\n value"))
readings,equipment=press\ 1,line=line-1,sensor=temperature,source=mqtt,unit=celsius
 value=21.5,z=0.5,anomaly=false 1700000000000000000
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.model import Reading, Score

_TAG_ESCAPE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})


def escape_tag(s: str) -> str:
    """Escape a tag key or value (also used for field keys)."""
    return s.translate(_TAG_ESCAPE)


def quote_field(s: str) -> str:
    """A string field value, double-quoted."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def tag_set(tags: Iterable[tuple[str, str]]) -> str:
    """`,k=v,...` sorted by key, empty values left out (InfluxDB rejects them)."""
    return "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags) if v)


def format_float(v: float) -> str:
    return repr(float(v))


class ReadingLines:
    """Builds `readings` lines; keeps the per-series tag prefix cache."""

    __slots__ = ("_cache", "_max")

    def __init__(self, max_cached: int = 200_000) -> None:
        self._cache: dict[tuple[object, ...], str] = {}
        self._max = max_cached

    def _prefix(self, r: Reading) -> str:
        key = (r.equipment, r.sensor, r.unit, r.source, *r.tags.items())
        p = self._cache.get(key)
        if p is None:
            tags = [("equipment", r.equipment), ("sensor", r.sensor), ("unit", r.unit)]
            tags.append(("source", r.source))
            tags.extend(r.tags.items())
            p = "readings" + tag_set(tags) + " value="
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[key] = p
        return p

    def build(self, batch: Iterable[tuple[Reading, Score]]) -> bytes:
        parts: list[str] = []
        append = parts.append
        prefix = self._prefix
        for r, s in batch:
            z = s.z
            flag = "true" if s.findings else "false"
            if z is None or not -1e300 < z < 1e300:  # also drops NaN / inf
                append(f"{prefix(r)}{r.value!r},anomaly={flag} {r.ts}")
            else:
                append(f"{prefix(r)}{r.value!r},z={z!r},anomaly={flag} {r.ts}")
        return "\n".join(parts).encode()


def alert_line(
    *,
    equipment: str,
    sensor: str,
    kind: str,
    severity: str,
    state: str,
    alert_id: str,
    message: str,
    value: float | None,
    z: float | None,
    threshold: float | None,
    ts_ns: int,
) -> str:
    """One `alerts` point."""
    tags = tag_set(
        [("equipment", equipment), ("sensor", sensor), ("kind", kind), ("severity", severity)]
    )
    fields = [f"state={quote_field(state)}"]
    if value is not None:
        fields.append(f"value={format_float(value)}")
    if z is not None and -1e300 < z < 1e300:
        fields.append(f"z={format_float(z)}")
    if threshold is not None:
        fields.append(f"threshold={format_float(threshold)}")
    fields.append(f"id={quote_field(alert_id)}")
    fields.append(f"message={quote_field(message)}")
    return f"alerts{tags} {','.join(fields)} {ts_ns}"
