"""Production events end to end: real mosquitto, real VictoriaMetrics / InfluxDB 1.x, and
`edge-gateway run` as a subprocess.

Every test uses its own factory / machine names, so the session servers can be shared.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import GatewayProcess, Gateways, MqttProbe, uid
from tests.servers import InfluxDB1, Mosquitto, VictoriaMetrics, http_request

EVENTS_TOML = """
[[mqtt.subscriptions]]
topic = "plant/+/+/+"
template = "plant/{line}/{equipment}/{sensor}"

[[mqtt.subscriptions]]
topic = "factory/+/+/+/events"
template = "factory/{factory}/{line}/{equipment}/events"
format = "event"

[mqtt]
deadletter_per_s = 1000

[events]
warning_rate_per_h = 2.0
rate_window_s = 3600
"""
MS = 1_000_000
DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards" / "production.json"


def now_ms() -> int:
    return time.time_ns() // MS


def iso_ms(ms: int) -> str:
    t = time.gmtime(ms // 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms % 1000:03d}Z"


def event(eid: str, t_ms: int, defects: int = 0, dur: int = 4000) -> dict[str, Any]:
    return {
        "event_id": eid,
        "event_time": iso_ms(t_ms),
        "duration_ms": dur,
        "defect_count": defects,
    }


def get_json(gw: GatewayProcess, path: str, **params: Any) -> tuple[int, Any]:
    status, body = http_request(f"{gw.url}{path}?{urllib.parse.urlencode(params)}")
    return status, json.loads(body)


def test_concurrent_duplicates_store_one_point_per_id(
    spawn: Gateways, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    gw = spawn(EVENTS_TOML)
    factory, line = uid("F"), "LINE-A"
    machines = ["M-1", "M-2"]
    base = now_ms() - 600_000
    n = 200
    events = [
        {**event(f"E-{i}", base + i * 1000, defects=i % 3), "machine_id": machines[i % 2]}
        for i in range(n)
    ]
    topic = f"factory/{factory}/{line}/any/events"
    publishers = 3
    errors: list[BaseException] = []

    def publish(seed: int) -> None:
        rnd = random.Random(seed)
        order = events[:]
        rnd.shuffle(order)
        try:
            with MqttProbe(mosquitto.port) as p:
                i = 0
                while i < len(order):
                    k = rnd.choice((1, 1, 5, 20))  # single events and batches, overlapping
                    chunk = order[i : i + k]
                    p.publish(topic, chunk[0] if k == 1 else chunk)
                    i += k
        except BaseException as e:  # surfaced by the main thread
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(s,)) for s in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors

    total = n * publishers
    gw.wait_metric("edge_events_total", lambda v: v >= total, timeout=20)
    assert gw.metric("edge_events_total", result="stored") == n
    assert gw.metric("edge_events_total", result="duplicate") == n * (publishers - 1)
    assert gw.metric("edge_events_total", result="update") == 0

    # VictoriaMetrics without deduplication keeps every sample written: exactly one per id.
    match = victoria.selector("machine_events_defect_count", factory=factory)
    victoria.wait_for_count(match, n, timeout=15)
    # A sentinel event, published after every copy above was counted, is spooled and
    # written after them: once it is searchable, so is any point written twice.
    sentinel_ms = base - 1000
    with MqttProbe(mosquitto.port) as p:
        p.publish(f"factory/{factory}/{line}/M-S/events", event("E-sentinel", sentinel_ms, 7))
    deadline = time.monotonic() + 15
    while True:
        victoria.force_flush()
        exported = victoria.export(match)
        if any(sentinel_ms in s["timestamps"] for s in exported):
            break
        assert time.monotonic() < deadline, "the sentinel event never reached VictoriaMetrics"
        time.sleep(0.1)
    stamps: list[int] = []
    values: dict[int, float] = {}
    for series in exported:
        stamps.extend(series["timestamps"])
        values.update(zip(series["timestamps"], series["values"], strict=True))
    assert sorted(stamps) == [sentinel_ms] + [base + i * 1000 for i in range(n)]
    assert [values[base + i * 1000] for i in range(n)] == [float(i % 3) for i in range(n)]
    assert values[sentinel_ms] == 7.0

    # the stats endpoint sees the same events
    window = {"start": iso_ms(base), "end": iso_ms(base + n * 1000)}
    status, body = get_json(gw, "/api/stats", machine="M-1", **window)
    assert status == 200
    mine = [e for e in events if e["machine_id"] == "M-1"]
    assert body["events_count"] == len(mine) == n // 2
    assert body["defects_count"] == sum(e["defect_count"] for e in mine)


def test_update_stats_and_defect_rate_alert(spawn: Gateways, mosquitto: Mosquitto) -> None:
    """Updates win in the gateway's state (the InfluxDB overwrite is tested below: a
    VictoriaMetrics keeps or picks arbitrarily between samples with equal timestamps)."""
    gw = spawn(EVENTS_TOML)
    factory, line, machine = uid("F"), "LINE-B", uid("M")
    topic = f"factory/{factory}/{line}/{machine}/events"
    with MqttProbe(
        mosquitto.port,
        [f"alerts/events/{machine}/#", f"alerts/active/{machine}/#", gw.deadletter_topic],
    ) as probe:
        base = now_ms() - 30 * 60_000
        batch = [event(f"E{i}", base + i * 60_000, defects=1) for i in range(3)]
        probe.publish(topic, batch)

        # 3 defects in the trailing hour >= 2.0/h: defect_rate raised, retained active
        raised = probe.wait_for(f"alerts/events/{machine}/*")[0].json()
        assert (raised["kind"], raised["state"], raised["sensor"]) == (
            "defect_rate",
            "raised",
            "*",
        )
        assert raised["value"] == pytest.approx(3.0) and raised["threshold"] == 2.0
        active = probe.wait_for(f"alerts/active/{machine}/*/defect_rate")[0]
        assert active.json()["id"] == raised["id"]

        start = base - 60_000
        window = {"start": iso_ms(start), "end": iso_ms(start + 3_600_000)}
        status, stats = get_json(gw, "/api/stats", machine=machine, **window)
        assert status == 200
        assert stats == {
            "machine_id": machine,
            "start": window["start"],
            "end": window["end"],
            "events_count": 3,
            "defects_count": 3,
            "avg_defect_rate": 3.0,
            "status": "warning",
        }
        status, top = get_json(
            gw,
            "/api/stats/top-defect-lines",
            **{"factory": factory, "from": window["start"], "to": window["end"], "limit": 5},
        )
        assert status == 200
        assert top == [
            {"line_id": line, "total_defects": 3, "event_count": 3, "defects_percent": 100.0}
        ]

        # the same ids with 0 defects: updates; the later receive wins everywhere
        probe.publish(topic, [event(f"E{i}", base + i * 60_000, defects=0) for i in range(3)])
        cleared = probe.wait_for(
            lambda m: (
                m.topic.startswith(f"alerts/events/{machine}/") and m.json()["state"] == "cleared"
            )
        )[-1].json()
        assert cleared["id"] == raised["id"]
        gw.wait_metric("edge_events_total", lambda v: v == 3, result="update")
        status, stats = get_json(gw, "/api/stats", machine=machine, **window)
        assert (stats["events_count"], stats["defects_count"], stats["status"]) == (
            3,
            0,
            "healthy",
        )
        probe.wait_for(lambda m: m.topic.endswith(f"/{machine}/*/defect_rate") and m.payload == b"")

        # an invalid event goes to the dead-letter topic with its reason
        probe.publish(topic, event("BAD", base, dur=-5))
        dead = probe.wait_for(gw.deadletter_topic)[0].json()
        assert dead["reason"] == "out_of_range" and "duration_ms" in dead["detail"]

        # bad parameters: 400 with a one-line JSON error
        for path, params in (
            ("/api/stats", {"machine": machine}),
            ("/api/stats", {"machine": machine, "start": "x", "end": window["end"]}),
            ("/api/stats/top-defect-lines", {"factory": factory, "from": window["start"]}),
        ):
            status, err = get_json(gw, path, **params)
            assert status == 400 and "\n" not in err["error"]


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, depth first, including those nested in rows (a collapsed row keeps
    its panels in its own ``panels`` list)."""
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Every InfluxQL query of the dashboard: panel title -> its targets' queries, plus
    ``$<name>`` -> the query of each query-type template variable."""
    out: dict[str, list[str]] = {}
    for panel in dashboard_panels(dashboard["panels"]):
        queries = []
        for t in panel.get("targets", []):
            # builder-mode targets have no raw text to run here: the dashboard must not use them
            assert t.get("rawQuery") and t.get("query"), (panel.get("title"), t)
            queries.append(t["query"])
        if queries:
            assert panel["title"] not in out, f"two panels titled {panel['title']!r}"
            out[panel["title"]] = queries
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            out[f"${var['name']}"] = [var["query"]]
    return out


def expand_macros(q: str, factory: str) -> str:
    """A dashboard query with Grafana's macros and the $factory variable filled in."""
    out = (
        q.replace("$timeFilter", "time > now() - 1d")
        .replace("$__interval", "1m")
        .replace("/^$factory$/", f"/^{factory}$/")
    )
    assert not re.search(r"\$[\w{]", out), f"a macro this test does not fill in: {out!r}"
    return out


