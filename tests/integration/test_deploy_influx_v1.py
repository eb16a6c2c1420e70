"""Grafana's InfluxQL, run for real: the gateway writes to InfluxDB 1.6 (`[influx] api = "v1"`)
and every InfluxQL query of the dashboards runs against what it wrote.

The module's gateway gets readings (plant-overview.json) and production events on a
``format = "event"`` subscription (production.json: ``machine_events`` and the
``defect_rate`` alert), in a database of its own.

Grafana macros are replaced as Grafana would: ``$timeFilter`` by an absolute time range,
``$__interval`` by ``10s``, ``$equipment`` / ``$factory`` by a regex of the test's
equipment / factory, other template variables by ``.*`` (All). Every InfluxQL query of
every dashboard has its own expectation, computed from what the fixture published.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.harness import GatewayProcess, MqttProbe, uid
from tests.servers import InfluxDB1, Mosquitto, http_request
from tests.unit.test_deploy_static import OWN_DASHBOARDS, dashboard_queries, dashboards

Rows = list[dict[str, Any]]
Series = list[dict[str, Any]]


RATE_THRESHOLD = 2.0  # [events] warning_rate_per_h: defects per hour


def grafana_regex_escape(value: str) -> str:
    """Grafana's escaping of a variable value inside an InfluxQL regex."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/-]", lambda m: "\\" + m.group(0), value)


class Plant:
    """What the module fixture published, and the gateway that processed it."""

    def __init__(self, gw: GatewayProcess, influx: InfluxDB1, db: str) -> None:
        self.gw = gw
        self.influx = influx
        self.db = db
        self.a, self.b, self.c = uid("dsh-a"), uid("dsh-b"), uid("dsh-c")
        # production events: three machines on two lines of one factory
        self.factory = uid("dsh-F")
        self.m1, self.m2, self.m3 = uid("dsh-m1"), uid("dsh-m2"), uid("dsh-m3")
        self.machine_line = {self.m1: "L1", self.m2: "L2", self.m3: "L1"}
        self.live_events: dict[str, Ev] = {}  # event_id -> what InfluxDB must hold (live)
        self.superseded: list[Ev] = []  # tombstones left by updates that moved a point
        self.rate_alert: dict[str, Any] = {}  # the defect_rate alert raised on MQTT
        self.last: dict[tuple[str, str], tuple[int, float]] = {}  # (eq, sensor) -> (ms, value)
        self.points: dict[tuple[str, str], list[tuple[int, float]]] = {}  # all, (ms, value)
        self.events: list[dict[str, Any]] = []
        self.start_ms = 0
        self.end_ms = 0

    @property
    def equipment(self) -> set[str]:
        return {self.a, self.b, self.c}

    def substitute(self, query: str) -> str:
        eq = "(" + "|".join(grafana_regex_escape(e) for e in sorted(self.equipment)) + ")"
        q = query.replace("$timeFilter", f"time >= {self.start_ms}ms and time <= {self.end_ms}ms")
        q = q.replace("$__interval", "10s").replace("$equipment", eq)
        q = q.replace("$factory", grafana_regex_escape(self.factory))
        return re.sub(r"\$\{?\w+\}?", ".*", q)  # any other variable: All

    def run(self, query: str) -> Series:
        result = self.influx.query(self.substitute(query), self.db, epoch="ms")
        return list(result["results"][0].get("series", []))


class Ev(NamedTuple):
    """A production event as published (`ms` = event_time)."""

    event_id: str
    ms: int
    machine: str
    line: str
    defects: int


def rows(series: Series) -> Rows:
    out = []
    for s in series:
        for values in s["values"]:
            row = dict(zip(s["columns"], values, strict=True))
            row.update(s.get("tags", {}))
            out.append(row)
    return out


def by_tags(series: Series, *keys: str) -> dict[tuple[str, ...], Rows]:
    return {tuple(s["tags"][k] for k in keys): rows([s]) for s in series}


