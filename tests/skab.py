"""SKAB, real labelled pump data: loading, replay through the pure core, and scoring.

The files live in ``../shared/data/skab/`` (GPL-3.0, never copied into this repo); its
README is the contract for the scoring implemented here:

- false alerts per pump-hour: ``raised`` events outside every anomaly window, over the
  hours the labelled files span;
- changepoints alerted: a ``raised``/``escalated`` event within [cp, cp + 60 s], with the
  hits the same number of alerts placed uniformly at random would get;
- point-wise F1 of "an alert is active" (raised/escalated up to the next cleared or
  returned event of the same id), with FAR and MAR;
- false alerts per hour on ``anomaly-free.csv``: every ``raised`` event.

`replay_core()` runs a file through the pipeline's own process stage
(`gateway.daemon.process.Processor`), without I/O; the detection bench
(tests/bench_detect.py) also replays through a real gateway over MQTT.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKAB_DIR", REPO.parent / "shared" / "data" / "skab"))
FREE = "anomaly-free"
CP_WINDOW_S = 60.0
OFFLINE = "offline"


def sensor_name(column: str) -> str:
    """A column name safe for topics and tags (``Volume Flow RateRMS`` -> underscores)."""
    return column.strip().replace(" ", "_")


@dataclass(slots=True)
class SkabFile:
    name: str  # file stem: "valve1_0", "anomaly-free"
    ts: list[int]  # epoch seconds per row
    values: dict[str, list[float]]  # sensor -> value per row
    anomaly: list[int]  # 0/1 per row (all 0 for anomaly-free)
    changepoints: list[int]  # epoch seconds of changepoint rows

    @property
    def equipment(self) -> str:
        return f"skab-{self.name}"

    @property
    def hours(self) -> float:
        return (self.ts[-1] - self.ts[0]) / 3600 if len(self.ts) > 1 else 0.0

    def windows(self) -> list[tuple[int, int]]:
        """Contiguous runs of anomaly = 1, as inclusive (first ts, last ts)."""
        out: list[tuple[int, int]] = []
        start: int | None = None
        for i, a in enumerate(self.anomaly):
            if a and start is None:
                start = self.ts[i]
            if not a and start is not None:
                out.append((start, self.ts[i - 1]))
                start = None
        if start is not None:
            out.append((start, self.ts[-1]))
        return out


def _epoch(s: str) -> int:
    dt = datetime.fromisoformat(s.strip()).replace(tzinfo=UTC)
    return int(dt.timestamp())


def load(name: str, data: Path = DATA) -> SkabFile:
    with open(data / f"{name}.csv", newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    header = rows[0]
    label_cols = {"anomaly", "changepoint"}
    sensors = [c for c in header[1:] if c.strip() not in label_cols]
    idx = {c: header.index(c) for c in header}
    ts: list[int] = []
    values: dict[str, list[float]] = {sensor_name(c): [] for c in sensors}
    anomaly: list[int] = []
    cps: list[int] = []
    for row in rows[1:]:
        if not row:
            continue
        t = _epoch(row[0])
        ts.append(t)
        for c in sensors:
            values[sensor_name(c)].append(float(row[idx[c]]))
        a = int(float(row[idx["anomaly"]])) if "anomaly" in idx else 0
        anomaly.append(a)
        if "changepoint" in idx and int(float(row[idx["changepoint"]])):
            cps.append(t)
    return SkabFile(name, ts, values, anomaly, cps)


def labelled_names(data: Path = DATA) -> list[str]:
    return sorted(p.stem for p in data.glob("*.csv") if p.stem != FREE)


def available(data: Path = DATA) -> bool:
    return (data / "README.md").exists() and any(data.glob("*.csv"))


@dataclass(slots=True, frozen=True)
class Event:
    """One alert event of a replay: what the scoring needs of it."""

    id: str
    state: str
    kind: str
    ts: float  # the reading's time, epoch seconds


@dataclass(slots=True)
class Score:
    files: int = 0
    hours: float = 0.0
    raised: int = 0
    false_raised: int = 0
    changepoints: int = 0
    cp_hits: int = 0
    cp_chance: float = 0.0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, other: Score) -> None:
        for f in ("files", "raised", "false_raised", "changepoints", "cp_hits"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        for f in ("tp", "fp", "tn", "fn"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.hours += other.hours
        self.cp_chance += other.cp_chance
        for k, n in other.by_kind.items():
            self.by_kind[k] = self.by_kind.get(k, 0) + n

    @property
    def false_per_hour(self) -> float:
        return self.false_raised / self.hours if self.hours else 0.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 0.0

    @property
    def far(self) -> float:
        d = self.fp + self.tn
        return self.fp / d if d else 0.0

    @property
    def mar(self) -> float:
        d = self.fn + self.tp
        return self.fn / d if d else 0.0

    def as_dict(self) -> dict[str, float | int | dict[str, int]]:
        return {
            "files": self.files,
            "hours": round(self.hours, 3),
            "raised": self.raised,
            "false_alerts_per_hour": round(self.false_per_hour, 2),
            "changepoints": self.changepoints,
            "changepoints_alerted": self.cp_hits,
            "changepoints_by_chance": round(self.cp_chance, 1),
            "f1": round(self.f1, 3),
            "far": round(self.far, 3),
            "mar": round(self.mar, 3),
            "raised_by_kind": dict(sorted(self.by_kind.items())),
        }


def active_intervals(events: Iterable[Event], end: float) -> list[tuple[float, float]]:
    """[start, stop) of each alert: raised/escalated up to its next cleared/returned event."""
    start: dict[str, float] = {}
    out: list[tuple[float, float]] = []
    for e in sorted(events, key=lambda e: e.ts):
        if e.state in ("raised", "escalated"):
            start.setdefault(e.id, e.ts)
        elif e.state in ("cleared", "returned") and e.id in start:
            out.append((start.pop(e.id), e.ts))
    out.extend((s, end + 1) for s in start.values())
    return out


def score_file(f: SkabFile, events: Sequence[Event]) -> Score:
    evs = [e for e in events if e.kind != OFFLINE]
    s = Score(files=1, hours=f.hours)
    windows = f.windows()
    raised = [e for e in evs if e.state == "raised"]
    s.raised = len(raised)
    for e in raised:
        s.by_kind[e.kind] = s.by_kind.get(e.kind, 0) + 1
    s.false_raised = sum(1 for e in raised if not any(a <= e.ts <= b for a, b in windows))
    hits = [e.ts for e in evs if e.state in ("raised", "escalated")]
    s.changepoints = len(f.changepoints)
    s.cp_hits = sum(1 for cp in f.changepoints if any(cp <= t <= cp + CP_WINDOW_S for t in hits))
    span = max(1.0, float(f.ts[-1] - f.ts[0]))
    p = min(1.0, CP_WINDOW_S / span)
    s.cp_chance = len(f.changepoints) * (1 - (1 - p) ** len(hits))
    intervals = active_intervals(evs, f.ts[-1])
    for t, a in zip(f.ts, f.anomaly, strict=True):
        pred = any(lo <= t < hi for lo, hi in intervals)
        if pred and a:
            s.tp += 1
        elif pred:
            s.fp += 1
        elif a:
            s.fn += 1
        else:
            s.tn += 1
    return s


# ------------------------------------------------------------------- replay


def fields_messages(f: SkabFile, rows_per_message: int = 200) -> list[list[dict[str, float]]]:
    """The file as ``format = "fields"`` arrays of ``{"ts": s, sensor: value, ...}``."""
    msgs: list[list[dict[str, float]]] = []
    for i in range(0, len(f.ts), rows_per_message):
        chunk = []
        for j in range(i, min(i + rows_per_message, len(f.ts))):
            row: dict[str, float] = {"ts": f.ts[j]}
            for sensor, vals in f.values.items():
                row[sensor] = vals[j]
            chunk.append(row)
        msgs.append(chunk)
    return msgs


REPLAY_TOML = """
[validation]
max_age_s = 400000000.0

