"""deploy/prometheus and the PromQL of the dashboards against a live gateway.

promtool (Debian package ``prometheus``) checks the config and rules, runs the rule unit
tests and lints the gateway's live ``/metrics``. Then a real Prometheus scrapes the
gateway with the shipped config (target and intervals adapted) and evaluates every
dashboard query and every alert rule.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_binary
from tests.harness import GatewayProcess, MqttProbe, uid
from tests.servers import HOST, Mosquitto, VictoriaMetrics, _Server, http_request
from tests.unit.test_deploy_static import (
    OWN_DASHBOARDS,
    PROMETHEUS,
    dashboard_queries,
    dashboards,
    metric_names_in,
    prometheus_rules,
)


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    exe = require_binary("promtool")
    return subprocess.run(
        [exe, *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROMETHEUS,
    )


@pytest.fixture(scope="module")
def gateway(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    # One threshold alert, raised before Prometheus starts and active throughout (no
    # offline alert while the module runs), one series; rejects are never rate-limited.
    gw = GatewayProcess(
        mosquitto.port,
        victoria.url,
        tmp_path_factory.mktemp("gw-prom"),
        extra_toml="""
[[rules]]
sensor = "temperature"
high = 85.0
[alerts]
offline_after_s = 3600
[mqtt]
deadletter_per_s = 1000
""",
    )
    eq = uid("prom")
    with MqttProbe(mosquitto.port) as p:
        p.publish(f"plant/line-p/{eq}/temperature", [20.0, 21.0, 99.0])
        p.publish(f"plant/line-p/{eq}/temperature", b"not json")
    gw.wait_metric("edge_readings_written_total", lambda v: v == 3)
    gw.wait_metric("edge_readings_rejected_total", lambda v: v == 1, reason="malformed")
    assert gw.metric("edge_alerts_active") == 1
    yield gw
    assert gw.stop() == 0


class Traffic(threading.Thread):
    """Publishes a reading (one more series) and, every 4th time, a malformed message
    every 50 ms until stopped: rates over the last seconds are positive."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.topic = f"plant/line-p/{uid('prom-steady')}/pressure"
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with MqttProbe(self.port) as p:
                i = 0
                while not self.done.wait(0.05):
                    p.publish(self.topic, 20.0 + i % 2)  # z = +-1: never an anomaly
                    if i % 4 == 0:
                        p.publish(self.topic, b"not json")
                    i += 1
        except BaseException as e:  # surfaced by the fixture
            self.error = e

    def stop(self) -> None:
        self.done.set()
        self.join(10)
        assert self.error is None, self.error