@pytest.fixture(scope="module")
def plant(
    mosquitto: Mosquitto, influxdb1: InfluxDB1, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Plant]:
    db = uid("factory").replace("-", "_")
    influxdb1.create_database(db)
    workdir: Path = tmp_path_factory.mktemp("gw-influx-v1")
    gw = GatewayProcess(
        mosquitto.port,
        influxdb1.url,
        workdir,
        extra_toml=f"""
[influx]
api = "v1"
database = "{db}"
[detection]
window = 20
warmup = 10
[alerts]
clear_after = 2
offline_after_s = 1
ack_required = []  # SPEC §6 auto-clear (latching: test_alarm_management.py)
[events]
warning_rate_per_h = {RATE_THRESHOLD}
rate_window_s = 3600
[[rules]]
sensor = "temperature"
high = 85.0
[[mqtt.subscriptions]]
topic = "plant/+/+/+"
template = "plant/{{line}}/{{equipment}}/{{sensor}}"
[[mqtt.subscriptions]]
topic = "factory/+/+/+/events"
template = "factory/{{factory}}/{{line}}/{{equipment}}/events"
format = "event"
""",
    )
    # a failed set-up must not leave this gateway consuming the session broker's
    # plant/# messages beside the next tests' gateways
    try:
        p = Plant(gw, influxdb1, db)
        now_ms = int(time.time() * 1000)
        p.start_ms = now_ms - 10 * 60_000
        base = now_ms - 60_000
        with MqttProbe(mosquitto.port, ["alerts/events/#"]) as probe:

            def ours(m: Any) -> bool:
                return m.topic.startswith("alerts/events/") and m.json()["equipment"] in p.equipment

            def event(eq: str, kind: str, state: str) -> Callable[[Any], bool]:
                def match(m: Any) -> bool:
                    e = m.json() if m.topic.startswith("alerts/events/") else {}
                    return (e.get("equipment"), e.get("kind"), e.get("state")) == (eq, kind, state)

                return match

            # Production events, 5 minutes ago (production.json's "last hour" panel too).
            # m1: 3 defects -> 3/h >= 2/h: defect_rate raised. m2: an unknown count (-1, an
            # event but no defects) and an event whose update moves it (a tombstone stays).
            t0 = now_ms - 5 * 60_000
            initial = [
                Ev(uid("E"), t0, p.m1, "L1", 1),
                Ev(uid("E"), t0 + 20_000, p.m1, "L1", 1),
                Ev(uid("E"), t0 + 40_000, p.m1, "L1", 1),
                Ev(uid("E"), t0 + 5_000, p.m2, "L2", 1),
                Ev(uid("E"), t0 + 25_000, p.m2, "L2", -1),
                Ev(uid("E"), t0 + 45_000, p.m2, "L2", 0),
                Ev(uid("E"), t0 + 10_000, p.m3, "L1", 0),
                Ev(uid("E"), t0 + 30_000, p.m3, "L1", 1),
            ]

            def publish_events(evs: list[Ev]) -> None:
                for machine in sorted({e.machine for e in evs}):
                    mine = [e for e in evs if e.machine == machine]
                    probe.publish(
                        f"factory/{p.factory}/{p.machine_line[machine]}/{machine}/events",
                        [
                            {
                                "event_id": e.event_id,
                                "event_time": e.ms,
                                "duration_ms": 4000,
                                "defect_count": e.defects,
                            }
                            for e in mine
                        ],
                    )
                p.live_events.update({e.event_id: e for e in evs})

            publish_events(initial)
            gw.wait_metric("edge_events_total", lambda v: v == len(initial), result="stored")
            moved = initial[3]._replace(ms=t0 + 65_000)  # same id, later event_time: an update
            p.superseded.append(initial[3])
            publish_events([moved])
            gw.wait_metric("edge_events_total", lambda v: v == 1, result="update")
            p.rate_alert = probe.wait_for(event(p.m1, "defect_rate", "raised"))[0].json()

            def publish(eq: str, sensor: str, unit: str, vals: list[float], first: int = 0) -> None:
                batch = [
                    {"value": v, "ts": base + (first + i) * 1000, "unit": unit}
                    for i, v in enumerate(vals)
                ]
                probe.publish(f"plant/line-d/{eq}/{sensor}", batch)
                p.points.setdefault((eq, sensor), []).extend(
                    (base + (first + i) * 1000, v) for i, v in enumerate(vals)
                )
                p.last[(eq, sensor)] = (base + (first + len(vals) - 1) * 1000, vals[-1])

            publish(
                p.a, "temperature", "celsius", [50.0 + (i % 5) * 0.5 for i in range(15)] + [99.0]
            )
            publish(p.b, "pressure", "psi", [20.0 + (i % 4) * 0.3 for i in range(15)] + [200.0])
            publish(p.c, "vibration", "hz", [3.0, 3.5])
            # b's alert clears in a later batch: a raise and a clear of one alert in the same
            # batch share a timestamp and series in InfluxDB, and the clear overwrites the raise
            probe.wait_for(event(p.b, "zscore", "raised"))
            publish(p.b, "pressure", "psi", [20.1, 20.4], first=16)
            probe.wait_for(event(p.b, "zscore", "cleared"))
            # All three go silent: offline alerts, after which nothing changes any more
            # (an equipment that came back would go offline again while the tests run).
            for eq in (p.a, p.b, p.c):
                probe.wait_for(event(eq, "offline", "raised"), timeout=10)
            p.events = [m.json() for m in probe.messages(ours)]
            machine_alerts = [
                m.json()
                for m in probe.messages("alerts/events/#")
                if m.json()["equipment"] in p.machine_line
            ]
            assert machine_alerts == [p.rate_alert]  # m2 and m3 stay below the threshold
        p.end_ms = int(time.time() * 1000) + 60_000
        # every transition seen on MQTT is in InfluxDB, and every event point
        deadline = time.monotonic() + 10
        while len(rows(p.run('SELECT "id" FROM "alerts" WHERE $timeFilter'))) < len(p.events) + len(
            machine_alerts
        ) or len(rows(p.run('SELECT "event_id" FROM "machine_events" WHERE $timeFilter'))) < len(
            p.live_events
        ) + len(p.superseded):
            assert time.monotonic() < deadline, "alert / event points did not reach InfluxDB"
            time.sleep(0.1)
        yield p
    except BaseException:
        gw.kill()
        raise
    assert gw.stop() == 0


