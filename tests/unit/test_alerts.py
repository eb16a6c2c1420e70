"""The alert state machine (SPEC §6): pure, time passed in."""

from __future__ import annotations

import re

import orjson
import pytest

from gateway.config import AlertsConfig
from gateway.core.alerts import Alert, AlertManager, iso_ms
from gateway.core.model import (
    EQUIPMENT_SENSOR,
    OFFLINE,
    THRESHOLD_HIGH,
    THRESHOLD_LOW,
    ZSCORE,
    Finding,
    Reading,
    Score,
)

T0 = 1_795_341_600.0  # 2026-11-22T10:00:00Z
T0_NS = 1_795_341_600_000_000_000

EVENT_KEYS = [
    "id",
    "equipment",
    "sensor",
    "line",
    "kind",
    "severity",
    "state",
    "value",
    "z",
    "mean",
    "std",
    "threshold",
    "ts",
    "raised_at",
    "message",
    "priority",
]


def mgr(**kw: object) -> AlertManager:
    return AlertManager(AlertsConfig(**kw))  # type: ignore[arg-type]


def reading(
    value: float = 50.0, ts: int = T0_NS, eq: str = "device-001", sensor: str = "temperature"
) -> Reading:
    return Reading(equipment=eq, sensor=sensor, value=value, ts=ts, tags={"line": "line-1"})


def zf(value: float = 150.0, severity: str = "critical", z: float = 32.5) -> Finding:
    return Finding(
        kind=ZSCORE,
        severity=severity,
        value=value,
        threshold=3.0,
        message=f"temperature {value} is {z} sigma above mean 85.0",
        z=z,
        mean=85.0,
        std=2.0,
    )


def hf(value: float = 90.0, severity: str = "high") -> Finding:
    return Finding(THRESHOLD_HIGH, severity, value, 85.0, f"temperature {value} above 85.0")


def lf(value: float = 10.0) -> Finding:
    return Finding(THRESHOLD_LOW, "high", value, 15.0, f"temperature {value} below 15.0")


def anomaly(*f: Finding) -> Score:
    return Score(z=f[0].z if f else None, findings=list(f))


NORMAL = Score(z=0.1, findings=[])


def test_first_anomaly_raises_once_and_updates_are_silent() -> None:
    m = mgr()
    out = m.observe(reading(150.0), anomaly(zf(150.0)), T0)
    assert [(a.kind, a.state, a.severity) for a in out] == [(ZSCORE, "raised", "critical")]
    first = out[0]
    assert (first.equipment, first.sensor, first.line) == ("device-001", "temperature", "line-1")

    out2 = m.observe(reading(160.0, ts=T0_NS + 10**9), anomaly(zf(160.0, z=37.5)), T0 + 1)
    assert out2 == []
    assert m.active_count == 1
    live = m.get(first.id)
    assert live is not None
    assert (live.value, live.z, live.ts, live.state) == (160.0, 37.5, T0_NS + 10**9, "raised")
    assert "160.0" in live.message
    # the emitted snapshot was not mutated by the update
    assert first.value == 150.0 and first.ts == T0_NS


def test_kinds_are_separate_alerts() -> None:
    m = mgr()
    out = m.observe(reading(150.0), anomaly(zf(), hf(150.0)), T0)
    assert sorted(a.kind for a in out) == [THRESHOLD_HIGH, ZSCORE]
    out = m.observe(reading(10.0), anomaly(lf()), T0 + 1)
    assert [a.kind for a in out] == [THRESHOLD_LOW]
    assert m.active_count == 3
    assert len({a.id for a in m.active()}) == 3


def test_other_series_is_independent() -> None:
    m = mgr()
    m.observe(reading(150.0), anomaly(zf()), T0)
    out = m.observe(reading(150.0, sensor="pressure"), anomaly(zf()), T0)
    assert [a.state for a in out] == ["raised"]
    assert m.active_count == 2