def test_promtool_check_config_and_rules() -> None:
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout
    proc = promtool("check", "rules", "rules.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(prometheus_rules())} rules found" in proc.stdout


def test_promtool_rule_unit_tests() -> None:
    proc = promtool("test", "rules", "rules.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every alert of rules.yml is exercised by a unit test
    tests = yaml.safe_load((PROMETHEUS / "rules.test.yml").read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case.get("alert_rule_test", [])}
    assert tested == {r["alert"] for r in prometheus_rules()}


def test_promtool_check_metrics_on_live_gateway(gateway: GatewayProcess) -> None:
    body = gateway.metrics_text().encode()
    assert b"edge_readings_received_total" in body
    proc = promtool("check", "metrics", stdin=body)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (
        proc.stdout + proc.stderr
    )


def used_metric_names() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for name in OWN_DASHBOARDS:
        for where, kind, text in dashboard_queries(dashboards()[name]):
            if kind == "promql":
                used[f"{name}: {where}"] = metric_names_in(text)
    for rule in prometheus_rules():
        used[f"rule {rule['alert']}"] = metric_names_in(rule["expr"])
    return used


def test_dashboard_and_rule_metrics_exist_in_live_metrics(gateway: GatewayProcess) -> None:
    live = set(gateway.metrics())
    used = used_metric_names()
    assert sum(len(v) for v in used.values()) > 15
    missing = {k: sorted(v - live) for k, v in used.items() if v - live}
    assert not missing


# ----------------------------------------------------------------- a real Prometheus


TEST_INTERVALS = {"scrape_interval": "1s", "evaluation_interval": "1s"}


def shipped_config() -> dict[str, Any]:
    cfg = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert isinstance(cfg, dict)
    return cfg


def adapt_config(shipped: dict[str, Any], gateway: str, itself: str) -> dict[str, Any]:
    """The shipped config, changed only where the test must: 1 s intervals, the
    gateway's and Prometheus' own address as targets, absolute rule file paths."""
    cfg = copy.deepcopy(shipped)
    cfg["global"] = {**(cfg.get("global") or {}), **TEST_INTERVALS}
    for job in cfg["scrape_configs"]:
        for sc in job["static_configs"]:
            sc["targets"] = [gateway if job["job_name"] == "edge-gateway" else itself]
    cfg["rule_files"] = [str(PROMETHEUS / f) for f in cfg["rule_files"]]
    return cfg


class Prometheus(_Server):
    """Prometheus scraping one gateway every second with the shipped config and rules."""

    binary = "prometheus"
    start_timeout = 30.0

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "prometheus.yml"

    def _prepare(self) -> None:
        cfg = adapt_config(shipped_config(), self.target, f"{self.host}:{self.port}")
        self.config_path.write_text(yaml.safe_dump(cfg))

    def _argv(self) -> list[str]:
        return [
            self.exe,
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--log.level=warn",
        ]

    def _ready(self) -> bool:
        status, _ = http_request(f"{self.url}/-/ready", timeout=1.0)
        return status == 200

    def api(self, path: str, **params: str) -> Any:
        qs = urllib.parse.urlencode(params)
        status, body = http_request(f"{self.url}/api/v1/{path}?{qs}")
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", f"{path} {params}: {body[:300]!r}"
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])


@pytest.fixture(scope="module")
def prometheus(gateway: GatewayProcess, mosquitto: Mosquitto) -> Iterator[Prometheus]:
    require_binary("prometheus")
    server = Prometheus(f"{HOST}:{gateway.http_port}")
    traffic = Traffic(mosquitto.port)
    with server:
        traffic.start()
        try:
            # scrapes that saw the traffic: rate() over 5 s is positive
            deadline = time.monotonic() + 20
            wanted = [
                'rate(edge_readings_received_total{source="mqtt"}[5s]) > 0',
                'rate(edge_readings_rejected_total{reason="malformed"}[5s]) > 0',
                "rate(edge_influx_write_seconds_count[5s]) > 0",
            ]
            while not all(server.query(q) for q in wanted):
                assert traffic.is_alive(), traffic.error
                assert time.monotonic() < deadline, "Prometheus did not see the traffic"
                time.sleep(0.3)
            yield server
        finally:
            traffic.stop()


def substitute(expr: str) -> str:
    return expr.replace("$__rate_interval", "5s").replace("$instance", ".*")


Result = list[dict[str, Any]]


def by_labels(result: Result, *names: str) -> dict[tuple[str, ...], float]:
    """{label values: sample value} of an instant vector (NaN stays NaN)."""
    out = {tuple(r["metric"].get(n, "") for n in names): float(r["value"][1]) for r in result}
    assert len(out) == len(result), f"labels {names} do not tell the series apart: {result}"
    return out


def exactly(value: float, *names: str, labels: tuple[str, ...] = ()) -> Callable[[Result], None]:
    """One series (with `labels` for `names`), of value `value`."""

    def check(result: Result) -> None:
        assert by_labels(result, *names) == {labels: value}

    return check


def positive(*names: str, labels: tuple[str, ...] = ()) -> Callable[[Result], None]:
    """One series (with `labels` for `names`), finite and > 0."""

    def check(result: Result) -> None:
        got = by_labels(result, *names)
        assert set(got) == {labels}
        assert math.isfinite(got[labels]) and got[labels] > 0

    return check


