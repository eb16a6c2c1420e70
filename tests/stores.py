"""The two real stores the exactness tests count in, behind one small read API.

A point means what each store makes of it:

- VictoriaMetrics keeps every sample it is sent, even two with the same series and
  timestamp, and keeps timestamps in milliseconds (ns input is floored).
- InfluxDB 1.x keeps one point per measurement + tag set + timestamp (ns): a second
  write with the same identity overwrites the first. So a count in InfluxDB is a count
  of distinct points, and a reading that shares its series and timestamp with another
  is lost there while VictoriaMetrics still shows it.

`Store.points()` returns what the store keeps, `Store.count()` how many points it
keeps (raw samples for VictoriaMetrics), `Store.stored()` distinct (series, timestamp)
pairs and the samples beyond them. The gateway writes the v2 API to VictoriaMetrics and
v1 ``/write`` to InfluxDB 1.x (`gateway_influx`).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, NamedTuple, Protocol

from tests.servers import InfluxDB1, VictoriaMetrics

MEASUREMENT = "readings"


class Point(NamedTuple):
    tags: dict[str, str]  # equipment, sensor, line, source, unit, ...: non-empty ones only
    ts_ns: int  # VictoriaMetrics: ms * 1e6
    value: float

    @property
    def ts_ms(self) -> int:
        return self.ts_ns // 1_000_000

    @property
    def series(self) -> str:
        return f"{self.tags.get('equipment')}/{self.tags.get('sensor')}"


class Store(Protocol):
    kind: str
    url: str
    gateway_influx: dict[str, Any]  # the gateway's [influx] keys for this store

    def points(self, field: str = "value", **tags: str) -> list[Point]: ...

    def count(self, **tags: str) -> int: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...


def stored(store: Store, **tags: str) -> tuple[int, int, Counter[str]]:
    """(distinct (series, ts) points, samples beyond those, distinct points per series)."""
    seen: set[tuple[tuple[tuple[str, str], ...], int]] = set()
    raw = 0
    per_series: Counter[str] = Counter()
    for p in store.points(**tags):
        raw += 1
        key = (tuple(sorted(p.tags.items())), p.ts_ns)
        if key not in seen:
            seen.add(key)
            per_series[p.series] += 1
    return len(seen), raw - len(seen), per_series


def wait_count(store: Store, n: int, timeout: float = 15.0, **tags: str) -> int:
    """Poll until the store keeps at least `n` points matching `tags`; return the count."""
    deadline = time.monotonic() + timeout
    while True:
        got = store.count(**tags)
        if got >= n:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{store.kind} {tags}: {got} points after {timeout}s, wanted {n}")
        time.sleep(0.1)


def by_sensor(points: list[Point], ms: bool = True) -> dict[str, list[tuple[int, float]]]:
    """{sensor: sorted [(ts, value)]}, ts in ms (what both stores can be compared in)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for p in points:
        out.setdefault(p.tags["sensor"], []).append((p.ts_ms if ms else p.ts_ns, p.value))
    return {k: sorted(v) for k, v in out.items()}


class VictoriaStore:
    kind = "victoria"

    def __init__(self, vm: VictoriaMetrics) -> None:
        self.server = vm
        self.url = vm.url
        self.gateway_influx: dict[str, Any] = {"url": vm.url}

    def points(self, field: str = "value", **tags: str) -> list[Point]:
        vm = self.server
        vm.force_flush()
        out: list[Point] = []
        for s in vm.export(vm.selector(f"{MEASUREMENT}_{field}", **tags)):
            labels = {k: v for k, v in s["metric"].items() if k != "__name__"}
            for ts, v in zip(s["timestamps"], s["values"], strict=True):
                out.append(Point(labels, int(ts) * 1_000_000, float(v)))
        return out

    def count(self, **tags: str) -> int:
        vm = self.server
        vm.force_flush()
        return vm.count(vm.selector(f"{MEASUREMENT}_value", **tags))

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


def _quote_ident(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxStore:
    kind = "influxdb1"

    def __init__(self, influx: InfluxDB1, db: str) -> None:
        self.server = influx
        self.db = db
        self.url = influx.url
        influx.create_database(db)
        self.gateway_influx: dict[str, Any] = {"url": influx.url, "api": "v1", "database": db}

    def _where(self, tags: dict[str, str]) -> str:
        if not tags:
            return ""
        return " WHERE " + " AND ".join(
            f"{_quote_ident(k)} = {_quote_str(v)}" for k, v in sorted(tags.items())
        )

    def points(self, field: str = "value", **tags: str) -> list[Point]:
        q = f"SELECT {_quote_ident(field)} FROM {MEASUREMENT}{self._where(tags)} GROUP BY *"
        out: list[Point] = []
        for stmt in self.server.query(q, self.db)["results"]:
            for s in stmt.get("series", []):
                labels = {k: v for k, v in (s.get("tags") or {}).items() if v}
                for ts, v in s["values"]:
                    if v is not None:
                        out.append(Point(labels, int(ts), float(v)))
        return out

    def count(self, **tags: str) -> int:
        q = f"SELECT COUNT(value) FROM {MEASUREMENT}{self._where(tags)}"
        total = 0
        for stmt in self.server.query(q, self.db)["results"]:
            for s in stmt.get("series", []):
                total += sum(int(row[1]) for row in s["values"])
        return total

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


def make_store(server: VictoriaMetrics | InfluxDB1, db: str = "") -> Store:
    if isinstance(server, VictoriaMetrics):
        return VictoriaStore(server)
    return InfluxStore(server, db)
