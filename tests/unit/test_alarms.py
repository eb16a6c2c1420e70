"""Alarm management (ISA-18.2 / EEMUA 191): the alert manager's latching, deadband and
delays, and the annunciator's shelving, out of service, chattering and flood. Pure."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.config import AlertsConfig, Rule
from gateway.core.alarms import Annunciator, CommandRejected, Publish
from gateway.core.alerts import Alert, AlertManager
from gateway.core.detectors import RuleSet
from gateway.core.model import (
    THRESHOLD_HIGH,
    ZSCORE,
    AlarmPolicy,
    Finding,
    Reading,
    Score,
)

SEC = 1_000_000_000
T0 = 1_795_341_600.0
T0_NS = 1_795_341_600 * SEC
NORMAL = Score(z=0.1, findings=[])


def reading(value: float, t: float, eq: str = "pump-1", sensor: str = "temp", line: str = "l1"):
    return Reading(eq, sensor, value, T0_NS + int(t * SEC), tags={"line": line})


def high(value: float, severity: str = "high", limit: float = 85.0) -> Score:
    return Score(None, [Finding(THRESHOLD_HIGH, severity, value, limit, f"temp {value} high")])


def low_z(value: float) -> Score:
    return Score(3.5, [Finding(ZSCORE, "low", value, 3.0, f"temp {value} z", z=3.5)])


def mgr(rules: list[Rule] | None = None, **kw: object) -> tuple[AlertManager, Annunciator]:
    cfg = AlertsConfig(**kw)  # type: ignore[arg-type]
    rs = RuleSet(rules or [])
    am = AlertManager(cfg, lambda e, s, li: rs.resolve(e, s, li).policy)
    return am, Annunciator(cfg, am)


def run(an: Annunciator, transitions: list[Alert]) -> tuple[list[str | None], list[Publish]]:
    reasons = [an.route(a) for a in transitions]
    return reasons, an.drain()


def events(pubs: list[Publish]) -> list[tuple[str, str]]:
    return [(p.alert.kind, p.alert.state) for p in pubs if p.alert is not None]


def retained(pubs: list[Publish]) -> dict[str, bytes]:
    return {p.topic: p.body for p in pubs if p.alert is None}


# ------------------------------------------------------- the alert manager


def test_high_priority_returns_unacknowledged_and_latches_until_acked() -> None:
    am, _ = mgr(clear_after=2)
    (a,) = am.observe(reading(90, 0), high(90), T0)
    am.observe(reading(50, 1), NORMAL, T0 + 1)
    (r,) = am.observe(reading(50, 2), NORMAL, T0 + 2)
    assert (r.id, r.state, r.duration_s, r.peak) == (a.id, "returned", 2.0, 90)
    ev = r.to_event()
    assert ev["state"] == "returned" and ev["duration_s"] == 2.0 and ev["priority"] == "high"
    assert am.active_count == 1 and am.status("pump-1") == "online"  # condition normal
    # the condition comes back before the ack: the same alert raised again
    (again,) = am.observe(reading(95, 3), high(95), T0 + 3)
    assert (again.id, again.state) == (a.id, "raised")
    am.observe(reading(50, 4), NORMAL, T0 + 4)
    am.observe(reading(50, 5), NORMAL, T0 + 5)
    (c,) = am.acknowledge(a.id, "op", T0 + 6)
    assert (c.state, c.acknowledged_by) == ("cleared", "op") and am.active_count == 0


def test_low_and_medium_auto_clear_and_ack_required_is_configurable() -> None:
    am, _ = mgr(clear_after=1)
    am.observe(reading(4, 0), low_z(4), T0)
    (c,) = am.observe(reading(1, 1), NORMAL, T0 + 1)
    assert c.state == "cleared"
    am2, _ = mgr(clear_after=1, ack_required=[])
    am2.observe(reading(90, 0), high(90), T0)
    (c,) = am2.observe(reading(50, 1), NORMAL, T0 + 1)
    assert c.state == "cleared"


def test_deadband_wobble_across_the_limit_raises_once() -> None:
    am, _ = mgr([Rule(sensor="temp", high=85.0, deadband=2.0)], clear_after=1, ack_required=[])
    out = am.observe(reading(86, 0), high(86), T0)
    for i, v in enumerate([84.5, 85.5, 83.5, 85.2, 84.0], start=1):  # within 2 of the limit
        out += am.observe(reading(v, i), high(v) if v > 85 else NORMAL, T0 + i)
    assert [a.state for a in out] == ["raised"]
    (c,) = am.observe(reading(82.9, 9), NORMAL, T0 + 9)  # back inside by the deadband
    assert c.state == "cleared"


def test_default_deadband_is_one_percent_of_the_span() -> None:
    rs = RuleSet([Rule(sensor="t", high=80.0, low=20.0)])
    assert rs.resolve("e", "t").policy.deadband == pytest.approx(0.6)
    assert RuleSet([Rule(sensor="t", high=200.0)]).resolve("e", "t").policy.deadband == 2.0


def test_on_delay_counts_short_excursions_and_raises_with_the_first_bad_time() -> None:
    am, _ = mgr([Rule(sensor="temp", high=85.0, on_delay_s=10)])
    assert am.observe(reading(90, 0), high(90), T0) == []
    assert am.observe(reading(90, 5), high(90), T0) == []
    assert am.observe(reading(50, 6), NORMAL, T0) == []  # 6 s < 10 s: not raised
    assert am.suppressed["on_delay"] == 1
    assert am.observe(reading(90, 20), high(90), T0) == []
    (a,) = am.observe(reading(91, 30), high(91), T0)
    assert a.first_ts == T0_NS + 20 * SEC and a.state == "raised"


def test_off_delay_needs_normal_for_that_long() -> None:
    rule = Rule(sensor="temp", high=85.0, off_delay_s=10, deadband=0)
    am, _ = mgr([rule], clear_after=2, ack_required=[])
    am.observe(reading(90, 0), high(90), T0)
    assert am.observe(reading(50, 1), NORMAL, T0) == []
    assert am.observe(reading(50, 5), NORMAL, T0) == []  # 2 readings, but only 4 s
    (c,) = am.observe(reading(50, 11), NORMAL, T0)
    assert c.state == "cleared"


def test_priority_apart_from_severity_and_rationalisation_in_the_event() -> None:
    rule = Rule(sensor="temp", high=85.0, priority="low", cause="fouled cooler", action="clean")
    am, _ = mgr([rule])
    (a,) = am.observe(reading(90, 0), high(90), T0)
    ev = a.to_event()
    assert (ev["severity"], ev["priority"]) == ("high", "low")
    assert (ev["cause"], ev["action"]) == ("fouled cooler", "clean")
    assert "consequence" not in ev


def test_alert_snapshot_keeps_latched_and_pending_state() -> None:
    am, _ = mgr([Rule(sensor="temp", high=85.0, on_delay_s=10)], clear_after=1)
    am.observe(reading(90, 0), high(90), T0)  # pending
    am.observe(reading(90, 0, sensor="temp2"), high(90), T0)  # no rule: raised
    am.observe(reading(50, 1, sensor="temp2"), NORMAL, T0)  # returned
    am2, _ = mgr([Rule(sensor="temp", high=85.0, on_delay_s=10)], clear_after=1)
    am2.restore(am.snapshot())
    assert [a.state for a in am2.active()] == ["returned"]
    (a,) = am2.observe(reading(90, 11), high(90), T0)  # the on-delay ran across the restart
    assert a.first_ts == T0_NS


# ------------------------------------------------------------ the annunciator


def test_chattering_value_alternating_every_second_for_a_minute() -> None:
    am, an = mgr([Rule(sensor="temp", high=85.0, deadband=0)], clear_after=1, ack_required=[])
    pubs: list[Publish] = []
    for t in range(60):
        v = 90.0 if t % 2 == 0 else 50.0
        _, p = run(an, am.observe(reading(v, t), high(v) if v > 85 else NORMAL, T0 + t))
        an.advance(T0_NS + t * SEC)
        pubs += p + an.drain()
    raises = [p.alert for p in pubs if p.alert is not None and p.alert.state == "raised"]
    assert len(raises) == 3 and raises[-1].to_event()["chattering"] is True
    assert sum(1 for p in pubs if p.alert and p.alert.to_event().get("chattering")) == 1
    assert an.chattering == 1 and an.suppressed["chatter"] > 50
    # quiet for 10 minutes (of reading time): its current state goes out once
    an.advance(T0_NS + 58 * SEC + 600 * SEC)
    (last,) = an.drain()
    assert last.alert is not None and last.alert.state == "cleared"
    assert last.alert.to_event()["chattering"] is False and an.chattering == 0


def test_fleeting_is_counted() -> None:
    am, an = mgr(clear_after=1, ack_required=[])
    run(an, am.observe(reading(90, 0), high(90), T0))
    run(an, am.observe(reading(50, 2), NORMAL, T0))
    assert an.fleeting == 1


def test_shelve_validation_withdraws_and_expires_into_a_new_raise() -> None:
    am, an = mgr(max_shelve_s=3600)
    (a,) = am.observe(reading(90, 0), high(90), T0)
    run(an, [a])
    bad: list[tuple[dict[str, Any], str]] = [
        ({"id": a.id, "by": "op", "duration_s": 60}, "missing_reason"),
        ({"id": a.id, "reason": "r", "duration_s": 60}, "missing_by"),
        ({"id": a.id, "by": "op", "reason": "r"}, "bad_duration"),
        ({"id": a.id, "by": "op", "reason": "r", "duration_s": 7200}, "bad_duration"),
        ({"id": "nope", "by": "op", "reason": "r", "duration_s": 60}, "unknown_id"),
    ]
    for cmd, reason in bad:
        with pytest.raises(CommandRejected) as exc:
            an.shelve(cmd, T0)
        assert exc.value.reason == reason
    assert an.shelve({"id": a.id, "by": "op", "reason": "sensor work", "duration_s": 60}, T0)
    topics = retained(an.drain())
    shelf = orjson.loads(topics["shelved/pump-1/temp/threshold_high"])
    assert (shelf["id"], shelf["by"], shelf["reason"]) == (a.id, "op", "sensor work")
    assert topics["active/pump-1/temp/threshold_high"] == b""  # off the operator's list
    # still evaluated, not published
    (e,) = am.observe(reading(99, 1), high(99, "critical", 120), T0 + 1)
    reasons, pubs = run(an, [e])
    assert reasons == ["shelved"] and pubs == []
    an.tick(T0 + 61)  # expired, condition still active: published as a new raise
    pubs = an.drain()
    assert retained(pubs)["shelved/pump-1/temp/threshold_high"] == b""
    assert events(pubs) == [("threshold_high", "escalated")]


def test_unshelve_and_shelves_survive_a_restart() -> None:
    am, an = mgr()
    (a,) = am.observe(reading(90, 0), high(90), T0)
    run(an, [a])
    an.shelve({"id": a.id, "by": "op", "reason": "r", "duration_s": 600}, T0)
    an.drain()
    an2 = Annunciator(an.cfg, am)
    an2.restore(an.snapshot())
    assert an2.is_shelved("pump-1", "temp", "threshold_high")
    an2.unshelve({"id": a.id, "by": "op"})
    assert events(an2.drain()) == [("threshold_high", "raised")]
    with pytest.raises(CommandRejected):
        an2.unshelve({"id": a.id, "by": "op"})


def test_out_of_service_suppresses_then_publishes_what_is_still_active() -> None:
    am, an = mgr()
    an.out_of_service({"equipment": "pump-1", "by": "op", "reason": "maintenance"}, T0)
    body = retained(an.drain())["oos/pump-1"]
    assert orjson.loads(body)["reason"] == "maintenance"
    reasons, pubs = run(an, am.observe(reading(90, 0), high(90), T0))
    assert reasons == ["oos"] and pubs == []
    with pytest.raises(CommandRejected):
        an.out_of_service({"equipment": "pump-1", "by": "op", "on": True}, T0)  # no reason
    an.out_of_service({"equipment": "pump-1", "by": "op", "on": False}, T0)
    pubs = an.drain()
    assert retained(pubs)["oos/pump-1"] == b"" and events(pubs) == [("threshold_high", "raised")]


def test_alerts_of_an_offline_equipment_are_suppressed_by_design() -> None:
    am, an = mgr()
    am.seen("pump-1", T0_NS)
    run(an, am.offline("pump-1", "l1", T0 + 30, T0_NS))
    reasons, _ = run(an, am.observe(reading(90, 31), high(90), T0 + 31))
    assert reasons == ["by_design"]
    _, pubs = run(an, am.online("pump-1", T0 + 32))
    # offline returned (latched, high priority), the held threshold alert goes out
    assert events(pubs) == [("offline", "returned"), ("threshold_high", "raised")]


def test_clear_of_an_alert_whose_raise_was_never_published_is_not_published() -> None:
    am, an = mgr(clear_after=1)
    an.out_of_service({"equipment": "pump-1", "by": "op", "reason": "m"}, T0)
    an.drain()
    run(an, am.observe(reading(90, 0), high(90), T0))
    an.out_of_service({"equipment": "pump-1", "by": "op", "on": False}, T0)
    assert events(an.drain()) == [("threshold_high", "raised")]
    an.out_of_service({"equipment": "pump-1", "by": "op", "reason": "m"}, T0)
    assert retained(an.drain())["active/pump-1/temp/threshold_high"] == b""
    reasons, pubs = run(an, am.observe(reading(50, 1), NORMAL, T0))
    # returned while out of service, never shown again: nothing to ack, it ends
    assert reasons == ["oos"] and pubs == [] and am.active_count == 0


def test_flood_holds_low_and_medium_but_not_critical_and_ends() -> None:
    am, an = mgr(clear_after=1)
    pubs: list[Publish] = []
    for i in range(12):  # 12 raises on one line within 3 minutes
        eq = f"pump-{i}"
        sc = low_z(4.0)
        _, p = run(an, am.observe(reading(4.0, i * 15, eq=eq), sc, T0 + i))
        pubs += p
    flood_msgs = [p for p in pubs if p.topic == "flood/l1"]
    assert len(flood_msgs) == 1 and orjson.loads(flood_msgs[0].body)["active"] is True
    assert len([p for p in pubs if p.alert is not None]) <= 10
    assert an.suppressed["flood"] >= 1
    # a critical raise during the flood still goes out
    crit = Score(None, [Finding(THRESHOLD_HIGH, "critical", 200, 120, "temp 200 critical")])
    reasons, p = run(an, am.observe(reading(200, 181, eq="pump-x"), crit, T0 + 2))
    assert reasons == [None] and events(p) == [("threshold_high", "raised")]
    # 10 minutes later fewer than 5 raises in the window: the flood ends, held ones go out
    an.advance(T0_NS + 181 * SEC + 600 * SEC)
    end = an.drain()
    body = orjson.loads(retained(end)["flood/l1"])
    assert body["active"] is False and body["held"] == {"low": 2}
    assert len(events(end)) == 2  # the two held, still active
    assert an.flood_seconds["l1"] > 600


def test_stale_marked_once() -> None:
    am, an = mgr(stale_after_s=100)
    run(an, am.observe(reading(90, 0), high(90), T0))
    an.tick(T0 + 50)
    assert an.drain() == []
    an.tick(T0 + 101)
    (p,) = an.drain()
    assert p.alert is not None and p.alert.to_event()["stale"] is True
    an.tick(T0 + 200)
    assert an.drain() == [] and an.stale_count(T0 + 200) == 1


def test_annunciator_snapshot_round_trip_keeps_chatter_and_flood() -> None:
    am, an = mgr(clear_after=1, ack_required=[])
    for t in range(8):
        v = 90.0 if t % 2 == 0 else 50.0
        run(an, am.observe(reading(v, t), high(v) if v > 85 else NORMAL, T0 + t))
    assert an.chattering == 1
    an2 = Annunciator(an.cfg, am)
    an2.restore(an.snapshot())
    assert an2.chattering == 1 and an2.signal_ns == an.signal_ns
    reasons, _ = run(an2, am.observe(reading(90, 8), high(90), T0 + 8))
    assert reasons == ["chatter"]  # no duplicate raise after the restart
    with pytest.raises(ValueError):
        an2.restore(b"{}")


def test_policy_default_is_shared() -> None:
    assert AlarmPolicy() == RuleSet([]).resolve("a", "b").policy


def test_priority_mix_warning() -> None:
    from gateway.core.alarms import priority_mix

    assert priority_mix(["high"] * 4) is None  # too few to tell
    assert priority_mix(["low"] * 8 + ["medium"] * 2 + [None] * 5) is None
    msg = priority_mix(["high"] * 5 + ["low"])
    assert msg is not None and "17/0/83" in msg


def test_realarm_is_flagged_once() -> None:
    am, _ = mgr(escalate_after_s=60)
    assert len(am.observe(reading(90, 0), high(90), T0)) == 1
    (e,) = am.tick(T0 + 61)
    assert e.state == "escalated" and e.to_event()["realarm"] is True
    assert am.tick(T0 + 200) == []


def test_a_pending_on_delay_does_not_stop_other_kinds_counting_normal() -> None:
    am, _ = mgr([Rule(sensor="temp", high=85.0, on_delay_s=60)], clear_after=1, ack_required=[])
    (z,) = am.observe(reading(4, 0), low_z(4), T0)  # a z-score alert, no on-delay of its own
    # a threshold breach waiting out its on-delay: the z-score part of the reading is normal
    (c,) = am.observe(reading(90, 1), high(90), T0)
    assert (c.id, c.state) == (z.id, "cleared")
