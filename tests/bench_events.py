"""Benchmark (not a test): 1,000 production events in ONE batch message.

Starts a private mosquitto and VictoriaMetrics and `edge-gateway run`, publishes one
JSON array of N events (QoS 1), and prints how long until

- all N are queryable on the gateway's ``/api/stats`` (events_count == N), and
- all N are queryable in VictoriaMetrics (``machine_events_defect_count`` samples == N).

Both clocks start when the broker acknowledged the publish. The VictoriaMetrics figure
includes the gateway's flush interval (``[influx] flush_interval_ms``, 100 ms here) and
the forced VM flush this script triggers while polling (VM itself makes rows searchable
about once a second). Run: ``.venv/bin/python -m tests.bench_events [--events N] [--runs R]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.parse
import uuid

from tests.harness import GatewayProcess, MqttProbe
from tests.servers import Mosquitto, VictoriaMetrics, http_request

TOML = """
[[mqtt.subscriptions]]
topic = "factory/+/+/+/events"
template = "factory/{factory}/{line}/{equipment}/events"
format = "event"
"""


def one_run(gw: GatewayProcess, mqtt_port: int, vm: VictoriaMetrics, n: int) -> tuple[float, float]:
    factory = f"F-{uuid.uuid4().hex[:8]}"
    base = time.time_ns() // 1_000_000 - n * 1000
    events = [
        {
            "event_id": f"{factory}-{i}",
            "event_time": base + i * 1000,
            "machine_id": f"M-{i % 10}",
            "duration_ms": 4000 + i % 500,
            "defect_count": i % 4 - 1,
        }
        for i in range(n)
    ]
    params = urllib.parse.urlencode(
        {"factory": factory, "from": str(base), "to": str(base + n * 1000), "limit": 100}
    )
    url = f"{gw.url}/api/stats/top-defect-lines?{params}"
    match = vm.selector("machine_events_defect_count", factory=factory)
    with MqttProbe(mqtt_port) as p:
        p.publish(f"factory/{factory}/LINE-A/any/events", events)
        t0 = time.perf_counter()
    api_s = vm_s = None
    deadline = t0 + 30
    while api_s is None or vm_s is None:
        now = time.perf_counter()
        if now > deadline:
            raise TimeoutError(f"not all {n} events queryable after 30 s")
        if api_s is None:
            status, body = http_request(url)
            rows = json.loads(body) if status == 200 else []
            if sum(r["event_count"] for r in rows) >= n:
                api_s = time.perf_counter() - t0
        if vm_s is None:
            vm.force_flush()
            if vm.count(match) >= n:
                vm_s = time.perf_counter() - t0
        time.sleep(0.005)
    return api_s, vm_s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as tmp,
        Mosquitto() as broker,
        VictoriaMetrics() as vm,
        GatewayProcess(broker.port, vm.url, tmp, extra_toml=TOML) as gw,
    ):
        results = [one_run(gw, broker.port, vm, args.events) for _ in range(args.runs)]
    api = [r[0] for r in results]
    tsdb = [r[1] for r in results]
    print(f"{args.events} events in one batch message, {args.runs} runs:")
    print(
        f"  queryable on /api/stats:      median {statistics.median(api) * 1000:.1f} ms, "
        f"max {max(api) * 1000:.1f} ms"
    )
    print(
        f"  queryable in VictoriaMetrics: median {statistics.median(tsdb) * 1000:.1f} ms, "
        f"max {max(tsdb) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