def test_severity_rise_escalates_and_fall_keeps_worst() -> None:
    m = mgr()
    (a,) = m.observe(reading(), anomaly(zf(severity="low", z=3.2)), T0)
    assert m.observe(reading(), anomaly(zf(severity="low", z=3.3)), T0 + 1) == []
    out = m.observe(reading(), anomaly(zf(severity="medium", z=4.5)), T0 + 2)
    assert [(x.id, x.state, x.severity) for x in out] == [(a.id, "escalated", "medium")]
    # lower severity: silent, severity stays at the worst seen
    assert m.observe(reading(), anomaly(zf(severity="low", z=3.1)), T0 + 3) == []
    assert m.get(a.id).severity == "medium"  # type: ignore[union-attr]
    out = m.observe(reading(), anomaly(zf(severity="critical", z=9.0)), T0 + 4)
    assert [(x.state, x.severity) for x in out] == [("escalated", "critical")]


def test_time_escalation_via_tick() -> None:
    m = mgr(escalate_after_s=300.0)
    (a,) = m.observe(reading(), anomaly(zf()), T0)
    assert m.tick(T0 + 299.9) == []
    out = m.tick(T0 + 300.0)
    assert [(x.id, x.state) for x in out] == [(a.id, "escalated")]
    assert m.tick(T0 + 400.0) == []  # only once


def test_tick_does_not_escalate_acknowledged() -> None:
    m = mgr(escalate_after_s=10.0)
    (a,) = m.observe(reading(), anomaly(zf()), T0)
    m.acknowledge(a.id, "bob", T0 + 1)
    assert m.tick(T0 + 100) == []


def test_clear_after_exactly_n_normals() -> None:
    m = mgr(clear_after=3, ack_required=[])
    (a,) = m.observe(reading(150.0), anomaly(zf()), T0)
    assert m.observe(reading(50.0), NORMAL, T0 + 1) == []
    assert m.observe(reading(50.0), NORMAL, T0 + 2) == []
    out = m.observe(reading(51.0, ts=T0_NS + 3 * 10**9), NORMAL, T0 + 3)
    assert [(x.id, x.state) for x in out] == [(a.id, "cleared")]
    assert (out[0].value, out[0].ts) == (51.0, T0_NS + 3 * 10**9)
    assert m.active_count == 0 and m.get(a.id) is None
    # next anomaly is a fresh alert
    (b,) = m.observe(reading(150.0), anomaly(zf()), T0 + 4)
    assert b.state == "raised" and b.id != a.id


def test_anomaly_in_between_resets_normal_count() -> None:
    m = mgr(clear_after=3, ack_required=[])
    m.observe(reading(150.0), anomaly(zf()), T0)
    m.observe(reading(), NORMAL, T0 + 1)
    m.observe(reading(), NORMAL, T0 + 2)
    assert m.observe(reading(150.0), anomaly(zf()), T0 + 3) == []
    assert m.observe(reading(), NORMAL, T0 + 4) == []
    assert m.observe(reading(), NORMAL, T0 + 5) == []
    assert [x.state for x in m.observe(reading(), NORMAL, T0 + 6)] == ["cleared"]


def test_other_kind_finding_counts_as_normal_for_this_kind() -> None:
    m = mgr(clear_after=2, ack_required=[])
    (h,) = m.observe(reading(90.0), anomaly(hf()), T0)
    out = m.observe(reading(10.0), anomaly(lf()), T0 + 1)
    assert [(x.kind, x.state) for x in out] == [(THRESHOLD_LOW, "raised")]
    out = m.observe(reading(10.0), anomaly(lf()), T0 + 2)
    assert [(x.id, x.kind, x.state) for x in out] == [(h.id, THRESHOLD_HIGH, "cleared")]
    assert [a.kind for a in m.active()] == [THRESHOLD_LOW]


