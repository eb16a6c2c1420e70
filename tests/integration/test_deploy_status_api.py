"""The status API on a real gateway: GET /api/equipment and GET /api/alerts."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.harness import GatewayProcess, Gateways, MqttProbe, uid
from tests.servers import Mosquitto, http_request


def get(gw: GatewayProcess, path: str) -> tuple[int, Any]:
    status, body = http_request(f"{gw.url}{path}")
    return status, json.loads(body)


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def equipment(gw: GatewayProcess, name: str) -> dict[str, Any]:
    status, body = get(gw, "/api/equipment")
    assert status == 200
    found = [e for e in body if e["equipment"] == name]
    assert len(found) == 1, body
    return found[0]


def test_api_equipment(spawn: Gateways, mosquitto: Mosquitto) -> None:
    gw = spawn(
        '[[rules]]\nsensor = "temperature"\nhigh = 85.0\n[detection]\nwindow = 10\nwarmup = 5\n'
    )
    eq1, eq2 = uid("api-eq"), uid("api-eq")
    base = int(time.time() * 1000) - 30_000
    with MqttProbe(mosquitto.port, [f"alerts/events/{eq1}/#"]) as p:
        temps = [20.0, 20.5, 21.0, 20.2, 20.8, 20.4]
        p.publish(
            f"plant/line-s/{eq1}/temperature",
            [{"value": v, "ts": base + i * 1000, "unit": "celsius"} for i, v in enumerate(temps)],
        )
        p.publish(f"plant/line-s/{eq1}/humidity", [{"value": 40.0, "ts": base + 9000}])
        p.publish(f"plant/line-t/{eq2}/pressure", {"value": 3.5, "ts": base + 2000})
        gw.wait_metric("edge_readings_written_total", lambda v: v >= 8)

        e1 = equipment(gw, eq1)
        assert e1["status"] == "online" and e1["line"] == "line-s"
        assert e1["last_seen"] == iso(base + 9000)
        assert e1["active_alerts"] == 0
        assert set(e1["sensors"]) == {"temperature", "humidity"}
        t = e1["sensors"]["temperature"]
        assert (t["value"], t["ts"], t["unit"], t["anomaly"]) == (
            20.4,
            iso(base + 5000),
            "celsius",
            False,
        )
        assert t["z"] is not None and abs(t["z"]) < 3  # scored: 5 readings of baseline
        assert e1["sensors"]["humidity"]["z"] is None  # still warming up
        e2 = equipment(gw, eq2)
        assert (e2["line"], e2["last_seen"]) == ("line-t", iso(base + 2000))
        assert e2["sensors"] == {
            "pressure": {
                "value": 3.5,
                "ts": iso(base + 2000),
                "unit": "",
                "z": None,
                "anomaly": False,
            }
        }

        p.publish(f"plant/line-s/{eq1}/temperature", {"value": 99.0, "ts": base + 10_000})
        p.wait_for(f"alerts/events/{eq1}/temperature")
    e1 = equipment(gw, eq1)
    assert (e1["status"], e1["active_alerts"]) == ("anomaly", 2)  # threshold_high and zscore
    assert e1["sensors"]["temperature"]["value"] == 99.0
    assert e1["sensors"]["temperature"]["anomaly"] is True
    assert e1["last_seen"] == iso(base + 10_000)


def test_api_alerts(spawn: Gateways, mosquitto: Mosquitto) -> None:
    gw = spawn(
        '[[rules]]\nsensor = "temperature"\nhigh = 85.0\n[alerts]\nclear_after = 1\n'
        "ack_required = []\n"  # SPEC §6 auto-clear: this test is about the API
    )
    a, b = uid("api-al"), uid("api-al")
    with MqttProbe(mosquitto.port, ["alerts/events/#"]) as p:
        p.publish(f"plant/line-s/{a}/temperature", 99.0)
        p.wait_for(f"alerts/events/{a}/temperature")
        time.sleep(0.01)  # b's alert is strictly newer
        p.publish(f"plant/line-s/{b}/temperature", 120.0)
        ev = p.wait_for(f"alerts/events/{b}/temperature")[0].json()
        status, active = get(gw, f"/api/alerts?equipment={b}")
        assert status == 200 and [x["id"] for x in active] == [ev["id"]]
        assert active[0]["state"] == "raised" and active[0]["kind"] == "threshold_high"
        # acknowledge b, clear a
        p.publish("alerts/ack", {"id": ev["id"], "by": "op-1"})
        p.wait_for(
            lambda m: m.topic.endswith(b + "/temperature") and b'"acknowledged"' in m.payload
        )
        p.publish(f"plant/line-s/{a}/temperature", 20.0)
        p.wait_for(lambda m: m.topic.endswith(a + "/temperature") and b'"cleared"' in m.payload)

    def ours(path: str) -> list[dict[str, Any]]:
        status, body = get(gw, path)
        assert status == 200
        return [x for x in body if x["equipment"] in (a, b)]

    active = ours("/api/alerts")  # state=active is the default
    assert [(x["equipment"], x["state"]) for x in active] == [(b, "acknowledged")]
    assert active[0]["acknowledged_by"] == "op-1"
    assert active[0]["severity"] == "high" and active[0]["value"] == 120.0
    assert active[0]["updated_at"] >= active[0]["raised_at"]
    every = ours("/api/alerts?state=all")  # newest first: a cleared after b was acked
    assert [(x["equipment"], x["state"]) for x in every] == [(a, "cleared"), (b, "acknowledged")]
    assert every[0]["message"].startswith("temperature back to normal")
    assert ours(f"/api/alerts?state=all&equipment={a}") == every[:1]
    assert ours("/api/alerts?state=all&severity=low") == []
    assert ours("/api/alerts?state=all&severity=low,high") == every
    assert ours("/api/alerts?state=all&kind=zscore") == []
    status, one = get(gw, f"/api/alerts?state=all&equipment={b}&limit=1")
    assert status == 200 and len(one) == 1 and one[0]["equipment"] == b
    for bad in ("state=open", "limit=0", "limit=abc", "limit=5000"):
        status, body = get(gw, f"/api/alerts?{bad}")
        assert status == 400 and "error" in body, bad
