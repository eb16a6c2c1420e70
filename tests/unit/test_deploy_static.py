"""Deployment files, checked without the tools that would run them (no Docker engine here).

docker-compose.yml, deploy/Dockerfile, Grafana provisioning and dashboards, the
Prometheus config, mosquitto configs and ACL, the systemd unit (with
`systemd-analyze verify`) and the Node-RED flow (its function nodes run under `node`);
a missing `systemd-analyze` or `node` skips, and fails under CI (`require_binary`). The
same files are exercised against real servers in tests/integration/test_deploy_*.py
(the ACL's rights on the secured broker, the HEALTHCHECK command on a live gateway).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
import pytest
import yaml

from gateway.config import AlertsConfig, HttpConfig, InfluxConfig, MqttConfig, load_settings
from gateway.daemon.metrics import Metrics
from tests.conftest import require_binary
from tests.servers import find_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
OWN_DASHBOARDS = ("plant-overview.json", "gateway-health.json")
PROVISIONING = DEPLOY / "grafana" / "provisioning"
PROMETHEUS = DEPLOY / "prometheus"
MOSQUITTO = ROOT / "mosquitto"
UNIT = DEPLOY / "systemd" / "edge-gateway.service"
FLOW = DEPLOY / "node-red" / "flow.json"

# --------------------------------------------------------------------- helpers (shared)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: load_json(p) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # rows


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, kind, text) of every query: kind ``influxql`` or ``promql``.

    `where` is ``panel title/refId``, ``var name`` or ``annotation name``.
    """
    out: list[tuple[str, str, str]] = []

    def kind_of(ds: Any, fallback: Any) -> str:
        t = (ds or fallback or {}).get("type", "") if isinstance(ds or fallback, dict) else ""
        return "promql" if t == "prometheus" else "influxql"

    for p in _panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            text = t.get("expr") or t.get("query")
            if text:
                out.append(
                    (
                        f"{p['title']}/{t['refId']}",
                        kind_of(t.get("datasource"), p.get("datasource")),
                        text,
                    )
                )
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        text = q.get("query") if isinstance(q, dict) else q
        out.append((f"var {v['name']}", kind_of(v.get("datasource"), None), str(text or "")))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("query"):
            out.append((f"annotation {a['name']}", kind_of(a.get("datasource"), None), a["query"]))
    return out


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bedge_[a-z0-9_]+\b", expr))


