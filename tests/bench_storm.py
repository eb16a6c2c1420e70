"""Alert storm benchmark (a script, not a test): 10,000 equipment fall silent at once.

One reading each from `--equipment` equipment, then silence; with ``offline_after_s = 5``
they all go offline in one tick: an offline event, an active-alert message and a status
message each. 0.2 s into the storm a live series (a rule with ``critical_high``) spikes.
Measured by a subscriber on the same machine: the time from the first offline event to
the last offline event and to the last status message, and the spike's latency
(publish -> its alert event). No InfluxDB: the sink is off.

    python -m tests.bench_storm --equipment 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from typing import Any

from tests.harness import GatewayProcess, MqttProbe
from tests.servers import Mosquitto

GATEWAY_TOML = """
[influx]
enabled = false

[alerts]
offline_after_s = 5

[[rules]]
equipment = "live-pump"
sensor = "pressure"
high = 100.0
critical_high = 200.0
"""


def storm(n: int = 10_000, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One storm of `n` equipment against a fresh broker and gateway; the figures.

    `env` is added to the gateway's environment (``PYTHONPATH`` of another tree, ...).
    """
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    spike_at: list[float] = []
    counts: dict[str, int] = {}
    after_spike: dict[str, int] = {}  # storm messages the subscriber got after the spike
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker:
        gw = GatewayProcess(
            broker.port, "http://127.0.0.1:9", tmp, extra_toml=GATEWAY_TOML, env=env
        )
        with MqttProbe(broker.port) as sub, MqttProbe(broker.port) as pub:

            def on_message(c: Any, u: Any, m: Any) -> None:
                t = time.monotonic()
                kind = "status" if m.topic.startswith("status/storm-") else ""
                if m.topic.startswith("alerts/events/storm-"):
                    kind = "offline_event"
                elif m.topic.startswith("alerts/events/live-pump/"):
                    kind = "spike_event"
                if kind:
                    with lock:
                        first.setdefault(kind, t)
                        last[kind] = t
                        counts[kind] = counts.get(kind, 0) + 1
                        if kind == "status" and "offline_event" in first:
                            counts["storm_status"] = counts.get("storm_status", 0) + 1
                        if "spike_event" in first and kind != "spike_event":
                            after_spike[kind] = after_spike.get(kind, 0) + 1

            sub.client.on_message = on_message
            sub.subscribe("alerts/events/#", "status/#")
            infos = [
                pub.client.publish(f"plant/storm/storm-{i:05d}/t", b"20.0", qos=1) for i in range(n)
            ]
            for info in infos:
                info.wait_for_publish(30)
            gw.wait_metric("edge_readings_received_total", lambda v: v >= n, 60, source="mqtt")
            deadline = time.monotonic() + 30
            while "offline_event" not in first and time.monotonic() < deadline:
                pub.publish("plant/live/live-pump/pressure", b"50.0")  # a live series
                time.sleep(0.1)
            time.sleep(0.2)
            spike_at.append(time.monotonic())
            pub.publish("plant/live/live-pump/pressure", b"250.0")  # critical_high
            # wait until the storm has drained
            gw.wait_metric("edge_queue_depth", lambda v: v == 0, 120, queue="publish")
            time.sleep(1.5)
        gw.stop()
    t0 = first.get("offline_event", 0.0)
    res = {
        "equipment": n,
        "last_offline_event_s": round(last.get("offline_event", 0.0) - t0, 3),
        "last_status_s": round(last.get("status", 0.0) - t0, 3),
        "spike_latency_ms": round((first.get("spike_event", 0.0) - spike_at[0]) * 1000, 1)
        if "spike_event" in first
        else None,
        "offline_events_received": counts.get("offline_event", 0),
        "status_received": counts.get("status", 0),  # online ones before the storm too
        "storm_status_received": counts.get("storm_status", 0),
        "storm_messages_after_spike": sum(after_spike.values()),
    }
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--equipment", type=int, default=10_000)
    a = ap.parse_args(argv)
    print(json.dumps(storm(a.equipment)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
