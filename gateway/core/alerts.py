"""The alert state machine (SPEC §6). Pure: no I/O, time comes from the caller.

One alert per (equipment, sensor, kind) at a time. Every method that changes
an alert returns the transitions as `Alert` snapshots (copies) for the
publisher; repeated anomalies on an active alert update it silently.

States: ``raised`` -> ``escalated`` (severity rose, or still ``raised`` after
`escalate_after_s`) -> ``acknowledged`` (by command) -> ``cleared``
(`clear_after` consecutive normal readings, or back online for ``offline``).
A severity rise on an ``acknowledged`` alert escalates it again.

Severity never goes down while an alert is active: it is the worst seen.

Why one module of ~550 lines: every transition (readings, offline, defect rate,
equipment episodes, acks, the escalation tick) reads and writes the same table of
active alerts and the equipment status derived from it; split apart they would each
need that table's internals. Alarm management (shelving, flood, chattering) is
meant to go beside it, not into it.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from gateway.config import AlertsConfig
from gateway.core.model import (
    DEFECT_RATE,
    DRIFT,
    EQUIPMENT_SENSOR,
    MULTIVARIATE,
    OFFLINE,
    SEVERITY_RANK,
    Reading,
    Score,
)

__all__ = [
    "ACKNOWLEDGED",
    "ACTIVE_STATES",
    "ANOMALY",
    "CLEARED",
    "ESCALATED",
    "OFFLINE_STATUS",
    "ONLINE",
    "RAISED",
    "Alert",
    "AlertManager",
    "iso_ms",
]

RAISED: Final = "raised"
ESCALATED: Final = "escalated"
ACKNOWLEDGED: Final = "acknowledged"
CLEARED: Final = "cleared"
ACTIVE_STATES: Final = (RAISED, ESCALATED, ACKNOWLEDGED)

# Equipment status values for `status/{equipment}`.
ONLINE: Final = "online"
OFFLINE_STATUS: Final = "offline"
ANOMALY: Final = "anomaly"

# Kinds of the one episode alert per equipment (gateway.core.detectors.equipment).
EPISODE_KINDS: Final = (MULTIVARIATE, DRIFT)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SNAPSHOT_VERSION: Final = 1


def iso_ms(ts_ns: int) -> str:
    """Nanoseconds since the epoch -> ``2026-11-22T10:00:00.123Z`` (UTC, truncated to ms)."""
    sec, ms = divmod(ts_ns // 1_000_000, 1000)
    dt = _EPOCH + timedelta(seconds=sec)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms:03d}Z"


def _iso_s(epoch_s: float) -> str:
    """Float epoch seconds -> ISO 8601 with ms, rounded to the nearest ms."""
    return iso_ms(round(epoch_s * 1000) * 1_000_000)


def _ns(epoch_s: float) -> int:
    return round(epoch_s * 1000) * 1_000_000


@dataclass(slots=True)
class Alert:
    """One alert. `ts` is the ns timestamp of the reading that last updated it
    (gateway time for offline/online and other reading-less transitions);
    `raised_at` / `updated_at` are gateway epoch seconds."""

    id: str
    equipment: str
    sensor: str
    line: str
    kind: str
    severity: str
    state: str
    value: float | None
    z: float | None
    mean: float | None
    std: float | None
    threshold: float | None
    ts: int
    raised_at: float
    updated_at: float
    message: str
    acknowledged_by: str | None = None

    def to_event(self) -> dict[str, Any]:
        """The SPEC §6 alert event JSON object."""
        event: dict[str, Any] = {
            "id": self.id,
            "equipment": self.equipment,
            "sensor": self.sensor,
            "line": self.line,
            "kind": self.kind,
            "severity": self.severity,
            "state": self.state,
            "value": self.value,
            "z": self.z,
            "mean": self.mean,
            "std": self.std,
            "threshold": self.threshold,
            "ts": iso_ms(self.ts),
            "raised_at": _iso_s(self.raised_at),
            "message": self.message,
        }
        if self.acknowledged_by is not None:
            event["acknowledged_by"] = self.acknowledged_by
        return event

    def copy(self) -> Alert:
        return dataclasses.replace(self)


def _rank(severity: str) -> int:
    return SEVERITY_RANK.get(severity, 0)


def _fmt(v: float) -> str:
    return f"{v:g}"


class AlertManager:
    """Active alerts and equipment status. Not thread-safe; one owner task.

    Pipeline use per reading: ``seen(eq, ts)``, ``online(eq, now)`` (cheap when
    the equipment is not offline), ``observe(r, score, now)``. Periodically:
    ``tick(now)`` and ``drain_status_changes()``.
    """

    __slots__ = ("_by_id", "_cfg", "_dirty", "_last_seen", "_normals", "_published", "_series")

    def __init__(self, cfg: AlertsConfig) -> None:
        self._cfg = cfg
        # equipment -> sensor -> kind -> live alert. Empty dicts are removed so
        # a missing equipment key means "no active alert" (the fast path).
        self._series: dict[str, dict[str, dict[str, Alert]]] = {}
        self._by_id: dict[str, Alert] = {}
        self._normals: dict[str, int] = {}  # alert id -> consecutive normal readings
        self._last_seen: dict[str, int] = {}  # equipment -> newest reading ts (ns)
        self._published: dict[str, str] = {}  # equipment -> status last drained
        self._dirty: dict[str, None] = {}  # equipment whose status may have changed

    # -- readings ---------------------------------------------------------

    def observe(self, r: Reading, score: Score, now: float) -> list[Alert]:
        """Raise, update, escalate or clear this series' alerts for one reading."""
        findings = score.findings
        eqd = self._series.get(r.equipment)
        if not findings:
            if eqd is None:
                return []
            kinds = eqd.get(r.sensor)
            if kinds is None:
                return []
            return self._count_normal(r, score, kinds, (), now)

        out: list[Alert] = []
        kinds = eqd.get(r.sensor) if eqd is not None else None
        seen_kinds: list[str] = []
        for f in findings:
            seen_kinds.append(f.kind)
            a = kinds.get(f.kind) if kinds is not None else None
            if a is None:
                a = Alert(
                    id=str(uuid.uuid4()),
                    equipment=r.equipment,
                    sensor=r.sensor,
                    line=r.line,
                    kind=f.kind,
                    severity=f.severity,
                    state=RAISED,
                    value=f.value,
                    z=f.z,
                    mean=f.mean,
                    std=f.std,
                    threshold=f.threshold,
                    ts=r.ts,
                    raised_at=now,
                    updated_at=now,
                    message=f.message,
                )
                kinds = self._add(a)
                out.append(a.copy())
                continue
            a.value = f.value
            a.z = f.z
            a.mean = f.mean
            a.std = f.std
            a.threshold = f.threshold
            a.ts = r.ts
            a.message = f.message
            a.updated_at = now
            self._normals[a.id] = 0
            if _rank(f.severity) > _rank(a.severity):
                a.severity = f.severity
                a.state = ESCALATED
                out.append(a.copy())
        if kinds is not None and len(kinds) > 1:  # other kinds active: count them normal
            out.extend(self._count_normal(r, score, kinds, seen_kinds, now))
        return out

    def _count_normal(
        self,
        r: Reading,
        score: Score,
        kinds: dict[str, Alert],
        skip: list[str] | tuple[()],
        now: float,
    ) -> list[Alert]:
        """One normal reading for every active kind not in `skip` (offline excluded)."""
        out: list[Alert] = []
        clear_after = self._cfg.clear_after
        normals = self._normals
        done: list[Alert] = []
        for kind, a in kinds.items():
            if kind == OFFLINE or kind in skip:
                continue
            n = normals.get(a.id, 0) + 1
            normals[a.id] = n
            if n >= clear_after:
                done.append(a)
        for a in done:
            a.value = r.value
            a.z = score.z
            msg = f"{r.sensor} back to normal ({_fmt(r.value)}) for {clear_after} readings"
            out.append(self._clear(a, r.ts, now, msg))
        return out

    # -- offline / online -------------------------------------------------

    def offline(self, equipment: str, line: str, now: float, last_seen_ns: int) -> list[Alert]:
        """Raise the equipment's ``offline`` alert (no-op if already offline)."""
        if self._offline_alert(equipment) is not None:
            return []
        if last_seen_ns > self._last_seen.get(equipment, -1):
            self._last_seen[equipment] = last_seen_ns
        if last_seen_ns > 0:
            silent: float | None = max(0.0, now - last_seen_ns / 1e9)
        else:
            silent = None
        secs = int(silent if silent is not None else self._cfg.offline_after_s)
        return self._raise_for_equipment(
            equipment,
            line,
            OFFLINE,
            "high",
            silent,
            self._cfg.offline_after_s,
            now,
            f"{equipment} sent nothing for {secs} s",
        )

    def _raise_for_equipment(
        self,
        equipment: str,
        line: str,
        kind: str,
        severity: str,
        value: float | None,
        threshold: float | None,
        now: float,
        message: str,
        ts: int | None = None,
    ) -> list[Alert]:
        """Raise an equipment-level alert (sensor ``*``): offline, defect_rate, episodes.

        `ts` is the reading's time where a reading raised it, else the gateway's.
        """
        a = Alert(
            id=str(uuid.uuid4()),
            equipment=equipment,
            sensor=EQUIPMENT_SENSOR,
            line=line,
            kind=kind,
            severity=severity,
            state=RAISED,
            value=value,
            z=None,
            mean=None,
            std=None,
            threshold=threshold,
            ts=_ns(now) if ts is None else ts,
            raised_at=now,
            updated_at=now,
            message=message,
        )
        self._add(a)
        return [a.copy()]

    def online(self, equipment: str, now: float) -> list[Alert]:
        """Clear the equipment's ``offline`` alert, if any. Cheap when there is none."""
        a = self._offline_alert(equipment)
        if a is None:
            return []
        return [self._clear(a, _ns(now), now, f"{equipment} back online")]

    def defect_rate(
        self, equipment: str, line: str, rate: float, threshold: float, now: float
    ) -> list[Alert]:
        """Raise (rate >= threshold), update, or clear (rate below) the equipment's
        ``defect_rate`` alert; `rate` and `threshold` are defects per hour."""
        eqd = self._series.get(equipment)
        kinds = eqd.get(EQUIPMENT_SENSOR) if eqd is not None else None
        a = kinds.get(DEFECT_RATE) if kinds is not None else None
        msg = f"{equipment} defect rate {rate:.2f}/h"
        if rate >= threshold:
            if a is not None:
                a.value = rate
                a.updated_at = now
                a.message = f"{msg} >= {_fmt(threshold)}/h"
                return []
            return self._raise_for_equipment(
                equipment,
                line,
                DEFECT_RATE,
                "medium",
                rate,
                threshold,
                now,
                f"{msg} >= {_fmt(threshold)}/h",
            )
        if a is None:
            return []
        a.value = rate
        return [self._clear(a, _ns(now), now, f"{msg}, back below {_fmt(threshold)}/h")]

    def episode(
        self, equipment: str, line: str, ep: tuple[str, str, str, str, float, str, int], now: float
    ) -> list[Alert]:
        """Apply one equipment-episode transition (`detectors.equipment.Episode`).

        One episode alert per equipment (sensor ``*``), of kind ``multivariate`` or
        ``drift`` (what started it); ``raise`` while one is active updates it,
        ``escalate`` raises its severity (a further level shift), ``clear`` ends it.
        The message names the sensors it is about; `ts` is the reading's time.
        """
        action, kind, severity, _sensor, value, message, ts = ep
        eqd = self._series.get(equipment)
        kinds = eqd.get(EQUIPMENT_SENSOR) if eqd is not None else None
        a = None
        if kinds is not None:
            a = kinds.get(EPISODE_KINDS[0]) or kinds.get(EPISODE_KINDS[1])
        if action == "clear":
            if a is None:
                return []
            a.value = value
            return [self._clear(a, ts, now, f"{equipment}: {message}")]
        text = f"{equipment}: {message}"
        if a is None:
            if action != "raise":
                return []
            return self._raise_for_equipment(
                equipment, line, kind, severity, value, None, now, text, ts
            )
        a.value, a.ts, a.updated_at, a.message = value, ts, now, text
        if _rank(severity) > _rank(a.severity):
            a.severity = severity
            a.state = ESCALATED
            return [a.copy()]
        return []

    def _clear(self, a: Alert, ts: int, now: float, message: str) -> Alert:
        """End an active alert: the `cleared` transition, and it is no longer active."""
        a.state = CLEARED
        a.ts = ts
        a.updated_at = now
        a.message = message
        self._remove(a)
        return a.copy()

    def is_offline(self, equipment: str) -> bool:
        return self._offline_alert(equipment) is not None

    def _offline_alert(self, equipment: str) -> Alert | None:
        eqd = self._series.get(equipment)
        if eqd is None:
            return None
        kinds = eqd.get(EQUIPMENT_SENSOR)
        return None if kinds is None else kinds.get(OFFLINE)

    # -- time and commands ------------------------------------------------

    def tick(self, now: float) -> list[Alert]:
        """Escalate alerts still ``raised`` `escalate_after_s` after they were raised."""
        limit = self._cfg.escalate_after_s
        out: list[Alert] = []
        for a in self._by_id.values():
            if a.state == RAISED and now - a.raised_at >= limit:
                a.state = ESCALATED
                a.updated_at = now
                out.append(a.copy())
        return out

    def acknowledge(self, alert_id: str, by: str, now: float) -> list[Alert]:
        """``raised``/``escalated`` -> ``acknowledged``; [] for unknown, cleared or acked ids."""
        a = self._by_id.get(alert_id)
        if a is None or a.state not in (RAISED, ESCALATED):
            return []
        a.state = ACKNOWLEDGED
        a.acknowledged_by = by
        a.updated_at = now
        return [a.copy()]

    # -- queries ----------------------------------------------------------

    @property
    def active_count(self) -> int:
        return len(self._by_id)

    def active(self) -> list[Alert]:
        """Copies of every active alert."""
        return [a.copy() for a in self._by_id.values()]

    def get(self, alert_id: str) -> Alert | None:
        """A copy of the active alert with this id, or None."""
        a = self._by_id.get(alert_id)
        return None if a is None else a.copy()

    # -- equipment status -------------------------------------------------

    def seen(self, equipment: str, ts_ns: int) -> None:
        """Record a reading's ts as the equipment's last_seen (keeps the newest)."""
        last = self._last_seen.get(equipment)
        if last is None:
            self._last_seen[equipment] = ts_ns
            self._dirty[equipment] = None
        elif ts_ns > last:
            self._last_seen[equipment] = ts_ns

    def last_seen(self, equipment: str) -> int | None:
        return self._last_seen.get(equipment)

    def status(self, equipment: str) -> str:
        """``offline`` if offline, ``anomaly`` if any other alert is active, else ``online``."""
        eqd = self._series.get(equipment)
        if eqd is None:
            return ONLINE
        kinds = eqd.get(EQUIPMENT_SENSOR)
        if kinds is not None and OFFLINE in kinds:
            return OFFLINE_STATUS
        return ANOMALY

    def drain_status_changes(self) -> list[tuple[str, str, int]]:
        """(equipment, status, last_seen_ns) for each status changed since the last drain."""
        if not self._dirty:
            return []
        out: list[tuple[str, str, int]] = []
        for eq in self._dirty:
            st = self.status(eq)
            if self._published.get(eq) != st:
                self._published[eq] = st
                out.append((eq, st, self._last_seen.get(eq, 0)))
        self._dirty.clear()
        return out

    # -- persistence ------------------------------------------------------

    def snapshot(self) -> bytes:
        """Active alerts, clear counters and equipment status as JSON bytes."""
        return orjson.dumps(
            {
                "version": _SNAPSHOT_VERSION,
                "alerts": [dataclasses.asdict(a) for a in self._by_id.values()],
                "normals": {k: v for k, v in self._normals.items() if v},
                "last_seen": self._last_seen,
                "status": self._published,
            }
        )

    def restore(self, data: bytes) -> None:
        """Replace all state with a `snapshot()`. Raises ValueError on bad data."""
        try:
            doc = orjson.loads(data)
            if doc.get("version") != _SNAPSHOT_VERSION:
                raise ValueError(f"unsupported alert snapshot version {doc.get('version')!r}")
            alerts = [Alert(**d) for d in doc["alerts"]]
            normals = {str(k): int(v) for k, v in doc.get("normals", {}).items()}
            last_seen = {str(k): int(v) for k, v in doc.get("last_seen", {}).items()}
            published = {str(k): str(v) for k, v in doc.get("status", {}).items()}
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"bad alert snapshot: {e}") from None
        for a in alerts:
            if a.state not in ACTIVE_STATES:
                raise ValueError(f"bad alert snapshot: alert {a.id} in state {a.state!r}")
        self._series = {}
        self._by_id = {}
        self._normals = {}
        self._last_seen = last_seen
        self._published = published
        self._dirty = {}
        for a in alerts:
            self._add(a)
            self._normals[a.id] = normals.get(a.id, 0)
        # Re-check everything on the next drain; unchanged statuses are not re-emitted.
        for eq in (*published, *last_seen):
            self._dirty[eq] = None

    # -- internals --------------------------------------------------------

    def _add(self, a: Alert) -> dict[str, Alert]:
        kinds = self._series.setdefault(a.equipment, {}).setdefault(a.sensor, {})
        old = kinds.get(a.kind)
        if old is not None:  # only reachable from a corrupt snapshot
            self._by_id.pop(old.id, None)
            self._normals.pop(old.id, None)
        kinds[a.kind] = a
        self._by_id[a.id] = a
        self._normals[a.id] = 0
        self._dirty[a.equipment] = None
        return kinds

    def _remove(self, a: Alert) -> None:
        self._by_id.pop(a.id, None)
        self._normals.pop(a.id, None)
        eqd = self._series.get(a.equipment)
        if eqd is not None:
            kinds = eqd.get(a.sensor)
            if kinds is not None and kinds.get(a.kind) is a:
                del kinds[a.kind]
                if not kinds:
                    del eqd[a.sensor]
                    if not eqd:
                        del self._series[a.equipment]
        self._dirty[a.equipment] = None