def empty(result: Result) -> None:
    assert result == []


def gauges(*names: str, at_least: int = 1) -> Callable[[Result], None]:
    """A gauge per series: at least `at_least` of them, each finite and >= 0."""

    def check(result: Result) -> None:
        got = by_labels(result, *names)
        assert len(got) >= at_least
        assert all(math.isfinite(v) and v >= 0 for v in got.values()), got

    return check


def received_per_second(result: Result) -> None:
    got = by_labels(result, "source")
    mqtt = got.pop(("mqtt",))
    assert math.isfinite(mqtt) and mqtt > 0
    assert got in ({}, {("opcua",): 0.0})  # no OPC UA server configured


def alert_transitions(result: Result) -> None:
    # the one transition (threshold_high raised) happened before Prometheus started
    assert by_labels(result, "kind", "state") == {("threshold_high", "raised"): 0.0}


def instance(gw: GatewayProcess) -> str:
    return f"{HOST}:{gw.http_port}"


# Every PromQL query of the dashboards, evaluated now, with the fixtures' traffic: the
# module's gateway has 1 active alert and 2 series, no OPC UA server and no failed write;
# the Traffic thread keeps readings, rejects (malformed) and writes flowing.
PROMQL_CHECKS: dict[str, Callable[[Result], None]] = {
    "gateway-health.json: Gateway scraped/A": exactly(1.0),
    "gateway-health.json: MQTT broker/A": exactly(1.0),
    "gateway-health.json: InfluxDB writable/A": exactly(1.0),
    "gateway-health.json: OPC UA servers/A": empty,
    "gateway-health.json: Readings per second/A": received_per_second,
    "gateway-health.json: Readings per second/B": positive(),
    "gateway-health.json: Readings per second/C": positive(),
    "gateway-health.json: Rejects by reason/A": positive("reason", labels=("malformed",)),
    "gateway-health.json: Rejects by reason/B": exactly(0.0),
    "gateway-health.json: Pipeline latency (receive to detected)/A": positive(),
    "gateway-health.json: Pipeline latency (receive to detected)/B": positive(),
    "gateway-health.json: InfluxDB write latency/A": positive(),
    "gateway-health.json: InfluxDB write latency/B": positive(),
    "gateway-health.json: InfluxDB write latency/C": empty,
    "gateway-health.json: Spool/A": gauges(),
    "gateway-health.json: Spool/B": exactly(0.0),
    "gateway-health.json: Queues/A": gauges("queue"),
    "gateway-health.json: Alerts and series/A": exactly(1.0),
    "gateway-health.json: Alerts and series/B": alert_transitions,
    "gateway-health.json: Alerts and series/C": exactly(2.0),
    "plant-overview.json: Active alerts (gateway)/A": exactly(1.0),
    # the one raise was annunciated before Prometheus started; no flood, nothing held
    "gateway-health.json: Alarm rate per 10 min (ISA-18.2)/A": exactly(0.0),
    "gateway-health.json: Alarm rate per 10 min (ISA-18.2)/B": exactly(0.0),
    "gateway-health.json: Alarms suppressed and active/A": gauges("reason", at_least=6),
    "gateway-health.json: Alarms suppressed and active/B": exactly(
        1.0, "priority", "state", labels=("high", "raised")
    ),
}


def promql_queries() -> list[tuple[str, str]]:
    return [
        (f"{name}: {where}", text)
        for name, dash in dashboards().items()
        for where, kind, text in dashboard_queries(dash)
        if kind == "promql" and not re.fullmatch(r"label_values\(.*\)", text.strip())
    ]


def test_every_dashboard_promql_has_a_check() -> None:
    assert {key for key, _ in promql_queries()} == set(PROMQL_CHECKS)


