"""Alerts end to end: z-score and threshold alerts, offline/online, acknowledgements.

Each test runs its own `edge-gateway run` subprocess against the session broker and
VictoriaMetrics; equipment names are unique per test, so retained topics do not clash.
"""

from __future__ import annotations

import math
import statistics
import time
import uuid
from typing import Any

import pytest

from tests.harness import GatewayProcess, Gateways, Message, MqttProbe, uid
from tests.servers import Mosquitto, VictoriaMetrics

# SPEC §6's auto-clear for every priority; latching of high/critical alerts (the
# default `ack_required`) is tested in test_alarm_management.py
AUTO_CLEAR = "[alerts]\nack_required = []\n"


def retained(port: int, topic_filter: str) -> list[Message]:
    """What a subscriber arriving now gets for `topic_filter` (retained messages).

    The broker queues the retained messages of a SUBSCRIBE before it handles a PUBLISH
    the same client sends after the SUBACK: a sentinel published then, arriving back,
    marks the end of them (no sleep that a slow broker could outrun).
    """
    sentinel = f"test/sentinel/{uuid.uuid4().hex}"
    with MqttProbe(port, [topic_filter, sentinel]) as late:
        late.publish(sentinel, b"end")
        late.wait_for(sentinel)
        return [m for m in late.messages() if m.topic != sentinel]


def events(probe: MqttProbe, eq: str, sensor: str = "+") -> list[dict[str, Any]]:
    return [m.json() for m in probe.messages(f"alerts/events/{eq}/{sensor}")]


def statuses(probe: MqttProbe, eq: str) -> list[str]:
    return [m.json()["status"] for m in probe.messages(f"status/{eq}")]


def settle(gw: GatewayProcess, probe: MqttProbe, received: int) -> None:
    """Wait until the gateway processed `received` readings and published all they caused.

    The marker: one malformed message after them. Its dead letter leaves through the
    same in-order publish queue as alerts and status, after what the earlier readings
    raised (they were processed, and their transitions queued, in an earlier batch).
    """
    gw.wait_metric("edge_readings_received_total", lambda v: v >= received, source="mqtt")
    marker = uid("marker")
    probe.subscribe(gw.deadletter_topic)
    probe.publish(f"plant/marker/{marker}/x", b"marker, not JSON")
    probe.wait_for(lambda m: m.topic == gw.deadletter_topic and marker.encode() in m.payload)


# ---------------------------------------------------------------------- zscore

WARMUP = [50.0 + 0.5 * math.sin(i * 1.7) for i in range(40)]  # bounded, deterministic noise
BANDS = {"s_low": (3.5, "low"), "s_medium": (4.5, "medium"), "s_critical": (8.0, "critical")}


