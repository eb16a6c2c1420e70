"""Alarm management over the real broker (docs/alarms.md): returned-unacknowledged,
shelving, out of service, chattering and flood, with the audit in a real InfluxDB.

Readings carry payload timestamps one second apart (sent at once), so the signal
windows (chattering, flood) run on the readings' clock as in a replay.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.harness import Gateways, MqttProbe, uid
from tests.integration.test_gateway_alerts import events, retained, settle
from tests.servers import InfluxDB1, Mosquitto
from tests.stores import InfluxStore

RULE = (
    '[[rules]]\nequipment = "{eq}*"\nsensor = "temperature"\nhigh = 85.0\ncritical_high = 120.0\n'
)


def start_ms() -> int:
    return int(time.time() * 1000) - 3_600_000  # an hour ago: timestamps stay in the past


def audit(influx: InfluxDB1, db: str) -> list[dict[str, Any]]:
    res = influx.query("SELECT * FROM alarm_audit", db)["results"][0]
    if "series" not in res:
        return []
    cols = res["series"][0]["columns"]
    return [dict(zip(cols, row, strict=True)) for row in res["series"][0]["values"]]


def test_returned_latches_until_ack_and_the_ack_is_audited(
    mosquitto: Mosquitto, influxdb1: InfluxDB1, tmp_path: Path, probe: MqttProbe
) -> None:
    store = InfluxStore(influxdb1, uid("alarms").replace("-", "_"))
    pool = Gateways(mosquitto.port, store.url, tmp_path, influx=store.gateway_influx)
    try:
        eq = uid("ret")
        gw = pool(RULE.format(eq=eq) + "[alerts]\nclear_after = 2\n")
        probe.subscribe(f"alerts/events/{eq}/+")
        base = start_ms()
        topic = f"plant/line-r/{eq}/temperature"
        for i, v in enumerate([50.0, 90.0, 50.0, 50.0]):
            probe.publish(topic, {"value": v, "ts": base + i * 1000})
        probe.wait_for(f"alerts/events/{eq}/temperature", count=2)
        raised, returned = events(probe, eq)
        assert (raised["state"], returned["state"]) == ("raised", "returned")
        assert returned["id"] == raised["id"] and returned["duration_s"] == 2.0
        assert (returned["priority"], returned["peak"]) == ("high", 90.0)
        active = f"alerts/active/{eq}/temperature/threshold_high"
        (still,) = retained(mosquitto.port, active)
        assert still.json()["state"] == "returned"  # stays on the list until acknowledged
        probe.publish("alerts/ack", {"id": raised["id"], "by": "op-7"})
        probe.wait_for(f"alerts/events/{eq}/temperature", count=3)
        cleared = events(probe, eq)[2]
        assert (cleared["state"], cleared["acknowledged_by"]) == ("cleared", "op-7")
        assert _wait_retained(mosquitto, active, present=False) == []
        settle(gw, probe, 4)
        deadline = time.monotonic() + 10
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not rows:
            rows = audit(influxdb1, store.db)
            time.sleep(0.2)
        assert [(r["action"], r["equipment"], r["id"], r["by"]) for r in rows] == [
            ("ack", eq, raised["id"], "op-7")
        ]
    finally:
        assert not pool.close()


def test_shelve_rejects_then_holds_publishes_and_unshelve_releases(
    spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto
) -> None:
    eq = uid("shelf")
    gw = spawn(RULE.format(eq=eq))
    probe.subscribe(f"alerts/events/{eq}/+")
    base = start_ms()
    topic = f"plant/line-s/{eq}/temperature"
    probe.publish(topic, {"value": 90.0, "ts": base})
    probe.wait_for(f"alerts/events/{eq}/temperature")
    (a,) = events(probe, eq)
    # a shelve without a reason is rejected and counted
    probe.publish("alerts/shelve", {"id": a["id"], "by": "op", "duration_s": 600})
    gw.wait_metric("edge_alarm_commands_rejected_total", lambda v: v == 1, reason="missing_reason")
    probe.publish(
        "alerts/shelve", {"id": a["id"], "by": "op", "reason": "probe swap", "duration_s": 600}
    )
    shelved = f"alerts/shelved/{eq}/temperature/threshold_high"
    probe.subscribe(shelved)
    probe.wait_for(shelved)
    body = probe.messages(shelved)[0].json()
    assert (body["id"], body["by"], body["reason"]) == (a["id"], "op", "probe swap")
    assert _wait_retained(mosquitto, f"alerts/active/{eq}/#", present=False) == []
    probe.publish(topic, {"value": 130.0, "ts": base + 1000})  # escalates, not published
    settle(gw, probe, 2)
    assert len(events(probe, eq)) == 1
    # (the alarm metrics are exported once a second)
    gw.wait_metric("edge_alarms_suppressed_total", lambda v: v == 1, reason="shelved")
    assert gw.metric("edge_alarms_shelved") == 1
    probe.publish("alerts/unshelve", {"id": a["id"], "by": "op"})
    probe.wait_for(f"alerts/events/{eq}/temperature", count=2)
    back = events(probe, eq)[1]
    assert (back["id"], back["state"], back["severity"]) == (a["id"], "escalated", "critical")
    assert _wait_retained(mosquitto, shelved, present=False) == []


def test_out_of_service_suppresses_and_publishes_what_is_active_on_return(
    spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto
) -> None:
    eq = uid("oos")
    gw = spawn(RULE.format(eq=eq))
    probe.subscribe(f"alerts/events/{eq}/+")
    probe.publish("alerts/oos", {"equipment": eq, "by": "op", "reason": "overhaul", "on": True})
    (oos,) = [m for m in _wait_retained(mosquitto, f"alerts/oos/{eq}")]
    assert oos.json()["reason"] == "overhaul"
    probe.publish(f"plant/line-o/{eq}/temperature", {"value": 95.0, "ts": start_ms()})
    settle(gw, probe, 1)
    assert events(probe, eq) == []
    gw.wait_metric("edge_alarms_suppressed_total", lambda v: v == 1, reason="oos")
    probe.publish("alerts/oos", {"equipment": eq, "by": "op", "on": False})
    probe.wait_for(f"alerts/events/{eq}/temperature")
    assert [e["state"] for e in events(probe, eq)] == ["raised"]
    assert _wait_retained(mosquitto, f"alerts/oos/{eq}", present=False) == []


def _wait_retained(mosquitto: Mosquitto, topic: str, present: bool = True) -> list[Any]:
    """The retained messages on `topic` once there are some (or, `present=False`, none).

    An urgent alert event may overtake a retained removal queued before it (severe
    first), so a test waits for the retained state rather than assuming the order.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = retained(mosquitto.port, topic)
        if bool(got) == present:
            return got
        time.sleep(0.1)
    raise AssertionError(f"retained on {topic}: {got}")