def test_prometheus_scrapes_the_gateway(prometheus: Prometheus, gateway: GatewayProcess) -> None:
    up = prometheus.query('up{job="edge-gateway"}')
    assert [r["value"][1] for r in up] == ["1"]
    assert up[0]["metric"]["site"] == "plant"  # label from the shipped scrape config
    assert up[0]["metric"]["instance"] == instance(gateway)
    received = prometheus.query('edge_readings_received_total{job="edge-gateway"}')
    assert float(by_labels(received, "source")[("mqtt",)]) >= 3


@pytest.mark.parametrize(("key", "expr"), promql_queries(), ids=[k for k, _ in promql_queries()])
def test_dashboard_promql_on_prometheus(prometheus: Prometheus, key: str, expr: str) -> None:
    result = prometheus.query(substitute(expr))
    PROMQL_CHECKS[key](result)


def test_dashboard_variables(prometheus: Prometheus, gateway: GatewayProcess) -> None:
    checked = 0
    for _name, dash in dashboards().items():
        for _where, kind, text in dashboard_queries(dash):
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text.strip())
            if kind == "promql" and m:  # a Grafana variable function, not PromQL
                values = {r["metric"].get(m.group(2)) for r in prometheus.query(m.group(1))}
                assert values == {instance(gateway)}, text
                checked += 1
    assert checked == 1


def test_alert_rules_load_and_evaluate_cleanly(prometheus: Prometheus) -> None:
    deadline = time.monotonic() + 10
    while True:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules):
            break
        assert time.monotonic() < deadline, "rules not evaluated"
        time.sleep(0.3)
    assert {r["name"] for r in rules} == {r["alert"] for r in prometheus_rules()}
    for r in rules:
        assert r["health"] == "ok", (r["name"], r.get("lastError"))
    # a healthy gateway fires nothing
    assert [r["name"] for r in rules if r["state"] == "firing"] == []


def flatten(doc: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """{path: leaf} of a YAML document (an empty list or mapping is a leaf)."""
    if isinstance(doc, dict) and doc:
        items: Any = doc.items()
    elif isinstance(doc, list) and doc:
        items = enumerate(doc)
    else:
        return {path: doc}
    out: dict[tuple[Any, ...], Any] = {}
    for k, v in items:
        out.update(flatten(v, (*path, k)))
    return out


def test_prometheus_config_is_the_shipped_one(
    prometheus: Prometheus, gateway: GatewayProcess
) -> None:
    """The config Prometheus runs differs from the shipped one only in targets, intervals
    and rule file paths: anything else the shipped file has (or gets) is carried over."""
    shipped = shipped_config()
    assert [j["job_name"] for j in shipped["scrape_configs"]] == ["edge-gateway", "prometheus"]
    assert shipped["scrape_configs"][0].get("metrics_path", "/metrics") == "/metrics"
    used = yaml.safe_load(prometheus.config_path.read_text())
    a, b = flatten(shipped), flatten(used)
    missing = object()
    differ = {
        p: b.get(p, missing) for p in a.keys() | b.keys() if a.get(p, missing) != b.get(p, missing)
    }
    expected: dict[tuple[Any, ...], Any] = {("global", k): v for k, v in TEST_INTERVALS.items()}
    expected.update(
        {("rule_files", i): str(PROMETHEUS / f) for i, f in enumerate(shipped["rule_files"])}
    )
    for i, job in enumerate(shipped["scrape_configs"]):
        target = (
            instance(gateway) if job["job_name"] == "edge-gateway" else f"{HOST}:{prometheus.port}"
        )
        for j, _sc in enumerate(job["static_configs"]):
            expected[("scrape_configs", i, "static_configs", j, "targets", 0)] = target
    assert differ == expected
    # ... and it is what Prometheus loaded
    loaded = yaml.safe_load(prometheus.api("status/config")["yaml"])
    for k, v in (used.get("global") or {}).items():
        assert loaded["global"][k] == v, k
    assert [
        (j["job_name"], [sc["targets"] for sc in j["static_configs"]])
        for j in loaded["scrape_configs"]
    ] == [
        (j["job_name"], [sc["targets"] for sc in j["static_configs"]])
        for j in used["scrape_configs"]
    ]