def test_acknowledge_flow() -> None:
    m = mgr()
    (a,) = m.observe(reading(), anomaly(zf(severity="low", z=3.5)), T0)
    out = m.acknowledge(a.id, "alice", T0 + 5)
    assert [(x.state, x.acknowledged_by) for x in out] == [("acknowledged", "alice")]
    assert out[0].to_event()["acknowledged_by"] == "alice"
    assert m.acknowledge(a.id, "alice", T0 + 6) == []  # already acknowledged
    assert m.acknowledge("no-such-id", "alice", T0) == []
    # same severity keeps it acknowledged
    assert m.observe(reading(), anomaly(zf(severity="low", z=3.6)), T0 + 7) == []
    assert m.get(a.id).state == "acknowledged"  # type: ignore[union-attr]
    # severity rise escalates again, and it can be acknowledged again
    out = m.observe(reading(), anomaly(zf(severity="critical", z=8.0)), T0 + 8)
    assert [(x.state, x.severity) for x in out] == [("escalated", "critical")]
    assert [x.state for x in m.acknowledge(a.id, "bob", T0 + 9)] == ["acknowledged"]
    # acknowledged alerts still clear on normal readings; then the id is unknown
    for i in range(5):
        out = m.observe(reading(), NORMAL, T0 + 10 + i)
    assert [x.state for x in out] == ["cleared"]
    assert m.acknowledge(a.id, "bob", T0 + 20) == []


def test_offline_and_online() -> None:
    m = mgr(clear_after=1, ack_required=[])
    m.seen("device-001", T0_NS)
    out = m.offline("device-001", "line-1", T0 + 30.4, T0_NS)
    assert len(out) == 1
    a = out[0]
    assert (a.kind, a.sensor, a.severity, a.state, a.line) == (
        OFFLINE,
        EQUIPMENT_SENSOR,
        "high",
        "raised",
        "line-1",
    )
    assert a.message == "device-001 sent nothing for 30 s"
    assert m.offline("device-001", "line-1", T0 + 60, T0_NS) == []  # one at a time
    assert m.is_offline("device-001")
    # normal readings do not clear offline
    assert m.observe(reading(), NORMAL, T0 + 61) == []
    assert m.observe(reading(sensor=EQUIPMENT_SENSOR), NORMAL, T0 + 61) == []
    assert m.active_count == 1
    out = m.online("device-001", T0 + 62)
    assert [(x.id, x.kind, x.state) for x in out] == [(a.id, OFFLINE, "cleared")]
    assert m.active_count == 0
    assert m.online("device-001", T0 + 63) == []
    assert not m.is_offline("device-001")


def test_offline_escalates_by_time() -> None:
    m = mgr(escalate_after_s=300.0)
    m.offline("device-002", "line-1", T0, T0_NS - 30 * 10**9)
    assert [(x.kind, x.state) for x in m.tick(T0 + 300)] == [(OFFLINE, "escalated")]


def test_status_transitions_and_drain() -> None:
    m = mgr(clear_after=1)
    assert m.drain_status_changes() == []
    m.seen("device-001", T0_NS)
    m.seen("device-002", T0_NS + 5)
    m.seen("device-001", T0_NS + 7)
    m.seen("device-001", T0_NS + 3)  # older: last_seen keeps the newest
    assert m.drain_status_changes() == [
        ("device-001", "online", T0_NS + 7),
        ("device-002", "online", T0_NS + 5),
    ]
    m.seen("device-001", T0_NS + 8)
    assert m.drain_status_changes() == []  # no status change

    m.observe(reading(150.0), anomaly(zf()), T0)
    assert m.status("device-001") == "anomaly"
    assert m.drain_status_changes() == [("device-001", "anomaly", T0_NS + 8)]
    m.observe(reading(150.0), anomaly(zf()), T0 + 1)
    assert m.drain_status_changes() == []

    m.offline("device-001", "line-1", T0 + 40, T0_NS + 8)
    assert m.status("device-001") == "offline"  # offline wins over anomaly
    assert m.drain_status_changes() == [("device-001", "offline", T0_NS + 8)]
    m.online("device-001", T0 + 41)
    assert m.drain_status_changes() == [("device-001", "anomaly", T0_NS + 8)]
    m.observe(reading(), NORMAL, T0 + 42)
    assert m.status("device-001") == "online"
    assert m.drain_status_changes() == [("device-001", "online", T0_NS + 8)]

    # raise and clear between two drains: no change to report
    m.observe(reading(150.0), anomaly(zf()), T0 + 43)
    m.observe(reading(), NORMAL, T0 + 44)
    assert m.drain_status_changes() == []
    assert m.status("device-002") == "online"
    assert m.status("never-seen") == "online"


def test_offline_of_unseen_equipment_is_reported() -> None:
    m = mgr()
    m.offline("device-009", "line-2", T0, 0)
    out = m.drain_status_changes()
    assert out == [("device-009", "offline", 0)]


