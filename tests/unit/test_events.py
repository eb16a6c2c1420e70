"""Production events: parsing, de-duplication/updates, stats, defect-rate alerts (no I/O)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import AlertsConfig, EventsConfig, Settings, Subscription, ValidationConfig
from gateway.core import model
from gateway.core.alerts import CLEARED, RAISED, AlertManager
from gateway.core.events import (
    DUPLICATE,
    HEALTHY,
    STORED,
    UPDATE,
    WARNING,
    Event,
    EventParser,
    EventPath,
    EventStore,
    event_line,
    iso,
)
from gateway.core.timestamps import parse_ts
from gateway.http.events_api import BadRequest, stats_query, top_lines_query

T0 = parse_ts("2026-01-15T10:00:00Z")
MIN = 60 * 1_000_000_000
HOUR = 60 * MIN
SUB = Subscription(
    topic="factory/+/+/+/events",
    template="factory/{factory}/{line}/{equipment}/events",
    format="event",
)
READINGS = Subscription()  # plant/+/+/+


def msg(payload: Any, topic: str = "factory/F01/LINE-A/M-001/events", now: int = T0) -> Any:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return model.RawMessage(topic, body, 0.0, now, "mqtt", 0)


def ev(
    eid: str, t: int, machine: str, line: str, defects: int, factory: str = "F01", dur: float = 1000
) -> Event:
    return Event(eid, t, machine, line, factory, float(dur), defects)


def good(**kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": "E-1",
        "event_time": "2026-01-15T10:12:03.123Z",
        "machine_id": "M-001",
        "line_id": "LINE-A",
        "factory_id": "F01",
        "duration_ms": 4312,
        "defect_count": 0,
    }
    d.update(kw)
    return {k: v for k, v in d.items() if v is not ...}


def parser(default_factory: str = "", **vcfg: Any) -> EventParser:
    return EventParser([SUB], ValidationConfig(**vcfg), default_factory)


def parse(payload: Any, p: EventParser | None = None, **kw: Any) -> tuple[list[Event], list[Any]]:
    p = p or parser()
    m = msg(payload, **kw)
    levels = p.claim(m)
    assert levels is not None
    return p.parse(m, levels)


# ------------------------------------------------------------------- parsing


def test_parses_the_spec_example() -> None:
    events, rejects = parse(good())
    assert rejects == []
    assert events == [
        Event("E-1", parse_ts("2026-01-15T10:12:03.123Z"), "M-001", "LINE-A", "F01", 4312.0, 0)
    ]


def test_names_come_from_topic_when_payload_has_none() -> None:
    body = good(machine_id=..., line_id=..., factory_id=...)
    events, rejects = parse(body, topic="factory/F09/LINE-Z/M-777/events")
    assert rejects == []
    assert (events[0].factory_id, events[0].line_id, events[0].machine_id) == (
        "F09",
        "LINE-Z",
        "M-777",
    )
    # the payload overrides the topic
    events, _ = parse(good(machine_id="M-002"), topic="factory/F09/LINE-Z/M-777/events")
    assert events[0].machine_id == "M-002" and events[0].factory_id == "F01"


def test_default_factory_from_config() -> None:
    sub = Subscription(
        topic="plant/+/+/events", template="plant/{line}/{equipment}/events", format="event"
    )
    p = EventParser([sub], ValidationConfig(), "F-DEFAULT")
    m = msg(good(factory_id=...), topic="plant/L1/M1/events")
    events, rejects = p.parse(m, p.claim(m) or {})
    assert rejects == [] and events[0].factory_id == "F-DEFAULT"
    p2 = EventParser([sub], ValidationConfig(), "")
    events, rejects = p2.parse(m, p2.claim(m) or {})
    assert events == [] and rejects[0].reason == model.MISSING_FIELD
    assert "factory_id" in rejects[0].detail


def test_same_event_spelled_differently_parses_equal() -> None:
    a, _ = parse(good())
    b, _ = parse(
        {
            "defect_count": 0.0,
            "duration_ms": 4312.0,
            "event_time": parse_ts("2026-01-15T10:12:03.123Z") // 1_000_000,  # epoch ms
            "factory_id": "F01",
            "line_id": "LINE-A",
            "machine_id": "M-001",
            "event_id": "E-1",
        }
    )
    assert a == b


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"event_id": ...}, model.MISSING_FIELD, "event_id"),
        ({"event_id": None}, model.MISSING_FIELD, "event_id"),
        ({"event_id": ""}, model.MISSING_FIELD, "event_id"),
        ({"event_id": ["x"]}, model.INVALID_VALUE, "event_id"),
        ({"event_time": ...}, model.MISSING_FIELD, "event_time"),
        ({"event_time": "yesterday"}, model.MALFORMED, "event_time"),
        ({"event_time": "2026-01-15T10:16:00Z"}, model.FUTURE_TIMESTAMP, "ahead"),
        ({"event_time": "2025-01-01T00:00:00Z"}, model.STALE_TIMESTAMP, "old"),
        ({"machine_id": ...}, model.MISSING_FIELD, "machine_id"),
        ({"machine_id": "a/b"}, model.INVALID_VALUE, "machine_id"),
        ({"line_id": 7}, model.INVALID_VALUE, "line_id"),
        ({"duration_ms": ...}, model.MISSING_FIELD, "duration_ms"),
        ({"duration_ms": -1}, model.OUT_OF_RANGE, "duration_ms"),
        ({"duration_ms": 6 * 3600 * 1000 + 1}, model.OUT_OF_RANGE, "6 h"),
        ({"duration_ms": "12"}, model.INVALID_VALUE, "duration_ms"),
        ({"duration_ms": True}, model.INVALID_VALUE, "duration_ms"),
        ({"defect_count": ...}, model.MISSING_FIELD, "defect_count"),
        ({"defect_count": -2}, model.OUT_OF_RANGE, "defect_count"),
        ({"defect_count": 1.5}, model.INVALID_VALUE, "defect_count"),
        ({"defect_count": "3"}, model.INVALID_VALUE, "defect_count"),
        ({"defect_count": False}, model.INVALID_VALUE, "defect_count"),
    ],
)
def test_invalid_events_are_rejected_with_reasons(
    change: dict[str, Any], reason: str, words: str
) -> None:
    bare = Subscription(topic="ev/+", template="ev/{n}", format="event")  # names no machine
    p = EventParser([bare], ValidationConfig(), "")
    m = msg(good(**change), topic="ev/1")
    events, rejects = p.parse(m, p.claim(m) or {})
    assert events == []
    assert [r.reason for r in rejects] == [reason]
    assert words in rejects[0].detail
    assert rejects[0].topic == "ev/1" and rejects[0].payload == m.payload


def test_limits_that_are_accepted() -> None:
    ok = [
        good(event_id="a", event_time="2026-01-15T10:14:59Z"),  # 14:59 ahead: < 15 min
        good(event_id="b", duration_ms=0),
        good(event_id="c", duration_ms=6 * 3600 * 1000),
        good(event_id="d", defect_count=-1),
        good(event_id=42),
    ]
    events, rejects = parse(ok)
    assert rejects == []
    assert [e.event_id for e in events] == ["a", "b", "c", "d", "42"]
    assert events[3].defect_count == -1 and events[3].defects == 0


def test_message_level_rejects() -> None:
    for payload, reason in [
        (b"", model.MALFORMED),
        (b"{not json", model.MALFORMED),
        (b"42", model.MALFORMED),
        (orjson.dumps([good()] * 11), model.TOO_LARGE),
    ]:
        events, rejects = parse(payload, parser(max_batch_items=10))
        assert events == [] and [r.reason for r in rejects] == [reason], payload
    events, rejects = parse(b"x" * 100, parser(max_payload_bytes=64))
    assert [r.reason for r in rejects] == [model.TOO_LARGE]


def test_one_bad_item_rejects_only_itself() -> None:
    events, rejects = parse([good(event_id="a"), "nope", good(event_id="b", defect_count=-7)])
    assert [e.event_id for e in events] == ["a"]
    assert [(r.reason, r.detail.split(":")[0]) for r in rejects] == [
        (model.MALFORMED, "item 1"),
        (model.OUT_OF_RANGE, "item 2"),
    ]


def test_invalid_topic_level_is_rejected() -> None:
    p = parser()
    m = msg(good(machine_id=...), topic="factory/F01/LINE-A/ /events")
    events, rejects = p.parse(m, p.claim(m) or {})
    assert events == [] and rejects[0].reason == model.MISSING_FIELD


def test_claim_only_event_subscription_topics() -> None:
    p = EventParser([READINGS, SUB], ValidationConfig(), "")
    assert p.claim(msg(1, topic="plant/l/e/temperature")) is None
    got = p.claim(msg(1, topic="factory/F/L/M/events"))
    assert got == {"factory": "F", "line": "L", "equipment": "M"}
    # an event template claims its topics even when the source named another subscription
    overlap = Subscription(
        topic="plant/+/+/events", template="plant/{line}/{equipment}/events", format="event"
    )
    p2 = EventParser([READINGS, overlap], ValidationConfig(), "")
    assert p2.claim(msg(1, topic="plant/l/m/events")) == {"line": "l", "equipment": "m"}
    assert not EventParser([READINGS], ValidationConfig(), "").enabled


# --------------------------------------------------------------- dedup/update


def test_duplicates_are_counted_once() -> None:
    path = EventPath([SUB], ValidationConfig(), EventsConfig())
    lines: list[str] = []
    body = good(defect_count=2)
    for _ in range(3):
        assert path.ingest(msg(body), path.claim(msg(body)) or {}, lines) == []
    counts, touched = path.drain()
    assert counts == {STORED: 1, DUPLICATE: 2, UPDATE: 0}
    assert len(lines) == 1 and len(path.store) == 1
    assert path.store.counts("M-001", T0, T0 + HOUR) == (1, 2)
    assert set(touched) == {"M-001"}


def test_update_later_receive_wins_and_overwrites_the_point() -> None:
    path = EventPath([SUB], ValidationConfig(), EventsConfig())
    lines: list[str] = []
    for dc in (1, 4):
        m = msg(good(defect_count=dc))
        path.ingest(m, path.claim(m) or {}, lines)
    counts, _ = path.drain()
    assert counts == {STORED: 1, DUPLICATE: 0, UPDATE: 1}
    assert path.store.get("E-1").defect_count == 4  # type: ignore[union-attr]
    assert path.store.counts("M-001", T0, T0 + HOUR) == (1, 4)
    # same tags + timestamp: the second line replaces the first in InfluxDB
    first, second = (ln.rsplit(" ", 2) for ln in lines)
    assert first[0] == second[0] and first[2] == second[2]
    assert "defect_count=1i" in first[1] and "defect_count=4i" in second[1]
    # going back to the first payload is another update, not a duplicate
    m = msg(good(defect_count=1))
    path.ingest(m, path.claim(m) or {}, lines)
    assert path.drain()[0][UPDATE] == 1 and path.store.get("E-1").defect_count == 1  # type: ignore[union-attr]


def test_update_that_moves_the_point_tombstones_the_old_one() -> None:
    store_path = EventPath([SUB], ValidationConfig(), EventsConfig())
    lines: list[str] = []
    for body in (good(), good(machine_id="M-002", event_time="2026-01-15T10:13:00Z")):
        m = msg(body)
        store_path.ingest(m, store_path.claim(m) or {}, lines)
    assert len(lines) == 3
    assert lines[1].startswith("machine_events,factory=F01,line=LINE-A,machine=M-001 ")
    assert "superseded=true" in lines[1]
    assert lines[1].endswith(f" {parse_ts('2026-01-15T10:12:03.123Z')}")
    assert "machine=M-002" in lines[2] and "superseded=false" in lines[2]
    assert store_path.store.counts("M-001", T0, T0 + HOUR) == (0, 0)
    assert store_path.store.counts("M-002", T0, T0 + HOUR) == (1, 0)
    _, touched = store_path.drain()
    assert set(touched) == {"M-001", "M-002"}  # both machines' rates are re-checked


def test_unknown_defects_are_stored_but_excluded() -> None:
    store = EventStore()
    assert store.add(ev("u", T0, "M", "A", -1))[0] == STORED
    assert store.add(ev("k", T0 + MIN, "M", "A", 3))[0] == STORED
    assert store.get("u") is not None
    assert store.counts("M", T0, T0 + HOUR) == (2, 3)
    assert store.top_defect_lines("F01", T0, T0 + HOUR) == [
        {"line_id": "A", "total_defects": 3, "event_count": 2, "defects_percent": 150.0}
    ]
    assert "defect_count=-1i" in event_line(ev("u", T0, "M", "A", -1))


def test_window_of_remembered_ids_is_bounded() -> None:
    store = EventStore(max_ids=3)
    for i in range(3):
        store.add(ev(f"e{i}", T0 + i, "M", "A", 1))
    assert store.add(ev("e0", T0, "M", "A", 1))[0] == DUPLICATE  # refreshes e0
    assert store.add(ev("e3", T0 + 3, "M", "A", 1))[0] == STORED  # evicts e1, the oldest
    assert len(store) == 3 and store.evicted == 1
    assert store.get("e1") is None and store.get("e0") is not None
    assert store.counts("M", T0, T0 + HOUR) == (3, 3)
    assert store.add(ev("e1", T0 + 1, "M", "A", 1))[0] == STORED  # forgotten: new again


def test_snapshot_round_trip() -> None:
    store = EventStore()
    for e in FIXED:
        store.add(e)
    again = EventStore()
    again.restore(store.snapshot())
    assert again.stats("M1", T0, T0 + HOUR) == store.stats("M1", T0, T0 + HOUR)
    assert again.add(FIXED[0])[0] == DUPLICATE
    with pytest.raises(ValueError):
        again.restore(b'{"version": 99, "events": []}')


def test_snapshot_in_pieces_is_the_same_json() -> None:
    store = EventStore()
    for i in range(25):
        store.add(ev(f"e{i}", T0 + i, "M", "A", i % 3))
    pieces = list(store.snapshot_chunks(per_chunk=10))
    assert len(pieces) == 5  # head, 10 + 10 + 5 events, tail
    rows = [[f"e{i}", T0 + i, "M", "A", "F01", 1000.0, i % 3] for i in range(25)]
    assert orjson.loads(b"".join(pieces)) == {"version": 1, "events": rows}
    assert orjson.loads(EventStore().snapshot()) == {"version": 1, "events": []}


# ---------------------------------------------------------------- stats

# Hand-computed fixture: factory F01 lines A (M1, M2) and B (M3); F02 line C (M4).
FIXED = [
    ev("E1", T0, "M1", "A", 2),  # exactly at start: in
    ev("E2", T0 + 30 * MIN, "M1", "A", 1),
    ev("E3", T0 + HOUR, "M1", "A", 5),  # exactly at end: out
    ev("E4", T0 - 1_000_000, "M1", "A", 7),  # 1 ms before start: out
    ev("E5", T0 + 45 * MIN, "M1", "A", -1),  # unknown: an event, no defects
    ev("E6", T0 + 10 * MIN, "M2", "A", 0),
    ev("E7", T0 + 20 * MIN, "M3", "B", 3),
    ev("E8", T0 + 50 * MIN, "M3", "B", 1),
    ev("E9", T0 + 55 * MIN, "M3", "B", 0),
    ev("E10", T0 + 30 * MIN, "M4", "C", 9, factory="F02"),
]


@pytest.fixture
def store() -> EventStore:
    s = EventStore(warning_rate_per_h=2.0)
    for e in FIXED:
        assert s.add(e)[0] == STORED
    return s


def test_stats_hand_computed(store: EventStore) -> None:
    assert store.stats("M1", T0, T0 + HOUR) == {
        "machine_id": "M1",
        "start": "2026-01-15T10:00:00.000Z",
        "end": "2026-01-15T11:00:00.000Z",
        "events_count": 3,  # E1, E2, E5
        "defects_count": 3,  # 2 + 1
        "avg_defect_rate": 3.0,
        "status": WARNING,
    }
    two_h = store.stats("M1", T0, T0 + 2 * HOUR)  # E3 now inside
    assert (two_h["events_count"], two_h["defects_count"], two_h["avg_defect_rate"]) == (4, 8, 4.0)
    m2 = store.stats("M2", T0, T0 + HOUR)
    assert (m2["events_count"], m2["defects_count"], m2["avg_defect_rate"], m2["status"]) == (
        1,
        0,
        0.0,
        HEALTHY,
    )
    # start 1 ms later drops E1: 1 defect over 3599.999 s
    late = store.stats("M1", T0 + 1_000_000, T0 + HOUR)
    assert (late["events_count"], late["defects_count"]) == (2, 1)
    assert late["avg_defect_rate"] == pytest.approx(3600 / 3599.999)
    assert late["status"] == HEALTHY
    assert late["start"] == "2026-01-15T10:00:00.001Z"
    # end 1 ms later takes E3 in: window [10:00, 11:00:00.001)
    wide = store.stats("M1", T0, T0 + HOUR + 1_000_000)
    assert (wide["events_count"], wide["defects_count"]) == (4, 8)
    # a rate exactly at the threshold is a warning: M3 has 4 defects in 2 h
    m3 = store.stats("M3", T0, T0 + 2 * HOUR)
    assert (m3["avg_defect_rate"], m3["status"]) == (2.0, WARNING)
    unknown = store.stats("nobody", T0, T0 + HOUR)
    assert (unknown["events_count"], unknown["status"]) == (0, HEALTHY)
    with pytest.raises(ValueError):
        store.stats("M1", T0, T0)


def test_top_defect_lines_hand_computed(store: EventStore) -> None:
    assert store.top_defect_lines("F01", T0, T0 + HOUR, 10) == [
        {"line_id": "B", "total_defects": 4, "event_count": 3, "defects_percent": 133.33},
        {"line_id": "A", "total_defects": 3, "event_count": 4, "defects_percent": 75.0},
    ]
    assert store.top_defect_lines("F01", T0, T0 + HOUR, 1) == [
        {"line_id": "B", "total_defects": 4, "event_count": 3, "defects_percent": 133.33}
    ]
    # [09:00, 12:00): line A gets E3 and E4 too: 15 defects in 6 events
    assert store.top_defect_lines("F01", T0 - HOUR, T0 + 2 * HOUR, 10) == [
        {"line_id": "A", "total_defects": 15, "event_count": 6, "defects_percent": 250.0},
        {"line_id": "B", "total_defects": 4, "event_count": 3, "defects_percent": 133.33},
    ]
    assert store.top_defect_lines("F02", T0, T0 + HOUR, 10) == [
        {"line_id": "C", "total_defects": 9, "event_count": 1, "defects_percent": 900.0}
    ]
    # [10:20, 10:50): E7 at start in, E8 at end out; A has E2 and E5
    assert store.top_defect_lines("F01", T0 + 20 * MIN, T0 + 50 * MIN, 10) == [
        {"line_id": "B", "total_defects": 3, "event_count": 1, "defects_percent": 300.0},
        {"line_id": "A", "total_defects": 1, "event_count": 2, "defects_percent": 50.0},
    ]
    assert store.top_defect_lines("F99", T0, T0 + HOUR, 10) == []


def test_ties_are_ordered_by_line_id() -> None:
    s = EventStore()
    s.add(ev("x", T0, "M9", "Z", 2))
    s.add(ev("y", T0, "M8", "K", 2))
    assert [r["line_id"] for r in s.top_defect_lines("F01", T0, T0 + 1)] == ["K", "Z"]


def test_http_query_parsing(store: EventStore) -> None:
    q = {"machine": "M1", "start": "2026-01-15T10:00:00Z", "end": "2026-01-15T11:00:00Z"}
    assert stats_query(store, q)["events_count"] == 3
    # a '+' offset that arrived unescaped (as a space) still parses
    q2 = {**q, "start": "2026-01-15T11:00:00 01:00"}
    assert stats_query(store, q2)["start"] == "2026-01-15T10:00:00.000Z"
    epoch = {**q, "start": str(T0 // 1_000_000_000), "end": str((T0 + HOUR) // 1_000_000)}
    assert stats_query(store, epoch)["defects_count"] == 3
    for bad in (
        {"start": q["start"], "end": q["end"]},
        {**q, "start": "soon"},
        {**q, "end": q["start"]},
        {**q, "machine": ""},
    ):
        with pytest.raises(BadRequest):
            stats_query(store, bad)
    t = {"factory": "F01", "from": q["start"], "to": q["end"], "limit": "1"}
    assert [r["line_id"] for r in top_lines_query(store, t)] == ["B"]
    assert len(top_lines_query(store, {k: v for k, v in t.items() if k != "limit"})) == 2
    for bad_t in (
        {**t, "limit": "0"},
        {**t, "limit": "x"},
        {**t, "to": t["from"]},
        {"factory": "F01"},
    ):
        with pytest.raises(BadRequest):
            top_lines_query(store, bad_t)


def test_iso_formatting() -> None:
    assert iso(T0) == "2026-01-15T10:00:00.000Z"
    assert iso(T0 + 1) == "2026-01-15T10:00:00.000000001Z"


# ------------------------------------------------------------- defect rate


def test_defect_rate_over_trailing_window() -> None:
    s = EventStore()
    s.add(ev("a", T0 - 70 * MIN, "M", "A", 5))  # outside a 1 h window ending at T0
    s.add(ev("b", T0 - 30 * MIN, "M", "A", 2))
    s.add(ev("c", T0 - 10 * MIN, "M", "A", -1))
    assert s.defect_rate("M", T0, HOUR) == 2.0
    assert s.defect_rate("M", T0, 2 * HOUR) == 3.5  # 7 defects / 2 h
    assert s.defect_rate("M", T0 + 31 * MIN, HOUR) == 0.0


def test_alert_manager_defect_rate_raise_update_clear() -> None:
    am = AlertManager(AlertsConfig())
    [a] = am.defect_rate("M1", "A", 3.0, 2.0, 100.0)
    assert (a.kind, a.sensor, a.state, a.value, a.threshold) == (
        model.DEFECT_RATE,
        model.EQUIPMENT_SENSOR,
        RAISED,
        3.0,
        2.0,
    )
    assert am.defect_rate("M1", "A", 4.0, 2.0, 101.0) == []  # update, no new transition
    assert am.status("M1") == "anomaly"
    assert am.defect_rate("M2", "A", 1.99, 2.0, 101.0) == []
    [c] = am.defect_rate("M1", "A", 1.0, 2.0, 102.0)
    assert (c.state, c.id) == (CLEARED, a.id)
    assert am.active_count == 0


def test_gateway_routes_events_and_raises_defect_rate(tmp_path: Path) -> None:
    from gateway.app import build

    s = Settings.model_validate(
        {
            "mqtt": {"subscriptions": [READINGS.model_dump(), SUB.model_dump()]},
            "influx": {"enabled": False},
            "spool": {"dir": str(tmp_path)},
            "http": {"enabled": False},
            "events": {"warning_rate_per_h": 2.0, "rate_window_s": 3600},
        }
    )

    async def run() -> None:
        gw = build(s)
        now = time.time_ns()
        t = [now - (10 - i) * MIN for i in range(3)]
        batch = [
            model.RawMessage(
                "factory/F01/LINE-A/M-001/events",
                orjson.dumps(
                    [good(event_id=f"E{i}", event_time=t[i], defect_count=1) for i in range(3)]
                ),
                time.monotonic(),
                now,
                "mqtt",
                1,
            ),
            model.RawMessage("factory/F01/LINE-A/M-001/events", b"[1]", 0.0, now, "mqtt", 1),
            model.RawMessage("plant/l1/dev/temperature", b"21.5", time.monotonic(), now, "mqtt", 0),
        ]
        out, lines = gw.process(batch)
        assert [r.equipment for r, _ in out] == ["dev"]
        assert sum(ln.startswith("machine_events,") for ln in lines) == 3
        assert sum(ln.startswith("alerts,") for ln in lines) == 1  # defect_rate raised
        [a] = gw.alerts.active()
        assert (a.kind, a.equipment, a.value) == (model.DEFECT_RATE, "M-001", 3.0)
        text = gw.metrics.render().decode()
        assert 'edge_events_total{result="stored"} 3.0' in text
        assert 'edge_readings_rejected_total{reason="malformed"} 1.0' in text
        # the same batch again: three duplicates, nothing written
        _, lines = gw.process(batch[:1])
        assert lines == []
        assert 'edge_events_total{result="duplicate"} 3.0' in gw.metrics.render().decode()
        # defects corrected to 0: rate falls to 0, the alert clears
        fix = [good(event_id=f"E{i}", event_time=t[i], defect_count=0) for i in range(3)]
        m = model.RawMessage(
            "factory/F01/LINE-A/M-001/events", orjson.dumps(fix), 0.0, now, "mqtt", 1
        )
        _, lines = gw.process([m])
        assert any('state="cleared"' in ln for ln in lines)
        assert gw.alerts.active() == []

    asyncio.run(run())


def test_simulator_events_are_deterministic_and_match_gateway_results() -> None:
    from simulator.events import EventGenerator

    start = time.time_ns() // 1_000_000 - 3_600_000
    kw: dict[str, Any] = {"seed": 7, "duplicate_rate": 0.2, "update_rate": 0.1, "start_ms": start}
    sent = EventGenerator(**kw).events_until(1800.0)
    assert [e.payload for e in EventGenerator(**kw).events_until(1800.0)] == [
        e.payload for e in sent
    ]
    assert [e.t for e in sent] == sorted(e.t for e in sent)
    kinds = {k: sum(e.kind == k for e in sent) for k in ("new", "duplicate", "update")}
    assert min(kinds.values()) > 0
    path = EventPath([SUB], ValidationConfig(), EventsConfig())
    lines: list[str] = []
    for e in sent:
        m = msg(e.body(), topic=e.topic, now=time.time_ns())
        assert path.ingest(m, path.claim(m) or {}, lines) == []
    counts, _ = path.drain()
    assert counts == {STORED: kinds["new"], DUPLICATE: kinds["duplicate"], UPDATE: kinds["update"]}
