r"""InfluxDB line protocol for the `readings` and `alerts` measurements (SPEC §7).

Pure and batch-oriented: one call turns a batch into one `bytes` body. The
tag part of a readings line is cached per series, so a steady stream pays
for escaping once per series, not once per reading.

>>> from gateway.core.model import Reading, Score
>>> r = Reading("press 1", "temperature", 21.5, 1700000000000000000, "celsius",
...             {"line": "line-1"}, "mqtt")
>>> print(ReadingLines().build([(r, Score(0.5, []))]).decode().replace(" value", "\n value"))
readings,equipment=press\ 1,line=line-1,sensor=temperature,source=mqtt,unit=celsius
 value=21.5,z=0.5,anomaly=false 1700000000000000000
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator

from gateway.core.model import Reading, Score
from gateway.core.series import CachePruner

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
    """Builds `readings` lines; keeps the per-series tag prefix cache.

    ``anomaly`` is true when the reading has a finding (it is part of an alert) or its
    |z| reached `z_threshold` (an anomalous reading, whether or not it raised an alert).
    """

    __slots__ = ("_cache", "_max", "_pruner", "_thr")

    def __init__(self, max_cached: int = 200_000, z_threshold: float = 3.0) -> None:
        self._cache: dict[tuple[object, ...], str] = {}
        self._max = max_cached
        self._thr = z_threshold
        self._pruner = CachePruner()

    def prune(self, series: Container[tuple[str, str]], budget: int) -> int:
        """Drop cached prefixes of series not in `series`, `budget` looked at per call."""
        return self._pruner.step(self._cache, series, budget)

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
        thr = self._thr
        for r, s in batch:
            z = s.z
            flag = "true" if s.findings or (z is not None and (z >= thr or z <= -thr)) else "false"
            if z is None or not -1e300 < z < 1e300:  # also drops NaN / inf
                append(f"{prefix(r)}{r.value!r},anomaly={flag} {r.ts}")
            else:
                append(f"{prefix(r)}{r.value!r},z={z!r},anomaly={flag} {r.ts}")
        return "\n".join(parts).encode()


def _unescape_split(head: bytes) -> list[str]:
    """`k=v` pieces of an escaped tag section, unescaped (the slow path: a backslash)."""
    pieces: list[str] = []
    cur = bytearray()
    i, n = 0, len(head)
    while i < n:
        c = head[i]
        if c == 0x5C and i + 1 < n:  # backslash: the next byte is literal ("\n": newline)
            nxt = head[i + 1]
            cur.append(0x0A if nxt == 0x6E else nxt)
            i += 2
            continue
        if c == 0x2C:  # unescaped comma
            pieces.append(cur.decode("utf-8", "replace"))
            cur = bytearray()
        else:
            cur.append(c)
        i += 1
    pieces.append(cur.decode("utf-8", "replace"))
    return pieces


def reading_keys(body: bytes) -> Iterator[tuple[str, str, int]]:
    r"""(equipment, sensor, ts) of every `readings` line in a body `ReadingLines` built.

    Used at start-up to rebuild the duplicate memory from the spool. Lines it cannot
    read are skipped: the worst case is a redelivery stored twice, never a loss.

    >>> from gateway.core.model import Reading, Score
    >>> r = Reading("press 1", "t,c=x", 1.5, 17, "", {"line": "l 1"})
    >>> body = ReadingLines().build([(r, Score(None, []))])
    >>> list(reading_keys(body + b'\nalerts,equipment=x state="raised" 18'))
    [('press 1', 't,c=x', 17)]
    >>> list(reading_keys(b"readings,equipment=a,sensor=b value=1.0 42"))
    [('a', 'b', 42)]
    """
    for line in body.split(b"\n"):
        if not line.startswith(b"readings,"):
            continue
        sp = line.rfind(b" ")
        try:
            ts = int(line[sp + 1 :])
        except ValueError:
            continue
        if b"\\" in line:
            end = 0
            while True:  # the first space that is not escaped ends the tags
                end = line.find(b" ", end)
                if end <= 0 or line[end - 1] != 0x5C:
                    break
                end += 1
            pieces = _unescape_split(line[9:end])
        else:
            pieces = line[9 : line.find(b" ")].decode("utf-8", "replace").split(",")
        eq = sn = None
        for p in pieces:
            if p.startswith("equipment="):
                eq = p[10:]
            elif p.startswith("sensor="):
                sn = p[7:]
        if eq is not None and sn is not None:
            yield eq, sn, ts


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
    priority: str = "",
    suppressed: str | None = None,
) -> str:
    """One `alerts` point; `suppressed` says why it was not annunciated (if it was not)."""
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
    if priority:
        fields.append(f"priority={quote_field(priority)}")
    if suppressed is not None:
        fields.append(f"suppressed={quote_field(suppressed)}")
    return f"alerts{tags} {','.join(fields)} {ts_ns}"


def audit_line(
    *, action: str, equipment: str, alert_id: str, by: str, reason: str, ts_ns: int
) -> str:
    """One `alarm_audit` point: an operator's ack, shelve, unshelve or out-of-service."""
    tags = tag_set([("action", action), ("equipment", equipment)])
    fields = f"id={quote_field(alert_id)},by={quote_field(by)},reason={quote_field(reason)}"
    return f"alarm_audit{tags} {fields} {ts_ns}"