def test_gateway_wrote_readings_through_v1_write(plant: Plant) -> None:
    got = plant.influx.points(
        'SELECT "value", "unit", "source" FROM "readings" WHERE "equipment" = '
        f"'{plant.a}' ORDER BY time DESC LIMIT 1",
        plant.db,
    )
    ms, value = plant.last[(plant.a, "temperature")]
    assert got[0]["time"] == ms * 1_000_000 and got[0]["value"] == value
    assert (got[0]["unit"], got[0]["source"]) == ("celsius", "mqtt")
    sent = {key: len(points) for key, points in plant.points.items()}
    assert sum(sent.values()) == 16 + 18 + 2
    # what InfluxDB keeps, counted by InfluxDB (no time bound: points at any time count)
    counted = plant.run(
        'SELECT COUNT("value") FROM "readings" WHERE "equipment" =~ /^$equipment$/ '
        'GROUP BY "equipment", "sensor"'
    )
    assert {k: r[0]["count"] for k, r in by_tags(counted, "equipment", "sensor").items()} == sent
    (total,) = rows(plant.run('SELECT COUNT("value") FROM "readings"'))  # the whole database
    assert total["count"] == sum(sent.values())
    # ... each one with the time and value it was sent with
    stored = plant.run(
        'SELECT "value" FROM "readings" WHERE "equipment" =~ /^$equipment$/ '
        'GROUP BY "equipment", "sensor"'
    )
    assert {
        k: [(r["time"], r["value"]) for r in rs]
        for k, rs in by_tags(stored, "equipment", "sensor").items()
    } == {k: sorted(v) for k, v in plant.points.items()}
    assert plant.gw.metric("edge_readings_written_total") == sum(sent.values())