def exported_metric_names(families: Any) -> set[str]:
    """Family and sample names (``x``, ``x_total``, ``x_bucket`` ...) of metric families."""
    names: set[str] = set()
    for fam in families:
        names.add(fam.name)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        if fam.type == "histogram":
            names.update(fam.name + s for s in ("_bucket", "_count", "_sum"))
        names.update(s.name for s in fam.samples)
    return names


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose variable interpolation: ``${VAR}``, ``${VAR:-default}``."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, value)


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repo) of bind mounts."""
    out = {}
    for v in svc.get("volumes", []):
        parts = v.split(":")
        if parts[0].startswith("."):
            out[parts[1]] = parts[0]
    return out


def mosquitto_conf(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, *args = line.split()
            out.append((key, args))
    return out


def parse_acl(path: Path) -> dict[str, list[tuple[str, str]]]:
    """user -> [(access, topic)]; access ``read``, ``write`` or ``readwrite``."""
    acl: dict[str, list[tuple[str, str]]] = {}
    user = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] == "user":
            user = words[1]
            acl.setdefault(user, [])
        elif words[0] == "topic":
            access, topic = (words[1], words[2]) if len(words) == 3 else ("readwrite", words[1])
            acl[user].append((access, topic))
    return acl


def allowed(acl: dict[str, list[tuple[str, str]]], user: str, access: str, topic: str) -> bool:
    return any(
        a in (access, "readwrite") and mqtt.topic_matches_sub(flt, topic)
        for a, flt in acl.get(user, [])
    )


@pytest.fixture
def no_edge_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in list(os.environ):
        if k.startswith("EDGE_"):
            monkeypatch.delenv(k)
    return monkeypatch


# ----------------------------------------------------------------------------- compose


def test_compose_services_and_referenced_files_exist() -> None:
    doc = compose()
    services = doc["services"]
    assert {"mosquitto", "influxdb", "grafana", "prometheus", "gateway", "simulator"} <= set(
        services
    )
    declared = set(doc.get("volumes") or {})
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name}: {src} does not exist"
            else:
                assert src in declared, f"{name}: named volume {src} not declared"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
    build = services["gateway"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    assert services["simulator"]["image"] == services["gateway"]["image"]


def test_compose_gateway_env_validates_and_matches_the_other_services(
    no_edge_env: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    gw = services["gateway"]
    env = service_env(gw)
    assert all(k.startswith("EDGE_") for k in env), "gateway env is EDGE_* only"
    config_host = mounts(gw)[env["EDGE_CONFIG"]]
    for k, v in env.items():
        no_edge_env.setenv(k, v)
    settings = load_settings(ROOT / config_host)  # what the container would load
    assert settings.rules, "compose gateway config has the seed plant rules"

    # broker: service name, listener port of mosquitto.conf, published port
    assert settings.mqtt.host == "mosquitto"
    conf = dict(mosquitto_conf(MOSQUITTO / "mosquitto.conf"))
    assert int(conf["listener"][0]) == settings.mqtt.port
    assert f"{settings.mqtt.port}:{settings.mqtt.port}" in services["mosquitto"]["ports"]
    assert mounts(services["mosquitto"])["/mosquitto/config/mosquitto.conf"].endswith(
        "mosquitto/mosquitto.conf"
    )
    # InfluxDB 2: the org / bucket / token it is initialised with
    influx_env = service_env(services["influxdb"])
    assert settings.influx.url == "http://influxdb:8086"
    assert settings.influx.api == "v2"
    assert settings.influx.org == influx_env["DOCKER_INFLUXDB_INIT_ORG"]
    assert settings.influx.bucket == influx_env["DOCKER_INFLUXDB_INIT_BUCKET"]
    token = settings.influx.token.get_secret_value()
    assert token and token == influx_env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    # HTTP: listens beyond loopback, published, scraped by Prometheus
    assert settings.http.host == "0.0.0.0"
    assert f"{settings.http.port}:{settings.http.port}" in gw["ports"]
    prom = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "edge-gateway")
    assert job["static_configs"][0]["targets"] == [f"gateway:{settings.http.port}"]
    assert mounts(services["prometheus"])["/etc/prometheus"] == "./deploy/prometheus"
    # the image's HEALTHCHECK (not overridden) requests the port compose sets
    assert "healthcheck" not in gw
    hc = dockerfile_healthcheck()
    url = healthcheck_request(hc.argv, {**dockerfile_env(), **env}).url
    assert url == f"http://127.0.0.1:{settings.http.port}/healthz"
    # the simulator shares the image but serves no HTTP: its healthcheck is off
    assert services["simulator"]["healthcheck"] == {"disable": True}
    # spool on a volume
    assert settings.spool.dir == "/var/lib/edge-gateway"
    assert any(v.split(":")[1] == settings.spool.dir for v in gw["volumes"])
    # Grafana reads the same InfluxDB (bucket = database through the virtual DBRP mapping)
    g_env = service_env(services["grafana"])
    assert g_env["INFLUX_TOKEN"] == token
    assert g_env["INFLUX_DATABASE"] == settings.influx.bucket
    assert g_env["INFLUX_URL"] == settings.influx.url
    assert g_env["PROMETHEUS_URL"] == "http://prometheus:9090"
    home = g_env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/var/lib/grafana/dashboards/")
    assert (DASHBOARDS / Path(home).name).is_file()
    # the simulator publishes where the gateway subscribes
    cmd = services["simulator"]["command"]
    assert cmd[:2] == ["edge-sim", "mqtt"]
    assert cmd[cmd.index("--host") + 1] == settings.mqtt.host
    assert int(cmd[cmd.index("--port") + 1]) == settings.mqtt.port
    nr_env = service_env(services["node-red"])
    assert (nr_env["MQTT_HOST"], int(nr_env["MQTT_PORT"])) == ("mosquitto", settings.mqtt.port)


def test_compose_simulator_command_parses() -> None:
    from simulator.cli import build_parser

    cmd = compose()["services"]["simulator"]["command"]
    args = build_parser().parse_args(cmd[1:])
    assert args.host == "mosquitto"


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    return ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]


def dockerfile_env() -> dict[str, str]:
    """The ENV of the image (final stage)."""
    env_line = " ".join(rest for word, rest in final_stage() if word == "ENV")
    return dict(kv.split("=", 1) for kv in shlex.split(env_line))


class Healthcheck(NamedTuple):
    options: dict[str, str]  # --interval=15s ... as {"interval": "15s"}
    argv: list[str]  # what Docker runs (the shell form as sh -c)


def dockerfile_healthcheck() -> Healthcheck:
    """The final stage's one HEALTHCHECK, parsed."""
    health = [rest for word, rest in final_stage() if word == "HEALTHCHECK"]
    assert len(health) == 1, health
    m = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.+)", health[0])
    assert m, f"HEALTHCHECK not understood: {health[0]}"
    options = dict(o[2:].split("=", 1) for o in m.group(1).split())
    cmd = m.group(2).strip()
    argv = json.loads(cmd) if cmd.startswith("[") else ["/bin/sh", "-c", cmd]
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return Healthcheck(options, argv)