def test_snapshot_round_trip() -> None:
    m = mgr(clear_after=3)
    m.seen("device-001", T0_NS)
    m.seen("device-002", T0_NS)
    (a,) = m.observe(reading(150.0), anomaly(zf()), T0)
    m.observe(reading(), NORMAL, T0 + 1)  # one normal counted before the restart
    (o,) = m.offline("device-002", "line-1", T0, T0_NS)
    m.acknowledge(o.id, "carol", T0 + 1)
    m.drain_status_changes()
    data = m.snapshot()
    assert isinstance(data, bytes)
    orjson.loads(data)

    r = mgr(clear_after=3)
    r.restore(data)
    assert r.active_count == 2
    assert {x.id for x in r.active()} == {a.id, o.id}
    assert r.get(o.id).acknowledged_by == "carol"  # type: ignore[union-attr]
    assert r.status("device-001") == "anomaly"
    assert r.status("device-002") == "offline"
    assert r.drain_status_changes() == []  # status already published before restart
    # the same anomaly updates the existing alert, no new "raised"
    assert r.observe(reading(155.0), anomaly(zf(155.0)), T0 + 2) == []
    assert r.get(a.id).value == 155.0  # type: ignore[union-attr]
    assert r.online("device-002", T0 + 3)[0].id == o.id
    # the normal counter also survived
    r2 = mgr(clear_after=3)
    r2.restore(data)
    r2.observe(reading(), NORMAL, T0 + 2)
    assert [x.id for x in r2.observe(reading(), NORMAL, T0 + 3)] == [a.id]


def test_restore_rejects_garbage() -> None:
    m = mgr()
    with pytest.raises(ValueError):
        m.restore(b"not json")
    with pytest.raises(ValueError):
        m.restore(b'{"version": 1, "alerts": [{"nope": 1}]}')
    with pytest.raises(ValueError):
        m.restore(b'{"version": 99, "alerts": []}')


def test_to_event_keys_and_iso_format() -> None:
    m = mgr()
    (a,) = m.observe(reading(150.0, ts=T0_NS + 123_456_789), anomaly(zf()), T0 + 0.123)
    ev = a.to_event()
    assert list(ev) == EVENT_KEYS
    assert ev["ts"] == "2026-11-22T10:00:00.123Z"
    assert ev["raised_at"] == "2026-11-22T10:00:00.123Z"
    assert ev["state"] == "raised" and ev["kind"] == "zscore" and ev["severity"] == "critical"
    assert (ev["value"], ev["z"], ev["mean"], ev["std"], ev["threshold"]) == (
        150.0,
        32.5,
        85.0,
        2.0,
        3.0,
    )
    assert ev["message"] == "temperature 150.0 is 32.5 sigma above mean 85.0"
    assert re.fullmatch(r"[0-9a-f-]{36}", ev["id"])
    orjson.dumps(ev)
    # threshold findings carry no z/mean/std: keys stay, values null
    (h,) = m.observe(reading(90.0), anomaly(hf()), T0)
    ev = h.to_event()
    assert list(ev) == EVENT_KEYS
    assert (ev["z"], ev["mean"], ev["std"]) == (None, None, None)


def test_iso_ms() -> None:
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(T0_NS + 999_999_999) == "2026-11-22T10:00:00.999Z"
    assert iso_ms(T0_NS + 5_000_000) == "2026-11-22T10:00:00.005Z"


def test_alert_dataclass_is_slotted_and_copied() -> None:
    m = mgr()
    (a,) = m.observe(reading(), anomaly(zf()), T0)
    assert isinstance(a, Alert) and not hasattr(a, "__dict__")
    a.state = "mutated by publisher"
    assert m.get(a.id).state == "raised"  # type: ignore[union-attr]
    snap = m.active()[0]
    snap.value = -1.0
    assert m.get(a.id).value == 150.0  # type: ignore[union-attr]


def test_normal_reading_without_alerts_is_noop() -> None:
    m = mgr()
    assert m.observe(reading(), NORMAL, T0) == []
    assert m.active_count == 0
    assert m.drain_status_changes() == []
