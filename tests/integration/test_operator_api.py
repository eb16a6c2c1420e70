"""The operator API on a real gateway: alert commands over HTTP (the MQTT semantics),
bad input, the SQLite history across a restart, the refusal to serve an exposed
address without a token, and schemathesis against /api/openapi.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.harness import GatewayProcess, Gateways, MqttProbe, uid
from tests.servers import Mosquitto, http_request

TOKEN = "operator-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GW_TOML = f"""
[http]
api_token = "{TOKEN}"
[alerts]
clear_after = 1
[[rules]]
sensor = "temperature"
high = 85.0
"""


def call(
    gw: GatewayProcess,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    status, out = http_request(
        f"{gw.url}{path}",
        method="POST" if data is not None else "GET",
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return status, json.loads(out) if out else None


def raise_alert(p: MqttProbe, eq: str, value: float = 99.0) -> dict[str, Any]:
    p.publish(f"plant/line-op/{eq}/temperature", value)
    msgs = p.wait_for(
        lambda m: m.topic == f"alerts/events/{eq}/temperature" and b'"raised"' in m.payload
    )
    return dict(msgs[-1].json())


def test_alert_commands_over_http(spawn: Gateways, mosquitto: Mosquitto) -> None:
    gw = spawn(GW_TOML)
    eq = uid("op-cmd")
    with MqttProbe(mosquitto.port, [f"alerts/events/{eq}/#", f"alerts/shelved/{eq}/#"]) as p:
        ev = raise_alert(p, eq)
        aid = ev["id"]
        ack = f"/api/alerts/{aid}/ack"
        # 401: no token, a wrong one, another scheme; counted
        for h in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Token {TOKEN}"}):
            status, body = call(gw, ack, {"by": "op"}, h)
            assert status == 401 and "error" in body, h
        assert gw.metric("edge_http_unauthorized_total", endpoint="ack") == 3
        # 400: bad bodies, one-line reasons; 404: no such alert
        for raw, why in (
            (b"{nope", "not valid JSON"),
            (b"[1]", "JSON object"),
            (b'{"by": 5}', "by is required"),
            (b'{"by": "a\\nb"}', "control characters"),
        ):
            status, body = call(gw, ack, headers=AUTH, raw=raw)
            assert status == 400 and why in body["error"] and "\n" not in body["error"], raw
        status, body = call(gw, "/api/alerts/no-such-id/ack", {"by": "op"}, AUTH)
        assert status == 404 and body["reason"] == "unknown_id"
        shelve = f"/api/alerts/{aid}/shelve"
        for bad in (
            {"by": "op", "reason": "x"},
            {"by": "op", "reason": "x", "duration_s": "1h"},
            {"by": "op", "duration_s": 60},
        ):
            status, body = call(gw, shelve, bad, AUTH)
            assert status == 400, bad
        rejected = gw.metric(
            "edge_alarm_commands_rejected_total", reason="bad_duration", absent_ok=True
        )
        status, body = call(gw, shelve, {"by": "op", "reason": "x", "duration_s": -5}, AUTH)
        assert status == 400 and body["reason"] == "bad_duration"  # the annunciator's check
        assert gw.metric("edge_alarm_commands_rejected_total", reason="bad_duration") == (
            rejected + 1
        )  # counted as MQTT's
        # ack: the acknowledged event goes out on MQTT
        status, body = call(gw, ack, {"by": "op-http"}, AUTH)
        assert (status, body) == (200, {"applied": "ack", "id": aid})
        acked = p.wait_for(lambda m: b'"acknowledged"' in m.payload)[-1].json()
        assert acked["id"] == aid and acked["acknowledged_by"] == "op-http"
        # shelve, then unshelve: the retained shelved/ topic, the flag in /api/alerts
        status, body = call(
            gw, shelve, {"by": "op", "reason": "sensor swap", "duration_s": 600}, AUTH
        )
        assert status == 200
        # (other tests' shelves stay retained on the session broker: only this one's)
        mine = f"alerts/shelved/{eq}/"
        shelf = p.wait_for(lambda m: m.topic.startswith(mine) and bool(m.payload))
        assert json.loads(shelf[-1].payload)["reason"] == "sensor swap"
        status, listed = call(gw, f"/api/alerts?equipment={eq}")
        assert status == 200 and listed[0]["shelved"] is True
        status, body = call(gw, f"/api/alerts/{aid}/unshelve", {"by": "op"}, AUTH)
        assert status == 200
        status, body = call(gw, f"/api/alerts/{aid}/unshelve", {"by": "op"}, AUTH)
        assert status == 404  # not shelved any more
        status, listed = call(gw, f"/api/alerts?equipment={eq}")
        assert listed[0]["shelved"] is False and listed[0]["state"] == "acknowledged"


def test_bad_parameters_are_400(spawn: Gateways, mosquitto: Mosquitto) -> None:
    gw = spawn(GW_TOML)
    eq = uid("op-bad")
    with MqttProbe(mosquitto.port, [f"alerts/events/{eq}/#"]) as p:
        raise_alert(p, eq)
    for path in (
        "/api/alerts/history?from=yesterday",
        "/api/alerts/history?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/api/alerts/history?limit=0",
        "/api/alerts/history?limit=x",
        "/api/alerts/history?limit=10001",
        f"/api/alerts/history?equipment={'x' * 300}",
        f"/api/series/{eq}/temperature?since=-1",
        f"/api/series/{eq}/temperature?since=abc",
        "/api/stream?series=no-slash",
        "/api/alerts?state=open",
        "/api/stats?machine=m",
    ):
        status, body = call(gw, path)
        assert status == 400, path
        assert isinstance(body["error"], str) and "\n" not in body["error"], path
    status, body = call(gw, "/api/series/nope/nothing")
    assert status == 404
    status, body = call(gw, "/no/such/page")
    assert status == 404 and "error" in body
    status, series = call(gw, f"/api/series/{eq}/temperature")
    assert status == 200 and series["points"][-1][1:] == [99.0, True]
    assert series["size"] == 60 and series["count"] == 1
    assert gw.running


def test_history_survives_a_restart(spawn: Gateways, mosquitto: Mosquitto) -> None:
    gw = spawn(GW_TOML)
    a, b = uid("op-hist"), uid("op-hist")
    t0 = time.time()
    with MqttProbe(mosquitto.port, ["alerts/events/#"]) as p:
        ev = raise_alert(p, a)
        call(gw, f"/api/alerts/{ev['id']}/ack", {"by": "op"}, AUTH)
        p.wait_for(lambda m: b'"acknowledged"' in m.payload and a.encode() in m.payload)
        p.publish(f"plant/line-op/{a}/temperature", 20.0)  # acknowledged + normal: cleared
        p.wait_for(lambda m: b'"cleared"' in m.payload and a.encode() in m.payload)
        raise_alert(p, b)
    gw.wait_metric("edge_history_rows_written_total", lambda v: v >= 4)
    assert gw.stop() == 0
    gw.start()
    status, rows = call(gw, f"/api/alerts/history?equipment={a}")
    assert status == 200
    assert [r["state"] for r in rows] == ["cleared", "acknowledged", "raised"]  # newest first
    assert {r["id"] for r in rows} == {ev["id"]} and rows[1]["acknowledged_by"] == "op"
    since = urllib.parse.quote(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 - 1)))
    status, rows = call(gw, f"/api/alerts/history?from={since}&kind=threshold_high&limit=1000")
    assert {a, b} <= {r["equipment"] for r in rows}
    status, rows = call(gw, f"/api/alerts/history?equipment={b}&limit=1")
    assert [r["state"] for r in rows] == ["raised"]
    status, rows = call(gw, f"/api/alerts/history?to={t0 - 3600:.0f}&equipment={a}")
    assert rows == []
    assert gw.metric("edge_history_rows") >= 4


def test_an_exposed_address_without_a_token_refuses_to_start(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    gw = GatewayProcess(
        mosquitto.port,
        "http://127.0.0.1:9",
        tmp_path,
        extra_toml='[influx]\nenabled = false\n[http]\nhost = "0.0.0.0"\n',
        start=False,
    )
    gw.start(wait=False)
    assert gw.proc is not None
    assert gw.proc.wait(timeout=20) == 1
    errors = [line for line in gw.log_text().splitlines() if "refusing" in line]
    assert len(errors) == 1 and "api_token" in errors[0], gw.log_tail()
    assert "Traceback" not in gw.log_text()


def test_schemathesis_finds_no_server_error_and_no_schema_break(
    spawn: Gateways, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        if os.environ.get("CI"):
            pytest.fail("CI: schemathesis missing (pip install -e '.[dev]')", pytrace=False)
        pytest.skip("schemathesis not installed")
    gw = spawn(GW_TOML)
    eq = uid("op-st")
    with MqttProbe(mosquitto.port, [f"alerts/events/{eq}/#"]) as p:
        for v in (20.0, 21.0, 22.0):
            p.publish(f"plant/line-op/{eq}/temperature", v)
        raise_alert(p, eq)
    argv = [
        cli,
        "run",
        f"{gw.url}/api/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--mode",
        "all",  # valid and invalid input
        "--phases",
        "coverage,fuzzing",
        "--max-examples",
        "25",
        "--seed",
        "7",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--exclude-path",
        "/api/stream",  # an endless response (tested in tests/unit/test_operator_http.py)
        "--request-timeout",
        "10",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "schemathesis"),
    ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-2000:]
    assert "passed" in r.stdout
    assert gw.running and "Traceback" not in gw.log_text()
