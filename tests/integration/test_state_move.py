"""Moving a line between gateways: `edge-gateway state export | import` (docs/scale-out.md).

Gateway A learns two lines and latches an alert on line a; line a's state is exported
(moved out of A) and imported into gateway B, which then owns line a: a spike on its
first reading alerts at once (no warm-up), the moved alert is acknowledged on B, and A
restarts without line a: the reading published during the move (queued in A's session)
is stored by A but not scored, and A has no baseline or alert of line a and raises no
`offline` for it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.harness import GatewayProcess, MqttProbe, to_toml, uid
from tests.servers import Mosquitto
from tests.stores import Store, stored, wait_count

WARM = 40  # readings per series on A: past the z-score's warm-up (30)


def sub(line: str) -> str:
    return (
        f'[[mqtt.subscriptions]]\ntopic = "plant/{line}/+/+"\n'
        'template = "plant/{line}/{equipment}/{sensor}"\n'
    )


def state_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "state", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_moved_line_alerts_without_warm_up_and_keeps_its_alerts(  # once per real store
    mosquitto: Mosquitto, store: Store, tmp_path: Path, probe: MqttProbe
) -> None:
    la, lb = uid("mva"), uid("mvb")
    pa, pb = uid("pa"), uid("pb")
    rule = f'[[rules]]\nequipment = "{pa}"\nsensor = "pressure"\nhigh = 85.0\n'
    common = "[alerts]\nclear_after = 2\n" + rule
    a = GatewayProcess(
        mosquitto.port,
        store.url,
        tmp_path / "a",
        extra_toml=sub(la) + sub(lb) + common,
        influx=store.gateway_influx,
    )
    b = GatewayProcess(
        mosquitto.port,
        store.url,
        tmp_path / "b",
        extra_toml=sub(la) + common,
        start=False,
        influx=store.gateway_influx,
    )
    bundle = tmp_path / "line-a.state"
    try:
        probe.subscribe(f"alerts/events/{pa}/+")
        t0 = int(time.time() * 1000) - 3_600_000
        for i in range(WARM):
            ts = t0 + i * 1000
            probe.publish(f"plant/{la}/{pa}/temp", {"value": 50.0 + (i % 5) * 0.2, "ts": ts})
            probe.publish(f"plant/{lb}/{pb}/temp", {"value": 20.0 + (i % 3) * 0.1, "ts": ts})
            pressure = 90.0 if i == 10 else 50.0
            probe.publish(f"plant/{la}/{pa}/pressure", {"value": pressure, "ts": ts})
        probe.wait_for(f"alerts/events/{pa}/pressure", count=2)  # raised, then returned
        raised, returned = (m.json() for m in probe.messages(f"alerts/events/{pa}/pressure"))
        assert (raised["state"], returned["state"]) == ("raised", "returned")
        a.wait_metric("edge_readings_received_total", lambda v: v >= 3 * WARM, source="mqtt")

        busy = state_cli(a.config_path, "export", "--line", la, "-o", str(bundle))
        assert busy.returncode == 1 and "in use" in busy.stderr, busy
        assert not bundle.exists()

        a.stop()  # SIGTERM: the shutdown snapshot has both lines
        out = state_cli(a.config_path, "export", "--line", la, "-o", str(bundle))
        assert out.returncode == 0, out.stderr
        assert "1 equipment, 2 series, 1 alerts" in out.stdout, out.stdout
        got = state_cli(b.config_path, "import", str(bundle))
        assert got.returncode == 0, got.stderr
        assert "1 equipment, 2 series, 1 alerts" in got.stdout, got.stdout

        # during the move: only A's session has line a; a spike, which A must not score
        probe.publish(f"plant/{la}/{pa}/temp", {"value": 400.0, "ts": t0 + WARM * 1000})
        # line a leaves A's config: on restart A unsubscribes it from its persistent session
        a.config["mqtt"]["subscriptions"] = a.config["mqtt"]["subscriptions"][1:]
        a.config["alerts"]["offline_after_s"] = 1.5  # to see that pa never goes offline on A
        a.config_path.write_text(to_toml(a.config) + "\n")
        a.start()
        assert f"unsubscribing plant/{la}/+/+" in a.log_text()
        a.wait_metric("edge_readings_received_total", lambda v: v >= 1, source="mqtt")
        wait_count(store, WARM + 1, equipment=pa, sensor="temp")
        # A stored it, once, as each store keeps points (once per series and timestamp)
        assert stored(store, equipment=pa, sensor="temp")[:2] == (WARM + 1, 0)
        assert "are stored but not scored" in a.log_text()
        b.start()
        # the latched alert moved with its line (the gauge is set on the 1 s tick)
        b.wait_metric("edge_alerts_active", lambda v: v == 1)
        probe.clear()
        probe.publish(f"plant/{la}/{pa}/temp", {"value": 500.0, "ts": t0 + (WARM + 1) * 1000})
        (spike_msg,) = probe.wait_for(f"alerts/events/{pa}/temp")
        spike = spike_msg.json()  # on B's first reading of it: no warm-up
        assert (spike["state"], spike["kind"], spike["severity"]) == (
            "raised",
            "zscore",
            "critical",
        )
        probe.publish("alerts/ack", {"id": raised["id"], "by": "op-move"})
        (cleared_msg,) = probe.wait_for(
            lambda m: m.topic == f"alerts/events/{pa}/pressure" and m.json()["id"] == raised["id"]
        )
        cleared = cleared_msg.json()
        assert (cleared["state"], cleared["acknowledged_by"]) == ("cleared", "op-move")

        probe.publish(f"plant/{lb}/{pb}/temp", {"value": 20.0, "ts": t0 + WARM * 1000})
        a.wait_metric("edge_readings_received_total", lambda v: v >= 2, source="mqtt")
        time.sleep(2.5)  # past offline_after_s: A raises no offline for pa, which left it
        # two messages reached A since its restart: the one from the move, and pb's
        assert a.metric("edge_messages_received_total", source="mqtt") == 2
        assert b.metric("edge_readings_received_total", source="mqtt") == 1
        assert not [m for m in probe.messages() if m.json().get("kind") == "offline"]
        a.stop()  # the retired filter stays retired: unsubscribed again on the next start
        a.start()
        assert a.log_text().count(f"unsubscribing plant/{la}/+/+") == 2
        temp_alerts = probe.messages(f"alerts/events/{pa}/temp")
        assert [m.json()["value"] for m in temp_alerts] == [500.0]  # B's, not A's 400
    finally:
        for gw in (a, b):
            if gw.running:
                gw.stop()
