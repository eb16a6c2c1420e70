"""deploy/prometheus and the PromQL of the dashboards against a live gateway.

promtool (Debian package ``prometheus``) checks the config and rules, runs the rule unit
tests and lints the gateway's live ``/metrics``. Then a real Prometheus scrapes the
gateway with the shipped config (target and intervals adapted) and evaluates every
dashboard query and every alert rule.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
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
    gw = GatewayProcess(
        mosquitto.port,
        victoria.url,
        tmp_path_factory.mktemp("gw-prom"),
        extra_toml='[[rules]]\nsensor = "temperature"\nhigh = 85.0\n',
    )
    eq = uid("prom")
    with MqttProbe(mosquitto.port) as p:
        p.publish(f"plant/line-p/{eq}/temperature", [20.0, 21.0, 99.0])
        p.publish(f"plant/line-p/{eq}/temperature", b"not json")
    gw.wait_metric("edge_readings_written_total", lambda v: v >= 3)
    yield gw
    assert gw.stop() == 0


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

    def _prepare(self) -> None:
        cfg = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        for job in cfg["scrape_configs"]:
            if job["job_name"] == "edge-gateway":
                job["static_configs"][0]["targets"] = [self.target]
            else:
                job["static_configs"][0]["targets"] = [f"{self.host}:{self.port}"]
        cfg["rule_files"] = [str(PROMETHEUS / f) for f in cfg["rule_files"]]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(cfg))

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
def prometheus(gateway: GatewayProcess) -> Iterator[Prometheus]:
    require_binary("prometheus")
    server = Prometheus(f"{HOST}:{gateway.http_port}")
    with server:
        deadline = time.monotonic() + 20
        # at least 3 scrapes, so rate() over 5 s has two samples
        while True:
            got = server.query('count_over_time(up{job="edge-gateway"}[1m])')
            if got and float(got[0]["value"][1]) >= 3:
                break
            assert time.monotonic() < deadline, "Prometheus did not scrape the gateway"
            time.sleep(0.3)
        yield server


def substitute(expr: str) -> str:
    return expr.replace("$__rate_interval", "5s").replace("$instance", ".*")


EXPECTED_EMPTY = {
    # no OPC UA server configured; no reject within the last 5 s; no failed write yet
    "gateway-health.json: OPC UA servers/A",
    "gateway-health.json: Rejects by reason/A",
    "gateway-health.json: InfluxDB write latency/C",
}


def test_prometheus_scrapes_the_gateway(prometheus: Prometheus) -> None:
    up = prometheus.query('up{job="edge-gateway"}')
    assert [r["value"][1] for r in up] == ["1"]
    assert up[0]["metric"]["site"] == "plant"  # label from the shipped scrape config
    received = prometheus.query('edge_readings_received_total{job="edge-gateway"}')
    assert float(received[0]["value"][1]) >= 3


def test_every_dashboard_promql_evaluates(prometheus: Prometheus) -> None:
    checked = 0
    for name, dash in dashboards().items():
        for where, kind, text in dashboard_queries(dash):
            if kind != "promql":
                continue
            key = f"{name}: {where}"
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text.strip())
            if m:  # a Grafana variable function, not PromQL
                values = {r["metric"].get(m.group(2)) for r in prometheus.query(m.group(1))}
                assert values - {None}, key
                continue
            result = prometheus.query(substitute(text))
            if name in OWN_DASHBOARDS:
                assert bool(result) is (key not in EXPECTED_EMPTY), f"{key}: {result}"
            checked += 1
    assert checked >= 20


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


def test_prometheus_config_is_the_shipped_one(tmp_path: Path) -> None:
    """The adapted config above differs from the shipped one only in targets and intervals."""
    shipped = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert [j["job_name"] for j in shipped["scrape_configs"]] == ["edge-gateway", "prometheus"]
    assert shipped["scrape_configs"][0].get("metrics_path", "/metrics") == "/metrics"
