"""Series that come and go (issue 20), against a real gateway and broker: the series cap
holds across a restart, idle series expire and make way, a forgotten equipment's
retained topics are emptied."""

from __future__ import annotations

import time
import uuid

from tests.harness import Gateways, Message, MqttProbe, uid
from tests.servers import Mosquitto


def retained(port: int, topic_filter: str) -> list[Message]:
    """What a subscriber arriving now gets for `topic_filter` (a sentinel ends the wait)."""
    sentinel = f"test/sentinel/{uuid.uuid4().hex}"
    with MqttProbe(port, [topic_filter, sentinel]) as late:
        late.publish(sentinel, b"end")
        late.wait_for(sentinel)
        return [m for m in late.messages() if m.topic != sentinel]


def publish_series(probe: MqttProbe, line: str, eq: str, names: list[str]) -> None:
    """One reading per sensor: half with a payload ts, half without (receive time)."""
    now_ms = int(time.time() * 1000)
    for i, sensor in enumerate(names):
        body = {"value": 1.0, "ts": now_ms} if i % 2 else 1.0
        probe.publish(f"plant/{line}/{eq}/{sensor}", body)


def test_max_series_holds_across_a_restart(spawn: Gateways, probe: MqttProbe) -> None:
    gw = spawn("[validation]\nmax_series = 50\n")
    line, eq = uid("cap-line"), uid("cap")
    publish_series(probe, line, eq, [f"old{i:02d}" for i in range(60)])
    gw.wait_metric("edge_readings_rejected_total", lambda v: v == 10, reason="series_limit")
    gw.wait_metric("edge_series_active", lambda v: v == 50)
    assert gw.stop() == 0
    gw.start()
    assert gw.metric("edge_series_active") <= 50
    publish_series(probe, line, eq, [f"new{i:02d}" for i in range(50)])
    # the 50 old series are restored into the registry: every new one is refused
    gw.wait_metric("edge_readings_rejected_total", lambda v: v == 50, reason="series_limit")
    publish_series(probe, line, eq, ["old00", "old01"])  # known ones still pass
    gw.wait_metric("edge_readings_received_total", lambda v: v == 2)
    time.sleep(1.5)  # the 1 s tick sets the gauge
    assert gw.metric("edge_series_active") == 50


def test_idle_series_expire_and_new_equipment_is_admitted(
    spawn: Gateways, probe: MqttProbe
) -> None:
    n = 1000
    gw = spawn(f"[validation]\nmax_series = {n}\nseries_idle_s = 2\n")
    line = uid("churn-line")
    old, new = uid("churn-old"), uid("churn-new")
    publish_series(probe, line, old, [f"s{i:04d}" for i in range(n)])
    gw.wait_metric("edge_series_active", lambda v: v == n, timeout=20)
    gw.wait_metric("edge_series_expired_total", lambda v: v == n, timeout=20, reason="idle")
    gw.wait_metric("edge_series_active", lambda v: v == 0)
    # a restart in between changes nothing: the expired series stay expired
    assert gw.stop() == 0
    gw.start()
    assert gw.metric("edge_series_active") == 0
    publish_series(probe, line, new, [f"s{i:04d}" for i in range(n)])
    gw.wait_metric("edge_readings_received_total", lambda v: v == n, timeout=20)
    gw.wait_metric("edge_readings_written_total", lambda v: v == n, timeout=20)
    assert gw.metric("edge_readings_rejected_total", reason="series_limit") == 0
    gw.wait_metric("edge_series_active", lambda v: v == n)


def test_forget_command_empties_retained_topics(
    spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto
) -> None:
    gw = spawn("[alerts]\noffline_after_s = 1\nack_required = []\n")
    eq = uid("decom")
    probe.subscribe(f"alerts/events/{eq}/#")
    probe.publish(f"plant/line-d/{eq}/temperature", 20.0)
    [raised] = probe.wait_for(f"alerts/events/{eq}/#", timeout=10)
    assert raised.json()["kind"] == "offline"
    deadline = time.monotonic() + 10
    while not retained(mosquitto.port, f"status/{eq}") and time.monotonic() < deadline:
        time.sleep(0.1)
    [status] = retained(mosquitto.port, f"status/{eq}")
    assert status.json()["status"] == "offline"
    assert len(retained(mosquitto.port, f"alerts/active/{eq}/#")) == 1

    probe.publish(f"gateway/{gw.client_id}/forget", {"equipment": eq, "by": "maintenance"})
    msgs = probe.wait_for(f"alerts/events/{eq}/#", count=2)
    cleared = msgs[1].json()
    assert (cleared["id"], cleared["state"]) == (raised.json()["id"], "cleared")
    assert cleared["reason"] == "forgotten" and "by maintenance" in cleared["message"]
    deadline = time.monotonic() + 10
    while retained(mosquitto.port, f"status/{eq}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert retained(mosquitto.port, f"status/{eq}") == []
    assert retained(mosquitto.port, f"alerts/active/{eq}/#") == []
    assert gw.log_text().count(f"equipment {eq} forgotten") == 1
    gw.wait_metric("edge_series_active", lambda v: v == 0)  # its series went with it


def test_silent_equipment_is_forgotten_after_forget_after_s(
    spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto
) -> None:
    gw = spawn("[alerts]\noffline_after_s = 1\nforget_after_s = 3\nack_required = []\n")
    eq = uid("silent")
    probe.subscribe(f"alerts/events/{eq}/#")
    probe.publish(f"plant/line-d/{eq}/temperature", 20.0)
    msgs = probe.wait_for(f"alerts/events/{eq}/#", count=2, timeout=15)
    assert [m.json()["state"] for m in msgs] == ["raised", "cleared"]
    assert msgs[1].json()["reason"] == "forgotten"
    deadline = time.monotonic() + 10
    while retained(mosquitto.port, f"status/{eq}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert retained(mosquitto.port, f"status/{eq}") == []
    assert retained(mosquitto.port, f"alerts/active/{eq}/#") == []
    assert gw.log_text().count(f"equipment {eq} forgotten (silent for") == 1
