"""Detection quality on real labelled pump data (SKAB): ``make bench-detect``.

Replays every file of ``../shared/data/skab/`` through a real gateway over MQTT (its own
mosquitto, no InfluxDB needed: the sink is off), with the rows' own timestamps and the
default ``[detection]`` settings, collects ``alerts/events/#`` and scores them with the
README's rules (tests/skab.py). Prints per file and in total: false alerts per pump-hour,
changepoints alerted (and by chance), point-wise F1 / FAR / MAR, false alerts per hour on
``anomaly-free.csv``; and the same for a plain rolling 3-sigma baseline.

    python -m tests.bench_detect            # through a real gateway over MQTT
    python -m tests.bench_detect --core     # through the pure core only (seconds)
    python -m tests.bench_detect --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests import skab
from tests.skab import Event, Score, SkabFile


def replay_gateway(files: list[SkabFile]) -> dict[str, list[Event]]:
    """Every file through one real gateway over MQTT; events per file name."""
    from tests.harness import GatewayProcess, MqttProbe
    from tests.servers import Mosquitto

    out: dict[str, list[Event]] = {f.name: [] for f in files}
    by_eq = {f.equipment: f.name for f in files}
    with Mosquitto() as broker, tempfile.TemporaryDirectory() as tmp:
        extra = "[influx]\nenabled = false\n" + skab.REPLAY_TOML
        gw = GatewayProcess(broker.port, "http://127.0.0.1:9", tmp, extra_toml=extra)
        try:
            with MqttProbe(broker.port, ["alerts/events/#"]) as probe:
                total = 0
                for f in files:
                    topic = f"skab/line-skab/{f.equipment}"
                    for body in skab.fields_messages(f):
                        probe.publish(topic, body)
                    total += len(f.ts) * len(f.values)
                    n = total
                    gw.wait_metric(
                        "edge_readings_received_total",
                        lambda v: v >= n,  # noqa: B023 (called before the next loop)
                        timeout=120,
                        source="mqtt",
                    )
                # a last message marks the end of the alert stream (in-order publishing);
                # dead letters are held back while >1,000 publishes wait, so wait for that
                gw.wait_metric("edge_queue_depth", lambda v: v == 0, 120, queue="publish")
                time.sleep(1.5)  # the gauge is refreshed once a second
                probe.subscribe(gw.deadletter_topic)
                probe.publish("skab/line-skab/end-marker", b"end")
                probe.wait_for(gw.deadletter_topic, timeout=30)
                for m in probe.messages("alerts/events/#"):
                    doc = m.json()
                    name = by_eq.get(doc["equipment"])
                    if name is not None:
                        out[name].append(skab.event_from_json(doc))
        finally:
            gw.stop()
    return out


def table(title: str, scores: dict[str, Score], free: Score | None) -> Score:
    total = Score()
    print(f"\n{title}")
    print(
        f"{'file':<14}{'hours':>6}{'raised':>8}{'false/h':>9}{'cp hit':>8}{'chance':>8}"
        f"{'F1':>7}{'FAR':>7}{'MAR':>7}"
    )
    for name, s in scores.items():
        total.add(s)
        print(
            f"{name:<14}{s.hours:>6.2f}{s.raised:>8}{s.false_per_hour:>9.1f}"
            f"{s.cp_hits:>5}/{s.changepoints:<2}{s.cp_chance:>8.1f}{s.f1:>7.2f}"
            f"{s.far:>7.2f}{s.mar:>7.2f}"
        )
    print(
        f"{'TOTAL':<14}{total.hours:>6.2f}{total.raised:>8}{total.false_per_hour:>9.1f}"
        f"{total.cp_hits:>5}/{total.changepoints:<2}{total.cp_chance:>8.1f}{total.f1:>7.2f}"
        f"{total.far:>7.2f}{total.mar:>7.2f}"
    )
    if free is not None:
        print(
            f"anomaly-free: {free.raised} raised in {free.hours:.2f} h = "
            f"{free.raised / free.hours if free.hours else 0:.1f} false alerts per hour"
        )
    print(f"raised by kind: {total.by_kind}")
    return total


def run(mode: str) -> dict[str, object]:
    if not skab.available():
        raise SystemExit(f"bench-detect: no SKAB data in {skab.DATA}")
    names = skab.labelled_names()
    files = [skab.load(n) for n in [*names, skab.FREE]]
    t0 = time.monotonic()
    if mode == "gateway":
        events = replay_gateway(files)
    else:
        kpis: dict[str, float] = {}
        events = {
            f.name: skab.replay_core(f, kpis=kpis if f.name != skab.FREE else None) for f in files
        }
    elapsed = time.monotonic() - t0
    result: dict[str, object] = {"mode": mode, "replay_s": round(elapsed, 1)}
    if mode != "gateway":
        hours = sum(f.hours for f in files if f.name != skab.FREE)
        result["alarm_kpis"] = {**kpis, "annunciated_per_pump_hour": kpis["annunciated"] / hours}
        print(
            f"\nalarm management (labelled files, {hours:.2f} pump-hours): "
            f"{kpis['annunciated']:.0f} raises annunciated = "
            f"{kpis['annunciated'] / hours:.1f} per pump-hour; "
            + ", ".join(f"{k} {v:g}" for k, v in sorted(kpis.items()) if k != "annunciated")
        )
    detectors: list[tuple[str, Callable[[SkabFile], list[Event]] | None]] = [
        (f"edge-gateway ({mode})", None),
        ("rolling 3-sigma baseline", skab.rolling_3sigma),
    ]
    for title, fn in detectors:
        per: dict[str, Score] = {}
        free: Score | None = None
        for f in files:
            evs = events[f.name] if fn is None else fn(f)
            s = skab.score_file(f, evs)
            if f.name == skab.FREE:
                free = s
            else:
                per[f.name] = s
        total = table(title, per, free)
        result[title] = {
            "total": total.as_dict(),
            "anomaly_free_false_per_hour": round(free.raised / free.hours, 2)
            if free and free.hours
            else None,
            "files": {k: v.as_dict() for k, v in per.items()},
        }
    print(f"\nreplay took {elapsed:.1f} s ({mode})")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--core", action="store_true", help="replay through the pure core only")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args(argv)
    res = run("core" if a.core else "gateway")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