class HealthcheckRequest(NamedTuple):
    url: str  # for the given environment
    timeout_s: float  # the command's own timeout


def healthcheck_request(argv: list[str], env: dict[str, str]) -> HealthcheckRequest:
    """The URL a ``python -c`` healthcheck requests in a container with environment `env`.

    Understands the form the Dockerfile uses: ``urlopen('http://...:%s/path' %
    os.environ.get('VAR', 'default'), timeout=N)``; anything else fails, so a changed
    HEALTHCHECK gets reviewed here.
    """
    assert argv[0] == "python" and argv[1] == "-c" and len(argv) == 3, argv
    tree = ast.parse(argv[2])
    urls = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and "://" in n.value
    ]
    lookups = [
        [a.value for a in n.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and ast.unparse(n.func) in ("os.environ.get", "os.getenv")
    ]
    opens = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "urllib.request.urlopen"
    ]
    assert len(urls) == 1 and len(opens) == 1, argv[2]
    timeouts = [
        k.value.value
        for k in opens[0].keywords
        if k.arg == "timeout"
        and isinstance(k.value, ast.Constant)
        and isinstance(k.value.value, int | float)
    ]
    assert len(timeouts) == 1, argv[2]
    url = urls[0]
    if "%s" in url:
        assert len(lookups) == 1 and len(lookups[0]) == 2, argv[2]
        var, default = lookups[0]
        url = url % env.get(var, default)
    else:
        assert not lookups, argv[2]
    return HealthcheckRequest(url, float(timeouts[0]))