def test_value_alternating_across_a_limit_for_a_minute_is_chattering(
    spawn: Gateways, probe: MqttProbe
) -> None:
    eq = uid("chat")
    gw = spawn(RULE.format(eq=eq) + "[alerts]\nclear_after = 1\nack_required = []\n")
    probe.subscribe(f"alerts/events/{eq}/+")
    base = start_ms()
    topic = f"plant/line-c/{eq}/temperature"
    for i in range(60):
        probe.publish(topic, {"value": 90.0 if i % 2 == 0 else 50.0, "ts": base + i * 1000})
    settle(gw, probe, 60)
    evs = events(probe, eq)
    raises = [e for e in evs if e["state"] == "raised"]
    assert len(raises) <= 3
    assert sum(1 for e in evs if e.get("chattering") is True) == 1
    gw.wait_metric("edge_alarms_chattering", lambda v: v == 1)
    gw.wait_metric("edge_alarms_suppressed_total", lambda v: v >= 50, reason="chatter")


def test_flood_on_a_line_is_summarised_and_critical_still_goes_out(
    spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto
) -> None:
    tag = uid("fl")
    line = f"line-{tag}"
    rules = (
        f'[[rules]]\nline = "{line}"\nsensor = "temperature"\nhigh = 85.0\n'
        'critical_high = 120.0\npriority = "low"\n'
        f'[[rules]]\nline = "{line}"\nsensor = "pressure"\ncritical_high = 10.0\n'
        'priority = "critical"\n'
    )
    gw = spawn(rules)
    probe.subscribe("alerts/events/#", f"alerts/flood/{line}")
    base = start_ms()
    for i in range(12):  # 12 low raises on one line within 3 minutes of readings
        probe.publish(
            f"plant/{line}/{tag}-{i}/temperature", {"value": 90.0, "ts": base + i * 15_000}
        )
    probe.publish(f"plant/{line}/{tag}-x/pressure", {"value": 20.0, "ts": base + 181_000})
    settle(gw, probe, 13)
    mine = [m.json() for m in probe.messages("alerts/events/#") if tag in m.topic]
    low = [e for e in mine if e["priority"] == "low" and e["state"] == "raised"]
    crit = [e for e in mine if e["priority"] == "critical"]
    assert len(low) <= 10 and len(crit) == 1
    floods = [m.json() for m in probe.messages(f"alerts/flood/{line}")]
    # one message when the flood starts (the 11th raise); a refresh may follow once 30 s of
    # the readings' clock have passed (the pressure reading is 31 s later, and that clock
    # runs on with the gateway's while no newer reading comes): summarised, not one per raise
    assert floods[0]["active"] is True and floods[0]["raised_10m"] == 11, floods
    assert 1 <= len(floods) <= 2 and all(f["active"] and f["raised_10m"] >= 11 for f in floods)
    gw.wait_metric("edge_alarm_flood_active", lambda v: v == 1, line=line)
    assert gw.metric("edge_alarms_suppressed_total", reason="flood") == 12 - len(low)
    (kept,) = retained(mosquitto.port, f"alerts/flood/{line}")
    assert kept.json()["active"] is True