# --------------------------------------------------------- one check per dashboard query


def check_equipment_last(p: Plant, series: Series) -> None:
    got = {eq: r[0] for (eq,), r in by_tags(series, "equipment").items()}
    assert set(got) == p.equipment
    for (eq, _sensor), (ms, value) in p.last.items():
        assert (got[eq]["time"], got[eq]["last_value"]) == (ms, value)  # time = last seen


def check_equipment_anomalies(p: Plant, series: Series) -> None:
    got = {eq: r[0]["anomalies"] for (eq,), r in by_tags(series, "equipment").items()}
    assert got == {p.a: 1, p.b: 1}  # the 99 on a, the 200 on b; c had none


def check_equipment_offline(p: Plant, series: Series) -> None:
    got = {eq: r[0]["offline"] for (eq,), r in by_tags(series, "equipment").items()}
    assert got == {p.a: "raised", p.b: "raised", p.c: "raised"}


def check_active_alerts(p: Plant, series: Series) -> None:
    # Grafana: groupBy id taking the first (= newest, ORDER BY time DESC), drop cleared
    newest: dict[str, dict[str, Any]] = {}
    for r in rows(series):
        newest.setdefault(r["id"], r)
    active = {i: r for i, r in newest.items() if r["state"] != "cleared"}
    kinds = {(r["equipment"], r["sensor"], r["kind"]) for r in active.values()}
    assert kinds == {
        (p.a, "temperature", "threshold_high"),
        (p.a, "temperature", "zscore"),
        (p.a, "*", "offline"),
        (p.b, "*", "offline"),
        (p.c, "*", "offline"),
    }
    assert len(newest) == len(active) + 1  # b's zscore alert: raised, then cleared
    # ... which is exactly what the gateway itself says is active
    status, body = http_request(f"{p.gw.url}/api/alerts?state=active")
    assert status == 200
    api = {a["id"]: a for a in json.loads(body) if a["equipment"] in p.equipment}
    assert set(api) == set(active)
    for i, r in active.items():
        assert (r["state"], r["severity"]) == (api[i]["state"], api[i]["severity"])


def check_values(p: Plant, series: Series) -> None:
    got = by_tags(series, "equipment", "sensor")
    assert set(got) == set(p.points)
    for key, points in p.points.items():  # mean per 10 s bucket ($__interval)
        buckets: dict[int, list[float]] = {}
        for ms, v in points:
            buckets.setdefault(ms - ms % 10_000, []).append(v)
        expected = {t: sum(vs) / len(vs) for t, vs in buckets.items()}
        assert {r["time"]: r["mean"] for r in got[key]} == pytest.approx(expected)


def check_value_anomalies(p: Plant, series: Series) -> None:
    got = {k: [r["value"] for r in v] for k, v in by_tags(series, "equipment", "sensor").items()}
    assert got == {(p.a, "temperature"): [99.0], (p.b, "pressure"): [200.0]}


def check_z(p: Plant, series: Series) -> None:
    got = by_tags(series, "equipment", "sensor")
    # c never warmed up (3 readings < warmup 10): no z, no series
    assert set(got) == {(p.a, "temperature"), (p.b, "pressure")}
    assert max(r["mean"] for r in got[(p.b, "pressure")]) > 3