def duration_s(text: str) -> float:
    """Docker's duration: ``15s``, ``1m30s``, ``500ms``."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def test_dockerfile_slim_non_root_healthcheck(no_edge_env: pytest.MonkeyPatch) -> None:
    ins = dockerfile_instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    final = final_stage()
    users = [rest for word, rest in final if word == "USER"]
    assert users, "final stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    cmd = json.loads(next(rest for word, rest in final if word == "CMD"))
    assert cmd == ["edge-gateway", "run"]
    assert any(w == "RUN" and "pip install" in r and " ." in r for w, r in ins)
    for word, rest in ins:
        if word == "COPY" and "--from" not in rest:
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} missing"
    # the image's EDGE_* defaults validate and listen where the healthcheck looks
    env = dockerfile_env()
    for k, v in env.items():
        if k.startswith("EDGE_"):
            no_edge_env.setenv(k, v)
    s = load_settings(None)
    assert s.http.host == "0.0.0.0"  # so 127.0.0.1 inside the container reaches it too
    hc = dockerfile_healthcheck()
    request = healthcheck_request(hc.argv, env)
    assert request.url == f"http://127.0.0.1:{s.http.port}/healthz"
    # without EDGE_HTTP__PORT, the command and the gateway fall back to the same port
    fallback = healthcheck_request(hc.argv, {}).url
    assert fallback == f"http://127.0.0.1:{HttpConfig().port}/healthz"
    assert str(s.http.port) in " ".join(rest for word, rest in final if word == "EXPOSE").split()
    # the request gives up before Docker kills the command; a start period, some retries
    assert 0 < request.timeout_s < duration_s(hc.options["timeout"])
    assert duration_s(hc.options["timeout"]) <= duration_s(hc.options["interval"])
    assert duration_s(hc.options["start-period"]) > 0 and int(hc.options["retries"]) >= 1
    assert s.spool.dir == "/var/lib/edge-gateway"
    assert "/var/lib/edge-gateway" in " ".join(rest for word, rest in final if word == "VOLUME")
    # the dockerignore keeps what the COPYs need
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and {"!gateway/", "!adapters/", "!simulator/"} <= set(ignore)


# ----------------------------------------------------------------------- Grafana (static)


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "edge-gateway.yml").read_text())
    return {d["uid"]: d for d in doc["datasources"]}


def test_grafana_provisioning() -> None:
    ds = provisioned_datasources()
    assert ds["edge-influxdb"]["type"] == "influxdb"
    assert ds["edge-prometheus"]["type"] == "prometheus"
    env_refs = set(re.findall(r"\$\{(\w+)\}", json.dumps(list(ds.values()))))
    g_env = service_env(compose()["services"]["grafana"])
    assert env_refs <= set(g_env), f"datasource env not set by compose: {env_refs - set(g_env)}"
    prov = yaml.safe_load((PROVISIONING / "dashboards" / "edge-gateway.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    assert mounts(compose()["services"]["grafana"])[path] == "./deploy/grafana/dashboards"


def test_dashboards_reference_provisioned_datasources_and_have_queries() -> None:
    ds = provisioned_datasources()
    dash = dashboards()
    assert set(OWN_DASHBOARDS) <= set(dash)
    assert len({d["uid"] for d in dash.values()}) == len(dash), "dashboard uids unique"
    for name in OWN_DASHBOARDS:
        d = dash[name]
        for p in _panels(d["panels"]):
            if p["type"] == "row":
                continue
            assert p.get("targets"), f"{name}: panel {p['title']} has no query"
            for t in p["targets"]:
                uid = (t.get("datasource") or p["datasource"])["uid"]
                assert uid in ds, f"{name}: {p['title']} uses unknown datasource {uid}"
        ids = [p["id"] for p in _panels(d["panels"])]
        assert len(ids) == len(set(ids))
    queries = [q for n in OWN_DASHBOARDS for q in dashboard_queries(dash[n])]
    kinds = {k for _, k, _ in queries}
    assert kinds == {"influxql", "promql"}


def test_plant_overview_covers_what_the_issue_asks() -> None:
    d = dashboards()["plant-overview.json"]
    titles = " | ".join(p["title"] for p in _panels(d["panels"])).lower()
    for words in ("equipment status", "active alerts", "sensor values", "z-score"):
        assert words in titles
    texts = [t for _, _, t in dashboard_queries(d)]
    assert any('"anomaly" = true' in t for t in texts)
    assert any('FROM "alerts"' in t for t in texts)
    ann = [a for a in d["annotations"]["list"] if a.get("query")]
    assert ann and 'FROM "alerts"' in ann[0]["query"] and ann[0]["textColumn"] == "message"


def test_dashboard_and_rule_metric_names_exist_in_the_gateway() -> None:
    """Static half: names against gateway.daemon.metrics; the live /metrics check is integration."""
    known = exported_metric_names(Metrics().registry.collect())
    used: dict[str, set[str]] = {}
    for name in OWN_DASHBOARDS:
        for where, kind, text in dashboard_queries(dashboards()[name]):
            if kind == "promql":
                used.setdefault(f"{name}: {where}", set()).update(metric_names_in(text))
    for rule in prometheus_rules():
        used.setdefault(f"rule {rule['alert']}", set()).update(metric_names_in(rule["expr"]))
    assert any(used.values())
    missing = {k: v - known for k, v in used.items() if v - known}
    assert not missing


def test_dashboard_queries_use_the_schema() -> None:
    """Every InfluxQL query names only measurements, tags and fields of SPEC §7."""
    tags = {"equipment", "sensor", "line", "unit", "source", "kind", "severity"}
    fields = {"value", "z", "anomaly", "state", "threshold", "id", "message"}
    for name in OWN_DASHBOARDS:
        for where, kind, text in dashboard_queries(dashboards()[name]):
            if kind != "influxql":
                continue
            assert set(re.findall(r'FROM "(\w+)"', text)) <= {"readings", "alerts"}, where
            idents = set(re.findall(r'"(\w+)"', text)) - {"readings", "alerts"}
            aliases = set(re.findall(r'AS "(\w+)"', text))
            assert idents - aliases <= tags | fields, f"{where}: {idents - aliases - tags - fields}"


# --------------------------------------------------------------------- Prometheus (static)


def prometheus_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_prometheus_rules_cover_the_issue() -> None:
    rules = {r["alert"]: r for r in prometheus_rules()}
    wanted = {
        "EdgeGatewayDown": "up",
        "EdgeGatewayBrokerDisconnected": "edge_mqtt_connected",
        "EdgeGatewayOpcuaDisconnected": "edge_opcua_connected",
        "EdgeGatewayRejectsRising": "edge_readings_rejected_total",
        "EdgeGatewaySpoolGrowing": "edge_spool_bytes",
        "EdgeGatewayWriteLatencyHigh": "edge_influx_write_seconds_bucket",
    }
    for alert, metric in wanted.items():
        assert metric in rules[alert]["expr"], alert
    for r in rules.values():
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]
    prom = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    for f in prom["rule_files"]:
        assert (PROMETHEUS / f).is_file()


# ---------------------------------------------------------------------- mosquitto (static)


def test_secure_mosquitto_conf() -> None:
    conf = mosquitto_conf(MOSQUITTO / "secure.conf")
    keys = dict(conf)
    assert keys["allow_anonymous"] == ["false"]
    assert keys["per_listener_settings"] == ["false"]
    assert "password_file" in keys and "acl_file" in keys
    listeners = [args for k, args in conf if k == "listener"]
    assert listeners == [["8883"]], "TLS listener only"
    for k in ("cafile", "certfile", "keyfile"):
        assert keys[k][0].startswith("/mosquitto/config/certs/")
    plain = dict(mosquitto_conf(MOSQUITTO / "mosquitto.conf"))
    assert plain["listener"] == ["1883"]
    users = {
        line.split(":", 1)[0]
        for line in (MOSQUITTO / "passwd.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert users == {"device", "gateway", "scada"}


# Each right of the ACL is exercised on a real broker running it:
# tests/integration/test_deploy_secure_broker.py::test_acl_rights.


def test_acl_topics_follow_the_gateway_defaults() -> None:
    a = AlertsConfig()
    acl = parse_acl(MOSQUITTO / "acl")
    sub = MqttConfig().subscriptions[0].topic
    probe = sub.replace("+", "x").replace("#", "x")
    assert allowed(acl, "gateway", "read", probe)
    assert allowed(acl, "device", "write", probe)
    assert allowed(acl, "gateway", "read", f"{a.topic_prefix}/ack")
    assert allowed(acl, "scada", "write", f"{a.topic_prefix}/ack")
    assert allowed(acl, "gateway", "write", f"{a.status_prefix}/eq")


# ------------------------------------------------------------------------------ systemd


def unit_keys(text: str) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        k, _, v = line.partition("=")
        out[section].setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_unit_hardening() -> None:
    u = unit_keys(UNIT.read_text())
    svc = u["Service"]

    def one(k: str) -> str:
        return svc[k][-1]

    assert one("User") not in ("root", "0") or one("DynamicUser") == "yes"
    assert one("StateDirectory") == "edge-gateway"
    assert "EDGE_SPOOL__DIR=%S/edge-gateway" in svc["Environment"]
    assert one("Restart") == "on-failure"
    for k in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert one(k) == "yes", k
    assert one("ProtectSystem") == "strict"
    assert one("CapabilityBoundingSet") == ""
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert " run --config /etc/edge-gateway/" in one("ExecStart")
    assert one("RestartPreventExitStatus") == "2"  # bad config: the CLI exits 2
    assert u["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in u["Unit"]["Wants"][0]


def _verify(unit_text: str, tmp_path: Path) -> str:
    exe = require_binary("systemd-analyze")  # CI: missing fails; else skip (static checks ran)
    venv_bin = str(Path(sys.executable).parent) + "/"
    path = tmp_path / "edge-gateway.service"
    path.write_text(unit_text.replace("/opt/edge-gateway/bin/", venv_bin))
    proc = subprocess.run(
        [exe, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60
    )
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0 else " (failed)")


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert _verify(UNIT.read_text(), tmp_path) == ""
    # and the tool does notice a broken unit
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    assert "ProtectSystm" in _verify(broken, tmp_path)


# ----------------------------------------------------------------------------- Node-RED


def flow() -> list[dict[str, Any]]:
    nodes = load_json(FLOW)
    assert isinstance(nodes, list)
    return nodes


def test_node_red_flow_topics_match_the_gateway() -> None:
    nodes = flow()
    by_id = {n["id"]: n for n in nodes}
    a = AlertsConfig()
    ins = {n["topic"] for n in nodes if n["type"] == "mqtt in"}
    outs = {n["topic"] for n in nodes if n["type"] == "mqtt out"}
    assert {f"{a.topic_prefix}/events/#", f"{a.topic_prefix}/active/#"} <= ins
    assert outs == {f"{a.topic_prefix}/ack"}
    # what the gateway publishes (gateway/pipeline.py) reaches those subscriptions
    published = {
        f"{a.topic_prefix}/events/device-001/temperature": f"{a.topic_prefix}/events/#",
        f"{a.topic_prefix}/active/device-001/temperature/zscore": f"{a.topic_prefix}/active/#",
        f"{a.status_prefix}/device-001": f"{a.status_prefix}/#",
    }
    for topic, flt in published.items():
        assert flt in ins and mqtt.topic_matches_sub(flt, topic)
    for n in nodes:
        if n["type"] in ("mqtt in", "mqtt out"):
            assert by_id[n["broker"]]["type"] == "mqtt-broker"
            assert n["qos"] == "1"
        for wire in n.get("wires", []):
            for target in wire:
                assert target in by_id, f"{n['id']} wired to missing {target}"
        if "z" in n:
            assert by_id[n["z"]]["type"] == "tab"
    kinds = {n["type"] for n in nodes}
    core = {"tab", "mqtt-broker", "mqtt in", "mqtt out", "function", "debug", "inject", "comment"}
    assert kinds <= core, f"non-core nodes need extra palettes: {kinds - core}"
    # compose's Node-RED gives the broker node its address
    broker = next(n for n in nodes if n["type"] == "mqtt-broker")
    assert (broker["broker"], broker["port"]) == ("${MQTT_HOST}", "${MQTT_PORT}")


_NODE_HARNESS = r"""
const fs = require('fs');
const nodes = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const fn = id => nodes.find(n => n.id === id).func;
const store = {};
const flow = {get: k => store[k], set: (k, v) => { store[k] = v; }};
const node = {status: () => {}};
const run = (id, msg) => new Function('msg', 'flow', 'node', fn(id))(msg, flow, node);
const alert = {id: 'a-1', equipment: 'e', sensor: 's', kind: 'zscore', severity: 'low',
               state: 'raised', message: 'm'};