def per_tag_totals(series: list[dict[str, Any]], tag: str) -> dict[str, float]:
    """Tag value -> the sum of the first value column over all rows (time buckets);
    fill(0) buckets count 0. A tag value seen twice would be two series: refused."""
    out: dict[str, float] = {}
    for s in series:
        key = s["tags"][tag]
        assert key not in out, f"two series for {tag}={key}"
        out[key] = sum(row[1] or 0 for row in s["values"])
    return out


def per_tag_row(series: list[dict[str, Any]], tag: str) -> dict[str, list[Any]]:
    """Tag value -> the value columns of its one row (an aggregate without GROUP BY time)."""
    out: dict[str, list[Any]] = {}
    for s in series:
        assert len(s["values"]) == 1, s
        out[s["tags"][tag]] = s["values"][0][1:]
    return out


def test_influxdb_update_and_moved_point(
    mosquitto: Mosquitto, influxdb1: InfluxDB1, tmp_path: Path
) -> None:
    """InfluxDB overwrites natively; a point moved by an update is superseded, and the
    dashboard's filter (superseded = false, defect_count >= 0) counts it once."""
    db = uid("ev").replace("-", "_")
    influxdb1.create_database(db)
    pool = Gateways(mosquitto.port, influxdb1.url, tmp_path)
    try:
        gw = pool(EVENTS_TOML + f'\n[influx]\napi = "v1"\ndatabase = "{db}"\n')
        factory, m1, m9 = uid("F"), uid("M"), uid("M")
        base = now_ms() - 60_000
        with MqttProbe(mosquitto.port, [f"alerts/events/{m1}/#"]) as p:
            p.publish(f"factory/{factory}/L1/{m1}/events", event("A", base, defects=2))
            p.publish(f"factory/{factory}/L1/{m1}/events", event("B", base + 1000, defects=-1))
            gw.wait_metric("edge_events_total", lambda v: v == 2, result="stored")
            p.publish(f"factory/{factory}/L1/{m1}/events", event("A", base, defects=5))  # update
            p.publish(f"factory/{factory}/L2/{m9}/events", event("B", base + 2000, defects=1))
            gw.wait_metric("edge_events_total", lambda v: v == 2, result="update")
            # defect_count -1 ("unknown"): an event, never defects
            p.publish(f"factory/{factory}/L1/{m1}/events", event("C", base + 3000, defects=-1))
            gw.wait_metric("edge_events_total", lambda v: v == 3, result="stored")
            # A's first 2 defects in the trailing hour reached 2.0/h: one defect_rate alert
            # (the update to 5 changes its value in memory, not in InfluxDB)
            [raised] = [m.json() for m in p.wait_for(f"alerts/events/{m1}/*")]
            assert (raised["kind"], raised["state"], raised["value"]) == (
                "defect_rate",
                "raised",
                2.0,
            )
        # C, published last, is written last (one spool, sent in order): once InfluxDB has
        # it, it has everything above, the alert point of A's first write included.
        deadline = time.monotonic() + 10
        c_query = f"SELECT * FROM machine_events WHERE factory = '{factory}' AND event_id = 'C'"
        while not influxdb1.query(c_query, db)["results"][0].get("series"):
            assert time.monotonic() < deadline, "event C never reached InfluxDB"
            time.sleep(0.1)
        q = (
            'SELECT sum("defect_count") AS defects, count("event_id") AS events '
            f"FROM machine_events WHERE factory = '{factory}' AND superseded = false "
            'AND defect_count >= 0 GROUP BY "line"'
        )
        res = influxdb1.query(q, db)["results"][0].get("series", [])
        assert {s["tags"]["line"]: s["values"][0][1:] for s in res} == {"L1": [5, 1], "L2": [1, 1]}
        raw = influxdb1.query(
            f"SELECT * FROM machine_events WHERE factory = '{factory}'", db, epoch="ms"
        )["results"][0]["series"][0]
        cols = raw["columns"]
        rows = [dict(zip(cols, v, strict=True)) for v in raw["values"]]
        # A (overwritten in place), B's old point (superseded), B new, C
        assert len(rows) == 4
        old_b = next(r for r in rows if r["line"] == "L1" and r["event_id"] == "B")
        assert old_b["superseded"] is True

        # Every InfluxQL query of the Grafana dashboard, nested panels included, runs (a
        # broken one raises ServerError) and returns exactly what this test wrote. A panel
        # this test has no expectation for (or one the walk misses) fails the key check.
        queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
        results: dict[str, list[list[dict[str, Any]]]] = {
            title: [
                influxdb1.query(expand_macros(q, factory), db)["results"][0].get("series", [])
                for q in qs
            ]
            for title, qs in queries.items()
        }
        summaries: dict[str, Callable[[list[dict[str, Any]]], Any]] = {
            "Defects per line": lambda r: per_tag_totals(r, "line"),
            "Top defect lines (time range)": lambda r: per_tag_row(r, "line"),
            "Machine health: defects in the last hour": lambda r: per_tag_row(r, "machine"),
            "Defect rate per machine (per hour)": lambda r: per_tag_totals(r, "machine"),
            "Events per machine": lambda r: per_tag_totals(r, "machine"),
            "defect_rate alerts": lambda r: per_tag_row(r, "equipment"),
            "$factory": lambda r: [row[1] for s in r for row in s["values"]],
        }
        want = {
            "Defects per line": [{"L1": 5, "L2": 1}],
            "Top defect lines (time range)": [{"L1": [5], "L2": [1]}],
            "Machine health: defects in the last hour": [{m1: [5], m9: [1]}],
            "Defect rate per machine (per hour)": [{m1: 5, m9: 1}],
            "Events per machine": [{m1: 2, m9: 1}],  # A and C; the superseded B is not counted
            "defect_rate alerts": [{m1: ["raised", 2.0, raised["message"]]}],
            "$factory": [[factory]],
        }
        assert sorted(results) == sorted(want)
        got_all = {t: [summaries[t](r) for r in rs] for t, rs in results.items()}
        assert got_all == want
    finally:
        problems = pool.close()
    assert not problems, "\n".join(problems)