def test_shelve_and_latched_alert_survive_a_restart_without_duplicate_raises(
    spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto
) -> None:
    eq = uid("rst")
    rule_p = f'[[rules]]\nequipment = "{eq}"\nsensor = "pressure"\nhigh = 10.0\n'
    gw = spawn(RULE.format(eq=eq) + rule_p + "[alerts]\nclear_after = 1\n")
    probe.subscribe(f"alerts/events/{eq}/+")
    base = start_ms()
    t_topic, p_topic = f"plant/line-x/{eq}/temperature", f"plant/line-x/{eq}/pressure"
    probe.publish(t_topic, {"value": 90.0, "ts": base})
    probe.publish(p_topic, {"value": 20.0, "ts": base})
    probe.wait_for(f"alerts/events/{eq}/+", count=2)
    by_sensor = {e["sensor"]: e for e in events(probe, eq)}
    probe.publish(
        "alerts/shelve",
        {"id": by_sensor["temperature"]["id"], "by": "op", "reason": "r", "duration_s": 3600},
    )
    _wait_retained(mosquitto, f"alerts/shelved/{eq}/temperature/threshold_high")
    probe.publish(p_topic, {"value": 5.0, "ts": base + 1000})  # pressure returns, latched
    probe.wait_for(f"alerts/events/{eq}/pressure", count=2)
    assert gw.stop() == 0  # SIGTERM: state saved
    probe.clear()
    gw.start()
    probe.publish(t_topic, {"value": 130.0, "ts": base + 2000})  # still shelved: held
    settle(gw, probe, 1)
    assert events(probe, eq) == []  # no duplicate raise, the shelve held
    gw.wait_metric("edge_alarms_shelved", lambda v: v == 1)
    # the latched pressure alert is still there to acknowledge
    probe.publish("alerts/ack", {"id": by_sensor["pressure"]["id"], "by": "op"})
    probe.wait_for(f"alerts/events/{eq}/pressure")
    assert [e["state"] for e in events(probe, eq)] == ["cleared"]
