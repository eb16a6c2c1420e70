"""The alert state machine (SPEC §6). Pure: no I/O, time comes from the caller.

One alert per (equipment, sensor, kind) at a time. Every method that changes
an alert returns the transitions as `Alert` snapshots (copies) for the
publisher; repeated anomalies on an active alert update it silently.

States: ``raised`` -> ``escalated`` (severity rose, or still ``raised`` after
`escalate_after_s`: the one re-alarm) -> ``acknowledged`` (by command) -> ``cleared``
(`clear_after` consecutive normal readings for `off_delay_s`, or back online for
``offline``). A severity rise on an ``acknowledged`` alert escalates it again.

Latching (ISA-18.2 "returned to normal, unacknowledged"): an alert whose priority
is in `[alerts] ack_required` that returns before it was acknowledged goes to
``returned`` and stays in the table (its condition is normal) until an ack clears
it; if its condition comes back first it is the same alert raised again.

Per series, the rule's `AlarmPolicy` adds an on-delay (a condition must hold
`on_delay_s` of reading time before it raises; shorter excursions are counted in
`suppressed`), an off-delay, and for threshold alerts a deadband: the value must
be back inside the limit by `deadband` before a reading counts as normal.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from gateway.config import AlertsConfig
from gateway.core.model import (
    DEFAULT_POLICY,
    DEFECT_RATE,
    DRIFT,
    EQUIPMENT_SENSOR,
    MULTIVARIATE,
    OFFLINE,
    SEVERITY_RANK,
    THRESHOLD_HIGH,
    THRESHOLD_LOW,
    TREND,
    AlarmPolicy,
    Reading,
    Score,
)

# the kinds a rule's limits raise: its on/off-delays and deadband apply to them (the
# statistical detectors have gates of their own)
RULE_KINDS: Final = frozenset({THRESHOLD_HIGH, THRESHOLD_LOW, TREND})

# (equipment, sensor, line) -> the series' alarm policy (`RuleSet.resolve(...).policy`)
PolicyFor = Callable[[str, str, str], AlarmPolicy]


def _no_policy(_equipment: str, _sensor: str, _line: str) -> AlarmPolicy:
    return DEFAULT_POLICY


__all__ = [
    "ACKNOWLEDGED",
    "ACTIVE_STATES",
    "ANOMALY",
    "CLEARED",
    "ESCALATED",
    "OFFLINE_STATUS",
    "ONLINE",
    "RAISED",
    "RETURNED",
    "Alert",
    "AlertManager",
    "iso_ms",
]

RAISED: Final = "raised"
ESCALATED: Final = "escalated"
ACKNOWLEDGED: Final = "acknowledged"
RETURNED: Final = "returned"  # back to normal, not yet acknowledged (latched)
CLEARED: Final = "cleared"
ACTIVE_STATES: Final = (RAISED, ESCALATED, ACKNOWLEDGED, RETURNED)

# Equipment status values for `status/{equipment}`.
ONLINE: Final = "online"
OFFLINE_STATUS: Final = "offline"
ANOMALY: Final = "anomaly"

# Kinds of the one episode alert per equipment (gateway.core.detectors.equipment).
EPISODE_KINDS: Final = (MULTIVARIATE, DRIFT)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SNAPSHOT_VERSION: Final = 1
_RATIONALE: Final = ("cause", "consequence", "action", "response_time_s")


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
    priority: str = ""  # low|medium|high|critical; "" (old snapshots): follows severity
    first_ts: int = 0  # ns: the first bad reading (the raise's time, after any on-delay)
    peak: float | None = None  # the most extreme value while active
    peak_z: float | None = None
    rationale: dict[str, Any] | None = None  # the rule's cause/consequence/action/...
    notes: dict[str, Any] | None = None  # annunciation flags for this event (chattering…)

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
        event["priority"] = self.priority or self.severity
        if self.state in (CLEARED, RETURNED):
            event["duration_s"] = self.duration_s
            event["peak"] = self.peak
        if self.rationale:
            event.update(self.rationale)
        if self.notes:
            event.update(self.notes)
        return event

    @property
    def duration_s(self) -> float:
        """Reading time from the first bad reading to this transition, in seconds."""
        return round(max(0, self.ts - self.first_ts) / 1e9, 3) if self.first_ts else 0.0

    def key(self) -> tuple[str, str, str]:
        return (self.equipment, self.sensor, self.kind)

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
    ``tick(now)`` and ``drain_status_changes()``. `policy` gives a series' alarm
    policy (deadband, delays, priority); `suppressed` counts excursions shorter
    than their on-delay (`on_delay`).
    """

    __slots__ = (
        "_by_id",
        "_cfg",
        "_dirty",
        "_last_seen",
        "_latch",
        "_normal_since",
        "_normals",
        "_pending",
        "_policies",
        "_policy",
        "_published",
        "_series",
        "suppressed",
    )

    def __init__(self, cfg: AlertsConfig, policy: PolicyFor | None = None) -> None:
        self._cfg = cfg
        self._policy = policy or _no_policy
        self._latch = frozenset(cfg.ack_required)
        # equipment -> sensor -> kind -> live alert. Empty dicts are removed so
        # a missing equipment key means "no active alert" (the fast path).
        self._series: dict[str, dict[str, dict[str, Alert]]] = {}
        self._by_id: dict[str, Alert] = {}
        self._policies: dict[str, AlarmPolicy] = {}  # alert id -> its series' policy
        self._normals: dict[str, int] = {}  # alert id -> consecutive normal readings
        self._normal_since: dict[str, int] = {}  # alert id -> first of those (ns)
        # conditions waiting out their on-delay: equipment -> (sensor, kind) -> first ts
        self._pending: dict[str, dict[tuple[str, str], int]] = {}
        self._last_seen: dict[str, int] = {}  # equipment -> newest reading ts (ns)
        self._published: dict[str, str] = {}  # equipment -> status last drained
        self._dirty: dict[str, None] = {}  # equipment whose status may have changed
        self.suppressed = {"on_delay": 0}

    # -- readings ---------------------------------------------------------

    def observe(self, r: Reading, score: Score, now: float) -> list[Alert]:
        """Raise, update, escalate or clear this series' alerts for one reading."""
        findings = score.findings
        eqd = self._series.get(r.equipment)
        if not findings:
            if self._pending and r.equipment in self._pending:
                self._pending_normal(r, ())
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
                policy = self._policy(r.equipment, r.sensor, r.line)
                first = r.ts
                if policy.on_delay_s > 0.0 and f.kind in RULE_KINDS:
                    waiting = self._pending.setdefault(r.equipment, {})
                    first = waiting.setdefault((r.sensor, f.kind), r.ts)
                    if r.ts - first < policy.on_delay_s * 1e9:
                        continue  # not held long enough yet
                    del waiting[(r.sensor, f.kind)]
                    if not waiting:
                        del self._pending[r.equipment]
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
                    priority=policy.priority or f.severity,
                    first_ts=first,
                    peak=f.value,
                    peak_z=f.z,
                    rationale=_rationale(policy),
                )
                kinds = self._add(a, policy)
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
            _peak(a, f.value, f.z)
            self._normals[a.id] = 0
            if a.state == RETURNED:  # the condition is back before anyone acked: same alert
                if _rank(f.severity) > _rank(a.severity):
                    a.severity = f.severity
                    self._follow_severity(a)
                a.state = RAISED
                a.first_ts = r.ts
                a.peak, a.peak_z = f.value, f.z
                self._dirty[a.equipment] = None
                out.append(a.copy())
            elif _rank(f.severity) > _rank(a.severity):
                a.severity = f.severity
                self._follow_severity(a)
                a.state = ESCALATED
                out.append(a.copy())
        if self._pending and r.equipment in self._pending:
            self._pending_normal(r, seen_kinds)
        if kinds is not None and any(k not in seen_kinds for k in kinds):  # others: normal
            out.extend(self._count_normal(r, score, kinds, seen_kinds, now))
        return out

    def _follow_severity(self, a: Alert) -> None:
        if self._policies.get(a.id, DEFAULT_POLICY).priority is None:
            a.priority = a.severity

    def _pending_normal(self, r: Reading, skip: list[str] | tuple[()]) -> None:
        """A reading without these findings ends their on-delay: counted, not raised."""
        waiting = self._pending[r.equipment]
        for sk in [sk for sk in waiting if sk[0] == r.sensor and sk[1] not in skip]:
            del waiting[sk]
            self.suppressed["on_delay"] += 1
        if not waiting:
            del self._pending[r.equipment]

    def _count_normal(
        self,
        r: Reading,
        score: Score,
        kinds: dict[str, Alert],
        skip: list[str] | tuple[()],
        now: float,
    ) -> list[Alert]:
        """One normal reading for every active kind not in `skip` (offline excluded).

        A threshold alert's reading counts only once the value is back inside the
        limit by the deadband; an alert ends after `clear_after` such readings that
        also span its `off_delay_s`.
        """
        out: list[Alert] = []
        clear_after = self._cfg.clear_after
        normals = self._normals
        done: list[Alert] = []
        for kind, a in kinds.items():
            if kind == OFFLINE or kind in skip or a.state == RETURNED:
                continue
            policy = self._policies.get(a.id, DEFAULT_POLICY)
            band = policy.deadband
            if (
                band
                and a.threshold is not None
                and (
                    (kind == THRESHOLD_HIGH and r.value > a.threshold - band)
                    or (kind == THRESHOLD_LOW and r.value < a.threshold + band)
                )
            ):
                normals[a.id] = 0  # inside the deadband: still abnormal
                continue
            n = normals.get(a.id, 0) + 1
            normals[a.id] = n
            if n == 1:
                self._normal_since[a.id] = r.ts
            if n >= clear_after and (
                policy.off_delay_s <= 0.0
                or kind not in RULE_KINDS
                or r.ts - self._normal_since.get(a.id, r.ts) >= policy.off_delay_s * 1e9
            ):
                done.append(a)
        for a in done:
            a.value = r.value
            a.z = score.z
            msg = f"{r.sensor} back to normal ({_fmt(r.value)}) for {normals[a.id]} readings"
            out.append(self._end(a, r.ts, now, msg))
        return out

    # -- offline / online -------------------------------------------------

    def offline(self, equipment: str, line: str, now: float, last_seen_ns: int) -> list[Alert]:
        """Raise the equipment's ``offline`` alert (no-op if already offline)."""
        old = self._offline_alert(equipment)
        if old is not None and old.state != RETURNED:
            return []
        if last_seen_ns > self._last_seen.get(equipment, -1):
            self._last_seen[equipment] = last_seen_ns
        if last_seen_ns > 0:
            silent: float | None = max(0.0, now - last_seen_ns / 1e9)
        else:
            silent = None
        secs = int(silent if silent is not None else self._cfg.offline_after_s)
        message = f"{equipment} sent nothing for {secs} s"
        if old is not None:  # returned, not acked yet: the same alert again
            return [self._reraise(old, silent, _ns(now), now, message)]
        return self._raise_for_equipment(
            equipment,
            line,
            OFFLINE,
            "high",
            silent,
            self._cfg.offline_after_s,
            now,
            message,
        )

    def _reraise(self, a: Alert, value: float | None, ts: int, now: float, message: str) -> Alert:
        a.state = RAISED
        a.value = a.peak = value
        a.ts = a.first_ts = ts
        a.updated_at = now
        a.message = message
        self._dirty[a.equipment] = None
        return a.copy()

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
        policy = self._policy(equipment, EQUIPMENT_SENSOR, line)
        at = _ns(now) if ts is None else ts
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
            ts=at,
            raised_at=now,
            updated_at=now,
            message=message,
            priority=policy.priority or severity,
            first_ts=at,
            peak=value,
            rationale=_rationale(policy),
        )
        self._add(a, policy)
        return [a.copy()]

    def online(self, equipment: str, now: float) -> list[Alert]:
        """Clear the equipment's ``offline`` alert, if any. Cheap when there is none."""
        a = self._offline_alert(equipment)
        if a is None or a.state == RETURNED:
            return []
        return [self._end(a, _ns(now), now, f"{equipment} back online")]

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
            text = f"{msg} >= {_fmt(threshold)}/h"
            if a is not None:
                if a.state == RETURNED:
                    return [self._reraise(a, rate, _ns(now), now, text)]
                a.value = rate
                a.updated_at = now
                a.message = text
                _peak(a, rate, None)
                return []
            return self._raise_for_equipment(
                equipment, line, DEFECT_RATE, "medium", rate, threshold, now, text
            )
        if a is None or a.state == RETURNED:
            return []
        a.value = rate
        return [self._end(a, _ns(now), now, f"{msg}, back below {_fmt(threshold)}/h")]

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
        text = f"{equipment}: {message}"
        if action == "clear":
            if a is None or a.state == RETURNED:
                return []
            a.value = value
            return [self._end(a, ts, now, text)]
        if a is None:
            if action != "raise":
                return []
            return self._raise_for_equipment(
                equipment, line, kind, severity, value, None, now, text, ts
            )
        if a.state == RETURNED:
            if _rank(severity) > _rank(a.severity):
                a.severity = severity
                self._follow_severity(a)
            return [self._reraise(a, value, ts, now, text)]
        a.value, a.ts, a.updated_at, a.message = value, ts, now, text
        _peak(a, value, None)
        if _rank(severity) > _rank(a.severity):
            a.severity = severity
            self._follow_severity(a)
            a.state = ESCALATED
            return [a.copy()]
        return []

    def _end(self, a: Alert, ts: int, now: float, message: str) -> Alert:
        """The condition is normal again: ``returned`` if its priority latches and it
        was not acknowledged (it stays until an ack), else ``cleared``."""
        if a.state != ACKNOWLEDGED and (a.priority or a.severity) in self._latch:
            a.state = RETURNED
            a.ts = ts
            a.updated_at = now
            a.message = message
            self._normals[a.id] = 0
            self._dirty[a.equipment] = None
            return a.copy()
        return self._clear(a, ts, now, message)

    def _clear(self, a: Alert, ts: int, now: float, message: str) -> Alert:
        """End an alert: the `cleared` transition, and it is no longer active."""
        a.state = CLEARED
        a.ts = ts
        a.updated_at = now
        a.message = message
        self._remove(a)
        return a.copy()

    def is_offline(self, equipment: str) -> bool:
        a = self._offline_alert(equipment)
        return a is not None and a.state != RETURNED

    def _offline_alert(self, equipment: str) -> Alert | None:
        eqd = self._series.get(equipment)
        if eqd is None:
            return None
        kinds = eqd.get(EQUIPMENT_SENSOR)
        return None if kinds is None else kinds.get(OFFLINE)

    # -- time and commands ------------------------------------------------

    def tick(self, now: float) -> list[Alert]:
        """Re-alarm, once, alerts still ``raised`` `escalate_after_s` after they were raised."""
        limit = self._cfg.escalate_after_s
        out: list[Alert] = []
        for a in self._by_id.values():
            if a.state == RAISED and now - a.raised_at >= limit:
                a.state = ESCALATED
                a.updated_at = now
                c = a.copy()
                c.notes = {"realarm": True}
                out.append(c)
        return out

    def acknowledge(self, alert_id: str, by: str, now: float) -> list[Alert]:
        """``raised``/``escalated`` -> ``acknowledged``; ``returned`` -> ``cleared``;
        [] for unknown, cleared or already acknowledged ids."""
        a = self._by_id.get(alert_id)
        if a is None or a.state not in (RAISED, ESCALATED, RETURNED):
            return []
        a.acknowledged_by = by
        if a.state == RETURNED:
            return [self._clear(a, a.ts, now, f"{a.message}; acknowledged by {by}")]
        a.state = ACKNOWLEDGED
        a.updated_at = now
        return [a.copy()]

    def discard(self, alert_id: str) -> None:
        """Drop a ``returned`` alert nobody was shown (alarm management held its raise):
        there is nothing to acknowledge, so it does not wait for an ack."""
        a = self._by_id.get(alert_id)
        if a is not None and a.state == RETURNED:
            a.state = CLEARED
            self._remove(a)

    # -- queries ----------------------------------------------------------

    @property
    def active_count(self) -> int:
        return len(self._by_id)

    def active(self) -> list[Alert]:
        """Copies of every active alert (``returned`` ones included)."""
        return [a.copy() for a in self._by_id.values()]

    def iter_active(self) -> Iterator[Alert]:
        """The live active alerts, without copies: read them, never change them."""
        return iter(self._by_id.values())

    def get(self, alert_id: str) -> Alert | None:
        """A copy of the active alert with this id, or None."""
        a = self._by_id.get(alert_id)
        return None if a is None else a.copy()

    def find(self, equipment: str, sensor: str, kind: str) -> Alert | None:
        """A copy of the active alert of (equipment, sensor, kind), or None."""
        kinds = self._series.get(equipment, {}).get(sensor)
        a = None if kinds is None else kinds.get(kind)
        return None if a is None else a.copy()

    def of_equipment(self, equipment: str) -> list[Alert]:
        """Copies of the equipment's active alerts."""
        eqd = self._series.get(equipment)
        if eqd is None:
            return []
        return [a.copy() for kinds in eqd.values() for a in kinds.values()]

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
        """``offline`` if offline, ``anomaly`` if any other alert's condition is active
        (``returned`` ones are normal), else ``online``."""
        eqd = self._series.get(equipment)
        if eqd is None:
            return ONLINE
        kinds = eqd.get(EQUIPMENT_SENSOR)
        off = None if kinds is None else kinds.get(OFFLINE)
        if off is not None and off.state != RETURNED:
            return OFFLINE_STATUS
        for sensor_kinds in eqd.values():
            for a in sensor_kinds.values():
                if a.state != RETURNED:
                    return ANOMALY
        return ONLINE

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
        """Active alerts, clear counters, pending on-delays and status as JSON bytes."""
        return orjson.dumps(
            {
                "version": _SNAPSHOT_VERSION,
                "alerts": [dataclasses.asdict(a) for a in self._by_id.values()],
                "normals": {k: v for k, v in self._normals.items() if v},
                "normal_since": {
                    k: v for k, v in self._normal_since.items() if self._normals.get(k)
                },
                "pending": [
                    [eq, sensor, kind, first]
                    for eq, waiting in self._pending.items()
                    for (sensor, kind), first in waiting.items()
                ],
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
            since = {str(k): int(v) for k, v in doc.get("normal_since", {}).items()}
            pending: dict[str, dict[tuple[str, str], int]] = {}
            for eq, sensor, kind, first in doc.get("pending", []):
                pending.setdefault(str(eq), {})[(str(sensor), str(kind))] = int(first)
            last_seen = {str(k): int(v) for k, v in doc.get("last_seen", {}).items()}
            published = {str(k): str(v) for k, v in doc.get("status", {}).items()}
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"bad alert snapshot: {e}") from None
        for a in alerts:
            if a.state not in ACTIVE_STATES:
                raise ValueError(f"bad alert snapshot: alert {a.id} in state {a.state!r}")
        self._series = {}
        self._by_id = {}
        self._policies = {}
        self._normals = {}
        self._normal_since = {}
        self._pending = pending
        self._last_seen = last_seen
        self._published = published
        self._dirty = {}
        for a in alerts:
            if not a.priority:
                a.priority = a.severity
            self._add(a, self._policy(a.equipment, a.sensor, a.line))
            self._normals[a.id] = normals.get(a.id, 0)
            if a.id in since:
                self._normal_since[a.id] = since[a.id]
        # Re-check everything on the next drain; unchanged statuses are not re-emitted.
        for eq in (*published, *last_seen):
            self._dirty[eq] = None

    # -- internals --------------------------------------------------------

    def _add(self, a: Alert, policy: AlarmPolicy = DEFAULT_POLICY) -> dict[str, Alert]:
        kinds = self._series.setdefault(a.equipment, {}).setdefault(a.sensor, {})
        old = kinds.get(a.kind)
        if old is not None:  # only reachable from a corrupt snapshot
            self._by_id.pop(old.id, None)
            self._normals.pop(old.id, None)
            self._policies.pop(old.id, None)
        kinds[a.kind] = a
        self._by_id[a.id] = a
        self._normals[a.id] = 0
        if policy is not DEFAULT_POLICY:
            self._policies[a.id] = policy
        self._dirty[a.equipment] = None
        return kinds

    def _remove(self, a: Alert) -> None:
        self._by_id.pop(a.id, None)
        self._normals.pop(a.id, None)
        self._normal_since.pop(a.id, None)
        self._policies.pop(a.id, None)
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

    def forget(self, equipment: str, now: float, why: str) -> list[Alert]:
        """Forget a decommissioned equipment (silent for ``forget_after_s``, or by command).

        Its active alerts (the ``offline`` one, and any other) end ``cleared`` with
        ``reason: forgotten`` in their event; its last_seen and status go, so no status
        is published for it again (the caller empties the retained status topic).
        """
        eqd = self._series.get(equipment)
        alerts = [a for kinds in eqd.values() for a in kinds.values()] if eqd else []
        out = []
        for a in alerts:
            c = self._clear(a, _ns(now), now, f"{equipment} forgotten ({why})")
            c.notes = {**(c.notes or {}), "reason": "forgotten"}
            out.append(c)
        self._pending.pop(equipment, None)
        self._last_seen.pop(equipment, None)
        self._published.pop(equipment, None)
        self._dirty.pop(equipment, None)
        return out


def _rationale(policy: AlarmPolicy) -> dict[str, Any] | None:
    """The rule's rationalisation fields that are set, for the alert's events."""
    if policy is DEFAULT_POLICY:
        return None
    out = {k: getattr(policy, k) for k in _RATIONALE if getattr(policy, k) is not None}
    return out or None


def _peak(a: Alert, value: float | None, z: float | None) -> None:
    """Keep the most extreme value of an active alert: largest |z| where there is a z,
    else the lowest for a low limit and the highest otherwise."""
    if value is None:
        return
    if z is not None:
        if a.peak_z is None or abs(z) >= abs(a.peak_z):
            a.peak, a.peak_z = value, z
    elif a.peak is None or (value < a.peak if a.kind == THRESHOLD_LOW else value > a.peak):
        a.peak = value
