"""OPC UA ingest benchmark (a script, not a test): many monitored items changing fast.

    .venv/bin/python -m tests.bench_opcua [--items 1000] [--servers 1] [--interval-ms 100]
                                          [--duration 20] [--json]

Starts a private mosquitto and VictoriaMetrics (tests.servers), ``--servers`` times
`edge-sim opcua --load N` as separate processes and one `edge-gateway run` browsing
each server's ``Objects/Plant/loadK`` with
sampling interval = the change interval. The simulator changes every load variable
once per interval (each change a new value with its own SourceTimestamp) for
``--duration`` seconds, starting once all items are monitored. Then it compares:

- changes written on the server (its status file) + one initial value per item,
- readings the gateway counted (edge_readings_received_total{source="opcua"}),
- samples stored in VictoriaMetrics,

and prints the ingest rate during the load window and whether every change arrived.
Exit code 0 when nothing was lost, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import GatewayProcess
from tests.opcua_sim import OpcuaSim
from tests.servers import Mosquitto, VictoriaMetrics


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0.0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1000, help="monitored items per server")
    ap.add_argument("--servers", type=int, default=1, help="simulator processes (endpoints)")
    ap.add_argument("--interval-ms", type=float, default=100.0, help="change + sampling interval")
    ap.add_argument("--publishing-ms", type=int, default=100, help="publishing interval")
    ap.add_argument("--queue-size", type=int, default=10)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    ap.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="edge-bench-opcua-"))
    n = args.items
    total_items = n * args.servers
    sims = [
        OpcuaSim(
            [
                "--no-plant",
                "--load",
                str(n),
                "--load-name",
                f"load{k}",
                "--load-interval-ms",
                str(args.interval_ms),
                "--load-wait-items",
                str(n),
                "--load-duration",
                str(args.duration),
            ],
            workdir=work / f"sim{k}",
        )
        for k in range(args.servers)
    ]
    with Mosquitto(workdir=work / "mqtt") as broker, VictoriaMetrics(workdir=work / "vm") as vm:
        toml = "\n[influx]\nbatch_size = 20000\nflush_interval_ms = 200\n"
        for k, sim in enumerate(sims):
            sim.start()
            toml += f"""
[[opcua.servers]]
endpoint = "{sim.endpoint}"
browse_root = "Objects/Plant/load{k}"
line = "load{k}"
publishing_interval_ms = {args.publishing_ms}
sampling_interval_ms = {int(args.interval_ms)}
queue_size = {args.queue_size}
"""
        gw = GatewayProcess(broker.port, vm.url, work / "gw", extra_toml=toml)
        try:
            gw.wait_metric("edge_opcua_monitored_items", lambda v: v >= total_items, timeout=60)
            t_subscribed = time.monotonic()
            for sim in sims:
                sim.wait_status(lambda s: s["load_ticks"] > 0, timeout=30)
            start_count = gw.metric("edge_readings_received_total", source="opcua")
            t0 = time.monotonic()
            cpu_gw0 = _cpu_s(gw.pid)
            cpu_sim0 = sum(_cpu_s(sim.proc.pid if sim.proc else None) for sim in sims)
            # Load window: until every simulator stopped changing values.
            stats = [sim.wait_status(lambda s: s["load_done"], args.duration + 60) for sim in sims]
            t1 = time.monotonic()
            end_count = gw.metric("edge_readings_received_total", source="opcua")
            cpu_gw = _cpu_s(gw.pid) - cpu_gw0
            cpu_sim = sum(_cpu_s(sim.proc.pid if sim.proc else None) for sim in sims) - cpu_sim0
            changes = sum(st["load_changes"] for st in stats)
            late = sum(st["load_late_ticks"] for st in stats)
            expected = changes + total_items  # every change + one initial value per item
            # Drain: wait until the gateway has counted everything (or stops moving).
            last, still = -1.0, 0
            while True:
                got = gw.metric("edge_readings_received_total", source="opcua")
                if got >= expected:
                    break
                still = still + 1 if got == last else 0
                if still >= 10:
                    break
                last = got
                time.sleep(0.5)
            written = gw.wait_metric("edge_readings_written_total", lambda v: v >= got, 30)
            vm_count = 0
            for k in range(args.servers):
                match = vm.selector("readings_value", line=f"load{k}", source="opcua")
                want = stats[k]["load_changes"] + n
                try:
                    vm_count += vm.wait_for_count(match, want, timeout=30)
                except TimeoutError:
                    vm_count += vm.count(match)
            rejected = {
                r: gw.metric("edge_readings_rejected_total", reason=r)
                for r in ("duplicate", "stale_timestamp", "future_timestamp", "bad_quality")
            }
        finally:
            gw.stop()
            for sim in sims:
                sim.kill()
    window = t1 - t0
    result = {
        "servers": args.servers,
        "monitored_items": total_items,
        "change_interval_ms": args.interval_ms,
        "publishing_interval_ms": args.publishing_ms,
        "load_seconds": round(window, 2),
        "server_changes": changes,
        "server_changes_per_s": round(changes / max(window, 1e-9), 1),
        "server_late_ticks": late,
        "expected_readings": expected,
        "gateway_received": int(got),
        "gateway_written": int(written),
        "vm_samples": vm_count,
        "ingest_per_s_during_load": round((end_count - start_count) / max(window, 1e-9), 1),
        "missing": int(expected - got),
        "rejected": rejected,
        "gateway_cpu_s": round(cpu_gw, 2),
        "simulator_cpu_s": round(cpu_sim, 2),
        "subscribe_to_load_s": round(t0 - t_subscribed, 2),
    }
    ok = got == expected and vm_count == expected
    print(
        f"OPC UA bench: {args.servers} server(s) x {n} monitored items, "
        f"{args.interval_ms:g} ms changes, {window:.1f} s: servers wrote {changes} changes "
        f"({result['server_changes_per_s']}/s, {late} late ticks); gateway ingested "
        f"{result['ingest_per_s_during_load']}/s, received {int(got)} of {expected} expected, "
        f"VM stored {vm_count}: "
        + ("every change arrived" if ok else f"{int(expected - got)} MISSING")
        + f"; CPU gateway {cpu_gw:.1f} s, simulators {cpu_sim:.1f} s"
    )
    if args.json:
        print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