[[mqtt.subscriptions]]
topic = "skab/+/+"
template = "skab/{line}/{equipment}"
format = "fields"
"""


def replay_core(
    f: SkabFile, extra_toml: str = "", kpis: dict[str, float] | None = None
) -> list[Event]:
    """`f` through the pipeline's process stage (normalize -> detect -> alerts), without
    I/O; the alert transitions it makes, in order. `kpis`, if given, receives the alarm
    management figures: raises annunciated (published), suppressed by reason, seconds
    in flood.

    Time for the alert manager is the gateway's clock in the live path; here it is the
    replay's wall clock too, so time-based escalation behaves as in a fast replay.
    """
    import time
    import tomllib
    from typing import cast

    import orjson

    from adapters.base import BrokerLink
    from gateway.config import Settings
    from gateway.core.model import RawMessage
    from gateway.daemon.metrics import Metrics
    from gateway.daemon.process import Processor
    from gateway.daemon.publish import Publisher

    settings = Settings.model_validate(tomllib.loads(REPLAY_TOML + extra_toml))
    # the publisher only queues here: it never runs, so it needs no broker link
    proc = Processor(settings, Metrics(), Publisher(cast(BrokerLink, None)))
    out: list[Event] = []
    topic = f"skab/line-skab/{f.equipment}"
    for body in fields_messages(f):
        msg = RawMessage(topic, orjson.dumps(body), time.monotonic(), time.time_ns(), "mqtt", 0)
        proc.process([msg])
        assert len(proc.recent_alerts) < (proc.recent_alerts.maxlen or 1), "batch too large"
        out.extend(Event(a.id, a.state, a.kind, a.ts / 1e9) for a in proc.recent_alerts)
        proc.recent_alerts.clear()  # this batch's transitions, in order
    if kpis is not None:
        al = proc.alarms
        kpis["annunciated"] = kpis.get("annunciated", 0) + sum(al.annunciations.values())
        for sup in (proc.detectors.suppressed, proc.alerts.suppressed, al.suppressed):
            for reason, n in sup.items():
                kpis[f"suppressed_{reason}"] = kpis.get(f"suppressed_{reason}", 0) + n
        kpis["flood_s"] = kpis.get("flood_s", 0) + sum(al.flood_seconds.values())
        kpis["fleeting"] = kpis.get("fleeting", 0) + al.fleeting
    return out


def event_from_json(doc: dict[str, object]) -> Event:
    ts = str(doc["ts"])
    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return Event(str(doc["id"]), str(doc["state"]), str(doc["kind"]), dt.timestamp())


def rolling_3sigma(f: SkabFile, window: int = 100, warmup: int = 30) -> list[Event]:
    """The plain baseline: per sensor, active while |x - mean| >= 3 std of the last
    `window` values (all learned), one alert id per excursion."""
    out: list[Event] = []
    for sensor, vals in f.values.items():
        ring: list[float] = []
        active: str | None = None
        n_alert = 0
        for t, x in zip(f.ts, vals, strict=True):
            if len(ring) >= warmup:
                m = sum(ring) / len(ring)
                sd = math.sqrt(sum((v - m) ** 2 for v in ring) / (len(ring) - 1))
                bad = abs(x - m) >= 3 * max(sd, 1e-9)
                if bad and active is None:
                    n_alert += 1
                    active = f"{sensor}-{n_alert}"
                    out.append(Event(active, "raised", "zscore", float(t)))
                elif not bad and active is not None:
                    out.append(Event(active, "cleared", "zscore", float(t)))
                    active = None
            ring.append(x)
            if len(ring) > window:
                ring.pop(0)
    return out