def check_z_anomalies(p: Plant, series: Series) -> None:
    got = {k: [r["z"] for r in v] for k, v in by_tags(series, "equipment", "sensor").items()}
    assert set(got) == {(p.a, "temperature"), (p.b, "pressure")}
    assert got[(p.a, "temperature")][0] > 5 and got[(p.b, "pressure")][0] > 5


def check_transitions(p: Plant, series: Series) -> None:
    counts: dict[str, int] = {}
    for (sev,), rs in by_tags(series, "severity").items():
        counts[sev] = sum(r["count"] for r in rs)
    expected: dict[str, int] = {}
    for e in p.events:
        expected[e["severity"]] = expected.get(e["severity"], 0) + 1
    assert counts == expected


def check_equipment_var(p: Plant, series: Series) -> None:
    assert {r["value"] for r in rows(series)} == p.equipment


def check_sensor_var(p: Plant, series: Series) -> None:
    assert {r["value"] for r in rows(series)} == {"temperature", "pressure", "vibration"}


def check_annotations(p: Plant, series: Series) -> None:
    got = rows(series)
    assert len(got) == len(p.events)
    assert {r["message"] for r in got} == {e["message"] for e in p.events}
    assert all(r["equipment"] in p.equipment and r["kind"] and r["severity"] for r in got)


CHECKS: dict[str, Callable[[Plant, Series], None]] = {
    "Equipment status/A": check_equipment_last,
    "Equipment status/B": check_equipment_anomalies,
    "Equipment status/C": check_equipment_offline,
    "Active alerts/A": check_active_alerts,
    "Sensor values (red points: anomalies)/A": check_values,
    "Sensor values (red points: anomalies)/B": check_value_anomalies,
    "z-score/A": check_z,
    "z-score/B": check_z_anomalies,
    "Alert transitions by severity/A": check_transitions,
    "var equipment": check_equipment_var,
    "var sensor": check_sensor_var,
    "annotation Alerts": check_annotations,
}


def own_influxql() -> list[tuple[str, str]]:
    return [
        (where, text)
        for name in OWN_DASHBOARDS
        for where, kind, text in dashboard_queries(dashboards()[name])
        if kind == "influxql"
    ]


def test_every_own_influxql_query_has_a_check() -> None:
    assert {where for where, _ in own_influxql()} == set(CHECKS)


@pytest.mark.parametrize(("where", "query"), own_influxql(), ids=[w for w, _ in own_influxql()])
def test_dashboard_query_on_influxdb_1x(plant: Plant, where: str, query: str) -> None:
    CHECKS[where](plant, plant.run(query))


# ------------------------------------------ production.json: the machine_events the gateway wrote


def live(p: Plant) -> list[Ev]:
    return sorted(p.live_events.values(), key=lambda e: e.ms)


def per_bucket(
    p: Plant,
    series: Series,
    tag: str,
    column: str,
    width_ms: int,
    expected: dict[tuple[str, int], int],
) -> None:
    """A ``GROUP BY time(width), tag fill(0)`` answer: `expected` {(tag, bucket): value}
    where it is not 0, 0 in every other bucket of the time range."""
    first, last = p.start_ms - p.start_ms % width_ms, p.end_ms - p.end_ms % width_ms
    got: dict[tuple[str, int], int] = {}
    for (value,), rs in by_tags(series, tag).items():
        assert [r["time"] for r in rs] == list(range(first, last + 1, width_ms)), value
        got.update({(value, r["time"]): r[column] for r in rs})
    assert {k: v for k, v in got.items() if v != 0} == expected
    assert {tag_value for tag_value, _ in got} == {tag_value for tag_value, _ in expected}


def bucketed(
    evs: list[Ev], key: Callable[[Ev], str], value: Callable[[Ev], int], width_ms: int
) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for e in evs:
        k = (key(e), e.ms - e.ms % width_ms)
        out[k] = out.get(k, 0) + value(e)
    return {k: v for k, v in out.items() if v != 0}