const out = {};
out.event = run('fmt_event', {payload: alert});
out.active1 = run('track_active',
                  {topic: 'alerts/active/e/s/zscore', payload: JSON.stringify(alert)});
run('track_active', {topic: 'alerts/active/e/s2/zscore', payload: JSON.stringify(
    Object.assign({}, alert, {id: 'a-2', state: 'acknowledged'}))});
out.ack = run('build_ack', {payload: ''});
out.cleared = run('track_active', {topic: 'alerts/active/e/s/zscore', payload: ''});
out.ack_after = run('build_ack', {payload: ''});
console.log(JSON.stringify(out));
"""


def test_node_red_functions_run(tmp_path: Path) -> None:
    node = find_binary("node") or find_binary("nodejs") or require_binary("node")  # CI: fails
    script = tmp_path / "harness.js"
    script.write_text(_NODE_HARNESS)
    proc = subprocess.run(
        [node, str(script), str(FLOW)], capture_output=True, text=True, timeout=30, check=True
    )
    out = json.loads(proc.stdout)
    assert out["event"]["topic"] == "e/s"
    assert out["event"]["payload"].startswith("RAISED low zscore")
    assert [a["id"] for a in out["active1"]["payload"]] == ["a-1"]
    # one ack per unacknowledged active alert, in the shape the gateway parses
    assert out["ack"] == [[{"topic": "alerts/ack", "payload": {"id": "a-1", "by": "node-red"}}]]
    assert [a["id"] for a in out["cleared"]["payload"]] == ["a-2"]
    assert out["ack_after"] == [[]]


# ------------------------------------------------------------------- config consistency


def test_defaults_the_deploy_files_assume() -> None:
    """If a default changes, the deploy files (and this list) must follow."""
    assert HttpConfig().port == 9108
    assert MqttConfig().port == 1883
    assert InfluxConfig().database == "factory" and InfluxConfig().bucket == "factory"
    example = tomllib.loads((DEPLOY / "edge-gateway.example.toml").read_text())
    assert example["http"]["port"] == HttpConfig().port


TEMPLATE = DEPLOY / "systemd" / "edge-gateway@.service"


def test_systemd_template_is_the_unit_with_a_shard_argument() -> None:
    """One process per core in one line: edge-gateway@0-2 and edge-gateway@1-2. The
    template must not drift from the hardened unit: only these keys may differ."""
    base, tpl = unit_keys(UNIT.read_text()), unit_keys(TEMPLATE.read_text())
    differ = {"Description", "ExecStartPre", "ExecStart"}
    for section in base.keys() | tpl.keys():
        b = {k: v for k, v in base.get(section, {}).items() if k not in differ}
        t = {k: v for k, v in tpl.get(section, {}).items() if k not in differ}
        assert b == t, section
    for k in ("ExecStartPre", "ExecStart"):
        assert tpl["Service"][k] == [v + " --shard %I" for v in base["Service"][k]]
    assert "%I" in tpl["Unit"]["Description"][0]


def test_systemd_template_instance_verifies(tmp_path: Path) -> None:
    exe = require_binary("systemd-analyze")
    venv_bin = str(Path(sys.executable).parent) + "/"
    (tmp_path / "edge-gateway@.service").write_text(
        TEMPLATE.read_text().replace("/opt/edge-gateway/bin/", venv_bin)
    )
    proc = subprocess.run(
        [exe, "verify", "--man=no", str(tmp_path / "edge-gateway@0-2.service")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert (proc.stdout + proc.stderr).strip() == "" and proc.returncode == 0, proc