def test_zscore_spike_raises_one_alert_per_band_then_clears(
    spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    # every band from a single reading: the SPEC's z-score alerting, without the default
    # persistence for low/medium (tested in test_zscore_low_band_needs_a_persisting_run)
    gw = spawn("[detection]\nzscore_alert_after = 1\n" + AUTO_CLEAR)
    eq = uid("z-eq")
    probe.subscribe(f"alerts/events/{eq}/+", f"alerts/active/{eq}/#", f"status/{eq}")
    # the detector's baseline: every value learned so far (window 100 > all of them)
    learned = list(WARMUP)
    for i in range(30, len(learned)):  # precondition: no warm-up value is itself anomalous
        base = learned[:i]
        assert abs(learned[i] - statistics.mean(base)) < 3 * statistics.stdev(base)
    # one more reading at 2.5 sigma: scored, below the threshold, so learned as is
    learned.append(statistics.mean(learned) + 2.5 * statistics.stdev(learned))
    mean, std = statistics.mean(learned), statistics.stdev(learned)

    t0_ms = (int(time.time()) - 100) * 1000
    ts_of: dict[str, list[int]] = {s: [] for s in BANDS}

    def send(sensor: str, value: float) -> None:
        ts = t0_ms + 10 * len(ts_of[sensor])
        ts_of[sensor].append(ts)
        probe.publish(f"plant/line-z/{eq}/{sensor}", {"value": value, "ts": ts, "unit": "bar"})

    for sensor in BANDS:
        for v in learned:
            send(sensor, v)
    settle(gw, probe, 3 * len(learned))
    assert events(probe, eq) == []
    assert statuses(probe, eq) == ["online"]

    spikes = {s: mean + k * std for s, (k, _) in BANDS.items()}
    for sensor, v in spikes.items():
        send(sensor, v)
    raised = probe.wait_for(f"alerts/events/{eq}/+", count=3)
    settle(gw, probe, 3 * (len(learned) + 1))
    assert len(events(probe, eq)) == 3
    by_sensor = {m.json()["sensor"]: m.json() for m in raised}
    for sensor, (k, severity) in BANDS.items():
        ev = by_sensor[sensor]
        assert (ev["kind"], ev["state"], ev["severity"]) == ("zscore", "raised", severity)
        assert ev["equipment"] == eq and ev["line"] == "line-z"
        assert ev["z"] == pytest.approx(k, rel=1e-6)
        assert ev["mean"] == pytest.approx(mean, rel=1e-9)
        assert ev["std"] == pytest.approx(std, rel=1e-6)
        assert ev["value"] == spikes[sensor] and ev["threshold"] == 3.0
        # the severity band the event's own z implies
        band = "critical" if ev["z"] >= 5 else "medium" if ev["z"] >= 4 else "low"
        assert band == severity
        assert ev["ts"].endswith("Z") and ev["raised_at"].endswith("Z")
        assert ev["message"]
    assert probe.wait_for(lambda m: m.topic == f"status/{eq}" and b"anomaly" in m.payload)
    assert statuses(probe, eq) == ["online", "anomaly"]

    # a late subscriber gets the active alerts and the status, retained
    active = retained(mosquitto.port, f"alerts/active/{eq}/#")
    assert sorted(m.topic for m in active) == sorted(
        f"alerts/active/{eq}/{s}/zscore" for s in BANDS
    )
    for m in active:
        doc = m.json()
        assert m.retain and doc["state"] == "raised" and doc["id"] == by_sensor[doc["sensor"]]["id"]
    [status] = retained(mosquitto.port, f"status/{eq}")
    assert status.retain and status.json()["status"] == "anomaly"
    assert status.json()["equipment"] == eq
    assert gw.metric("edge_alerts_active") == 3

    # clear_after = 5: four normal readings are not enough ...
    for _ in range(4):
        for sensor in BANDS:
            send(sensor, mean)
    settle(gw, probe, 3 * (len(learned) + 5))
    assert [e["state"] for e in events(probe, eq)] == ["raised"] * 3
    # ... the fifth clears every alert, once
    for sensor in BANDS:
        send(sensor, mean)
    probe.wait_for(f"alerts/events/{eq}/+", count=6)
    probe.wait_for(lambda m: m.topic == f"status/{eq}" and b'"online"' in m.payload, count=2)
    settle(gw, probe, 3 * (len(learned) + 6))
    evs = events(probe, eq)
    for sensor in BANDS:
        mine = [e for e in evs if e["sensor"] == sensor]
        assert [e["state"] for e in mine] == ["raised", "cleared"]
        assert mine[0]["id"] == mine[1]["id"]
        assert mine[1]["severity"] == BANDS[sensor][1]  # severity never drops
    assert statuses(probe, eq) == ["online", "anomaly", "online"]
    cleared_active = [m for m in probe.messages(f"alerts/active/{eq}/#") if not m.payload]
    assert len(cleared_active) == 3
    assert retained(mosquitto.port, f"alerts/active/{eq}/#") == []
    [status] = retained(mosquitto.port, f"status/{eq}")
    assert status.json()["status"] == "online"
    assert gw.metric("edge_alerts_active") == 0
    for state in ("raised", "cleared"):
        assert gw.metric("edge_alerts_total", kind="zscore", state=state) == 3

    # InfluxDB side: the readings' z and anomaly fields, and the alert points
    n = len(learned) + 6
    for sensor, (k, severity) in BANDS.items():
        anomaly = victoria.series_values("readings_anomaly", equipment=eq, sensor=sensor)
        zs = victoria.series_values("readings_z", equipment=eq, sensor=sensor)
        if len(anomaly) < n or len(zs) < n - 30:
            victoria.wait_for_count(
                victoria.selector("readings_anomaly", equipment=eq, sensor=sensor), n
            )
            victoria.wait_for_count(
                victoria.selector("readings_z", equipment=eq, sensor=sensor), n - 30
            )
            anomaly = victoria.series_values("readings_anomaly", equipment=eq, sensor=sensor)
            zs = victoria.series_values("readings_z", equipment=eq, sensor=sensor)
        spike_ts = ts_of[sensor][len(learned)]
        assert len(anomaly) == n
        assert [ts for ts, v in anomaly if v == 1] == [spike_ts]
        assert len(zs) == n - 30  # no z while warming up (the first 30 readings)
        assert dict(zs)[spike_ts] == pytest.approx(k, rel=1e-6)
        match = victoria.selector("alerts_value", equipment=eq, sensor=sensor, kind="zscore")
        victoria.wait_for_count(match, 2)
        [series] = victoria.export(match)
        assert series["metric"]["severity"] == severity
        # VM keeps ~12 significant digits
        assert sorted(series["values"]) == pytest.approx(sorted([spikes[sensor], mean]), rel=1e-9)
        z_pts = victoria.series_values("alerts_z", equipment=eq, sensor=sensor, kind="zscore")
        assert z_pts[0][1] == pytest.approx(k, rel=1e-6)


# ------------------------------------------------------------------- threshold

RULES = """
[[rules]]
equipment = "thr-*"
sensor = "temperature"
high = 85.0
low = 15.0
critical_high = 100.0
"""


def test_threshold_rule_breach_escalation_and_clear(
    spawn: Gateways, probe: MqttProbe, victoria: VictoriaMetrics
) -> None:
    gw = spawn(RULES + AUTO_CLEAR + "chatter_count = 10\n")  # 3 raises in seconds
    eq = uid("thr")
    probe.subscribe(f"alerts/events/{eq}/+")
    topic = f"plant/line-t/{eq}/temperature"
    normal = [50.0] * 5
    values = [
        50.0,
        90.0,
        *normal,  # high, cleared
        120.0,
        *normal,  # critical, cleared
        10.0,
        *normal,  # low, cleared
        90.0,
        120.0,
        *normal,  # high, escalated to critical, cleared
    ]
    assert len(values) < 30  # z-score stays in warm-up: only the rule speaks
    for v in values:
        probe.publish(topic, {"value": v})
    expected = [
        ("threshold_high", "raised", "high", 90.0, 85.0),
        ("threshold_high", "cleared", "high", 50.0, 85.0),
        ("threshold_high", "raised", "critical", 120.0, 100.0),
        ("threshold_high", "cleared", "critical", 50.0, 100.0),
        ("threshold_low", "raised", "high", 10.0, 15.0),
        ("threshold_low", "cleared", "high", 50.0, 15.0),
        ("threshold_high", "raised", "high", 90.0, 85.0),
        ("threshold_high", "escalated", "critical", 120.0, 100.0),
        ("threshold_high", "cleared", "critical", 50.0, 100.0),
    ]
    probe.wait_for(f"alerts/events/{eq}/temperature", count=len(expected))
    settle(gw, probe, len(values))
    evs = events(probe, eq)
    assert [(e["kind"], e["state"], e["severity"], e["value"], e["threshold"]) for e in evs] == (
        expected
    )
    ids = [e["id"] for e in evs]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[4] == ids[5]
    assert ids[6] == ids[7] == ids[8] and len({ids[0], ids[2], ids[4], ids[6]}) == 4
    assert gw.metric("edge_alerts_total", kind="threshold_high", severity="critical") == 4
    assert gw.metric("edge_alerts_total", kind="threshold_low", state="raised") == 1
    match = victoria.selector("alerts_value", equipment=eq)
    assert victoria.wait_for_count(match, len(expected)) == len(expected)
    series = {
        (s["metric"]["kind"], s["metric"]["severity"]): len(s["values"])
        for s in victoria.export(match)
    }
    assert series == {
        ("threshold_high", "high"): 3,
        ("threshold_high", "critical"): 4,
        ("threshold_low", "high"): 2,
    }


# --------------------------------------------------------------------- offline


def test_offline_after_silence_and_back_online(
    spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto
) -> None:
    gw = spawn("[alerts]\noffline_after_s = 2\nack_required = []\n")
    eq = uid("off")
    probe.subscribe(f"alerts/events/{eq}/#", f"status/{eq}")
    probe.publish(f"plant/line-o/{eq}/temperature", 20.0)
    t_last = time.monotonic()
    probe.wait_for(f"status/{eq}")
    [raised] = probe.wait_for(f"alerts/events/{eq}/#", timeout=6)
    silent = time.monotonic() - t_last
    # not before offline_after_s (the property); how late it may come is bounded by the
    # wait above (6 s), not asserted: the 1 s tick on a loaded machine is no deadline
    assert silent >= 1.9
    ev = raised.json()
    assert raised.topic == f"alerts/events/{eq}/*"
    assert (ev["kind"], ev["sensor"], ev["state"]) == ("offline", "*", "raised")
    assert ev["equipment"] == eq and ev["line"] == "line-o" and ev["threshold"] == 2.0
    probe.wait_for(lambda m: m.topic == f"status/{eq}" and b"offline" in m.payload)
    [status] = retained(mosquitto.port, f"status/{eq}")
    assert status.json()["status"] == "offline"
    [active] = retained(mosquitto.port, f"alerts/active/{eq}/#")
    assert active.topic == f"alerts/active/{eq}/*/offline" and active.json()["id"] == ev["id"]

    probe.publish(f"plant/line-o/{eq}/temperature", 21.0)
    msgs = probe.wait_for(f"alerts/events/{eq}/#", count=2)
    cleared = msgs[1].json()
    assert (cleared["kind"], cleared["state"], cleared["id"]) == ("offline", "cleared", ev["id"])
    probe.wait_for(f"status/{eq}", count=3)
    assert statuses(probe, eq) == ["online", "offline", "online"]
    assert retained(mosquitto.port, f"alerts/active/{eq}/#") == []
    assert gw.metric("edge_alerts_total", kind="offline", state="cleared") == 1


# ------------------------------------------------------------------------- ack


def test_acknowledge_by_command_and_unknown_ids_counted(
    spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto
) -> None:
    gw = spawn(RULES)
    eq = uid("thr-ack")
    probe.subscribe(f"alerts/events/{eq}/+", f"alerts/active/{eq}/#")
    probe.publish(f"plant/line-a/{eq}/temperature", 95.0)
    [raised] = probe.wait_for(f"alerts/events/{eq}/+")
    alert_id = raised.json()["id"]

    probe.publish("alerts/ack", {"id": alert_id, "by": "op"})
    msgs = probe.wait_for(f"alerts/events/{eq}/+", count=2)
    ack = msgs[1].json()
    assert (ack["id"], ack["state"], ack["acknowledged_by"]) == (alert_id, "acknowledged", "op")
    assert ack["severity"] == "high" and ack["kind"] == "threshold_high"
    # the active topic is updated right after the event: wait for it, then subscribe late
    probe.wait_for(
        lambda m: m.topic.startswith(f"alerts/active/{eq}/") and b"acknowledged" in m.payload
    )
    [active] = retained(mosquitto.port, f"alerts/active/{eq}/#")
    assert active.retain
    assert active.json()["state"] == "acknowledged"
    assert active.json()["acknowledged_by"] == "op"
    assert gw.metric("edge_alert_acks_rejected_total") == 0

    probe.publish("alerts/ack", {"id": str(uuid.uuid4()), "by": "op"})  # unknown
    gw.wait_metric("edge_alert_acks_rejected_total", lambda v: v == 1)
    probe.publish("alerts/ack", {"id": alert_id, "by": "op2"})  # already acknowledged
    gw.wait_metric("edge_alert_acks_rejected_total", lambda v: v == 2)
    probe.publish("alerts/ack", b"not json")
    probe.publish("alerts/ack", {"by": "op"})  # no id
    gw.wait_metric("edge_alert_acks_rejected_total", lambda v: v == 4)
    settle(gw, probe, 1)  # anything the rejected acks published would be out by now
    assert len(events(probe, eq)) == 2
    assert gw.metric("edge_alerts_total", state="acknowledged") == 1
    # acks are commands, not readings (the one reject is settle's marker)
    assert gw.metric("edge_readings_rejected_total") == 1
    assert gw.metric("edge_readings_received_total") == 1


# ------------------------------------------------------------------ alert burst


def test_alert_burst_is_published_without_a_log_line_per_message(
    spawn: Gateways, probe: MqttProbe
) -> None:
    """300 threshold alerts at once: ~900 publishes. aiomqtt used to log a WARNING for
    each publish call past 10 in flight; the log must stay one line per state change."""
    line = uid("burst")
    gw = spawn(f'[[rules]]\nline = "{line}"\nsensor = "temperature"\nhigh = 100.0\n')
    probe.subscribe("alerts/events/+/temperature")
    ts_ms = (int(time.time()) - 60) * 1000
    n = 300
    infos = [
        probe.client.publish(
            f"plant/{line}/{line}-eq{i:03d}/temperature",
            f'{{"value": 150.0, "ts": {ts_ms}}}'.encode(),
            qos=1,
        )
        for i in range(n)
    ]
    for info in infos:
        info.wait_for_publish(10)
    mine = lambda m: m.topic.startswith(f"alerts/events/{line}-eq")  # noqa: E731
    got = probe.wait_for(mine, count=n, timeout=20)
    assert {m.json()["state"] for m in got} == {"raised"}
    assert len({m.topic for m in got}) == n
    lines = [x for x in gw.log_text().splitlines() if x.strip()]
    assert not [x for x in lines if "pending publish" in x]
    assert len(lines) < 20, "\n".join(lines[-30:])


def test_zscore_low_band_needs_a_persisting_run_critical_raises_at_once(
    spawn: Gateways, probe: MqttProbe
) -> None:
    """Defaults: a single 3.5-sigma reading is counted, not published; five in a row raise;
    one 8-sigma reading raises at once."""
    gw = spawn()
    eq = uid("zp-eq")
    probe.subscribe(f"alerts/events/{eq}/+")
    learned = [50.0 + 0.5 * math.sin(i * 1.7) for i in range(100)]  # a full window
    mean, std = statistics.mean(learned), statistics.stdev(learned)
    t0_ms = (int(time.time()) - 100) * 1000
    sent = {"low": 0, "crit": 0}

    def send(sensor: str, value: float) -> None:
        ts = t0_ms + 10 * sent[sensor]
        sent[sensor] += 1
        probe.publish(f"plant/line-z/{eq}/{sensor}", {"value": value, "ts": ts})

    for sensor in sent:
        for v in learned:
            send(sensor, v)
    send("low", mean + 3.5 * std)  # one excursion: too short
    send("low", mean)
    send("crit", mean + 8 * std)  # critical: at once
    [crit] = probe.wait_for(f"alerts/events/{eq}/+")
    assert (crit.json()["sensor"], crit.json()["severity"]) == ("crit", "critical")
    gw.wait_metric("edge_alarms_suppressed_total", lambda v: v == 1, reason="on_delay")
    assert len(probe.messages(f"alerts/events/{eq}/+")) == 1
    # a persisting run below the critical band: the baseline learns each clipped, so z
    # falls a little per reading; on the 5th reading beyond 3 sigma one alert is raised,
    # its severity that of the run's largest |z| (4.5: medium)
    for i in range(6):
        send("low", mean + 4.5 * std)
        if i == 3:
            settle(gw, probe, 2 * len(learned) + 2 + 1 + 4)
            assert probe.messages(f"alerts/events/{eq}/low") == []  # 4 are not enough
    probe.wait_for(f"alerts/events/{eq}/low", count=1)
    settle(gw, probe, 2 * len(learned) + 2 + 1 + 6)
    low = [m.json() for m in probe.messages(f"alerts/events/{eq}/low")]
    assert [(e["state"], e["severity"]) for e in low] == [("raised", "medium")]