def counted_defects(p: Plant) -> list[Ev]:
    """Live events with a known defect count (the dashboards filter defect_count >= 0)."""
    return [e for e in live(p) if e.defects >= 0]


def totals(evs: list[Ev], key: Callable[[Ev], str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in evs:
        out[key(e)] = out.get(key(e), 0) + e.defects
    return out


def check_defects_per_line(p: Plant, series: Series) -> None:
    expected = bucketed(counted_defects(p), lambda e: e.line, lambda e: e.defects, 10_000)
    per_bucket(p, series, "line", "sum", 10_000, expected)


def check_top_defect_lines(p: Plant, series: Series) -> None:
    got = {line: r[0]["defects"] for (line,), r in by_tags(series, "line").items()}
    assert got == totals(counted_defects(p), lambda e: e.line) == {"L1": 4, "L2": 1}


def check_machine_health(p: Plant, series: Series) -> None:
    got = {m: r[0]["defects_per_h"] for (m,), r in by_tags(series, "machine").items()}
    assert got == totals(counted_defects(p), lambda e: e.machine)
    assert got == {p.m1: 3, p.m2: 1, p.m3: 1}


def check_defect_rate_per_machine(p: Plant, series: Series) -> None:
    hour = 3_600_000
    expected = bucketed(counted_defects(p), lambda e: e.machine, lambda e: e.defects, hour)
    per_bucket(p, series, "machine", "sum", hour, expected)


def check_events_per_machine(p: Plant, series: Series) -> None:
    # every live event counts, the unknown defect count (-1) too; the tombstone does not
    expected = bucketed(live(p), lambda e: e.machine, lambda e: 1, 10_000)
    assert sum(expected.values()) == len(p.live_events) == 8
    per_bucket(p, series, "machine", "count", 10_000, expected)


def check_defect_rate_alerts(p: Plant, series: Series) -> None:
    got = {eq: r[0] for (eq,), r in by_tags(series, "equipment").items()}
    assert set(got) == {p.m1}  # m2 and m3: 1 defect/h, below the threshold
    row, alert = got[p.m1], p.rate_alert
    assert (row["state"], row["rate_per_h"], row["message"]) == (
        "raised",
        pytest.approx(3.0),
        alert["message"],
    )
    assert alert["value"] == pytest.approx(3.0) and alert["threshold"] == RATE_THRESHOLD


def check_factory_var(p: Plant, series: Series) -> None:
    assert {r["value"] for r in rows(series)} == {p.factory}


OTHER_CHECKS: dict[tuple[str, str], Callable[[Plant, Series], None]] = {
    ("production.json", "Defects per line/A"): check_defects_per_line,
    ("production.json", "Top defect lines (time range)/A"): check_top_defect_lines,
    ("production.json", "Machine health: defects in the last hour/A"): check_machine_health,
    ("production.json", "Defect rate per machine (per hour)/A"): check_defect_rate_per_machine,
    ("production.json", "Events per machine/A"): check_events_per_machine,
    ("production.json", "defect_rate alerts/A"): check_defect_rate_alerts,
    ("production.json", "var factory"): check_factory_var,
}


def other_influxql() -> list[tuple[tuple[str, str], str]]:
    return [
        ((name, where), text)
        for name, dash in dashboards().items()
        if name not in OWN_DASHBOARDS
        for where, kind, text in dashboard_queries(dash)
        if kind == "influxql"
    ]


def test_every_other_influxql_query_has_a_check() -> None:
    assert {key for key, _ in other_influxql()} == set(OTHER_CHECKS)


@pytest.mark.parametrize(
    ("key", "query"), other_influxql(), ids=[f"{n}: {w}" for (n, w), _ in other_influxql()]
)
def test_other_dashboard_query_on_influxdb_1x(
    plant: Plant, key: tuple[str, str], query: str
) -> None:
    OTHER_CHECKS[key](plant, plant.run(query))
