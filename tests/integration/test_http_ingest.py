"""HTTP ingest end to end (issue 19): real clients against a real `edge-gateway run`.

`influxdb-client`'s write API and `curl` write line protocol to ``/api/v2/write`` and
``/write``; JSON and events go to ``/api/ingest`` and ``/api/events``. Readings land in
the real stores exactly, a spike written over HTTP raises the usual alert on MQTT, a
SIGKILL right after a 204 loses nothing, and 401 / 400 / 413 / 429 answer as documented.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.harness import GatewayProcess, Gateways, MqttProbe, uid
from tests.servers import Mosquitto, VictoriaMetrics
from tests.stores import Store, VictoriaStore, by_sensor, wait_count

TOKEN = f"tok-{uuid.uuid4().hex}"


def ingest_toml(extra: str = "") -> str:
    return f'[http_ingest]\nenabled = true\ntoken = "{TOKEN}"\n{extra}\n'


def post(
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
    timeout: float = 30.0,
) -> tuple[int, bytes, dict[str, str]]:
    """POST; (status, body, headers), also for 4xx / 5xx answers."""
    h = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
    if token is not None:
        h.setdefault("Authorization", f"Token {token}")
    req = urllib.request.Request(url, data=body, method="POST", headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return int(e.code), e.read(), dict(e.headers)


def lines_for(eq: str, n: int, base_ms: int, sensor: str = "temp") -> tuple[bytes, list[float]]:
    values = [20.0 + (i % 50) / 8 for i in range(n)]
    body = "\n".join(
        f"pump,equipment={eq},line=L1 {sensor}={v} {base_ms + i}" for i, v in enumerate(values)
    )
    return body.encode(), values


# ------------------------------------------------------------ real clients


def test_influxdb_client_writes_land_exactly(spawn_store: Gateways, store: Store) -> None:
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    gw = spawn_store(ingest_toml())
    eq = uid("icl")
    n = 1500
    base_ms = (int(time.time()) - 600) * 1000
    expected: dict[str, list[tuple[int, float]]] = {"motor.current": [], "motor.rpm": []}
    points = []
    for i in range(n):
        ts = base_ms + i * 10
        cur, rpm = round(5 + (i % 13) / 10, 3), 1400 + i % 7
        points.append(
            Point("motor")
            .tag("equipment", eq)
            .tag("line", "L7")
            .tag("zone", "z1")
            .field("current", cur)
            .field("rpm", rpm)
            .field("state", "ok")  # a string field: skipped
            .time(ts, WritePrecision.MS)
        )
        expected["motor.current"].append((ts, cur))
        expected["motor.rpm"].append((ts, float(rpm)))
    with InfluxDBClient(url=gw.url, token=TOKEN, org="plant", enable_gzip=True) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        for start in range(0, n, 500):  # 3 requests of 500 points (1,000 readings) each
            write.write(bucket="factory", record=points[start : start + 500])
    total = 2 * n
    wait_count(store, total, 20.0, equipment=eq)
    gw.wait_metric("edge_readings_written_total", lambda v: v >= total)
    assert store.count(equipment=eq) == total
    assert by_sensor(store.points(equipment=eq)) == expected
    tags = {p.tags.get("zone") for p in store.points(equipment=eq)}
    assert tags == {"z1"}  # other tags kept
    assert {p.tags.get("source") for p in store.points(equipment=eq)} == {"http"}
    assert gw.metric("edge_readings_received_total", source="http") == total
    assert gw.metric("edge_http_requests_total", endpoint="v2_write", code="204") == 3
    assert gw.metric("edge_readings_rejected_total") == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_line_protocol_to_v1_write(spawn: Gateways, victoria: VictoriaMetrics) -> None:
    gw = spawn(ingest_toml())
    store = VictoriaStore(victoria)
    eq = uid("curl")
    base_s = int(time.time()) - 300
    body = "# from curl\n" + "\n".join(
        f"readings,equipment={eq},sensor=pressure,unit=bar value={1 + i / 4} {base_s + i}"
        for i in range(20)
    )
    url = f"{gw.url}/write?db=factory&precision=s&u=telegraf&p={TOKEN}"
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-XPOST",
            url,
            "--data-binary",
            "@-",
        ],
        input=body.encode(),
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert out.stdout == b"204"
    wait_count(store, 20, 15.0, equipment=eq)
    got = by_sensor(store.points(equipment=eq))
    assert got == {"pressure": [((base_s + i) * 1000, 1 + i / 4) for i in range(20)]}
    assert {p.tags.get("unit") for p in store.points(equipment=eq)} == {"bar"}


def test_spike_over_http_raises_the_usual_alert_on_mqtt(spawn: Gateways, probe: MqttProbe) -> None:
    gw = spawn(ingest_toml())
    eq = uid("spike")
    probe.subscribe(f"alerts/events/{eq}/#")
    rnd = random.Random(7)
    base_ms = (int(time.time()) - 120) * 1000
    normal = [
        f"vib,equipment={eq} x={50 + rnd.gauss(0, 1):.3f} {base_ms + i * 100}" for i in range(60)
    ]
    status, body, _ = post(f"{gw.url}/api/v2/write?precision=ms", "\n".join(normal).encode())
    assert status == 204, body
    assert probe.messages() == []
    spike = f"vib,equipment={eq} x=500 {base_ms + 60 * 100}"
    assert post(f"{gw.url}/api/v2/write?precision=ms", spike.encode())[0] == 204
    msgs = probe.wait_for(f"alerts/events/{eq}/vib.x", timeout=10)
    alert = msgs[0].json()
    assert (alert["kind"], alert["severity"], alert["state"]) == ("zscore", "critical", "raised")
    assert alert["value"] == 500.0


def test_sigkill_right_after_204_loses_nothing(
    mosquitto: Mosquitto, fresh_victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    pool = Gateways(mosquitto.port, fresh_victoria.url, tmp_path)
    try:
        gw = pool(ingest_toml())
        store = VictoriaStore(fresh_victoria)
        fresh_victoria.stop()  # the readings can only be in the spool
        eq = uid("kill")
        base_ms = (int(time.time()) - 300) * 1000
        n = 0
        for k in range(3):
            body, _ = lines_for(eq, 400, base_ms + k * 400)
            status, answer, _ = post(f"{gw.url}/api/v2/write?precision=ms", body)
            assert status == 204, answer
            n += 400
        gw.kill()  # SIGKILL at once after the last 204
        fresh_victoria.start()
        gw.start()
        wait_count(store, n, 20.0, equipment=eq)
        assert store.count(equipment=eq) == n
        got = by_sensor(store.points(equipment=eq))["pump.temp"]
        assert [ts for ts, _ in got] == [base_ms + i for i in range(n)]
    finally:
        problems = pool.close()
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------- JSON and events


def test_json_fields_and_events_endpoints(spawn: Gateways, victoria: VictoriaMetrics) -> None:
    gw = spawn(ingest_toml())
    store = VictoriaStore(victoria)
    eq = uid("json")
    base_ms = (int(time.time()) - 200) * 1000
    items = [
        {"equipment": eq, "sensor": "ph", "line": "F1", "value": 7.0 + i / 100, "ts": base_ms + i}
        for i in range(10)
    ]
    headers = {"Content-Type": "application/json"}
    status, body, _ = post(f"{gw.url}/api/ingest", json.dumps(items).encode(), headers)
    assert status == 204, body
    fields = [{"equipment": eq, "ts": base_ms + i, "temp": 37.0, "rpm": 400 + i} for i in range(5)]
    url = f"{gw.url}/api/ingest?format=fields"
    status, body, _ = post(url, json.dumps(fields).encode(), {**headers, "X-API-Key": TOKEN}, None)
    assert status == 204, body
    wait_count(store, 20, 15.0, equipment=eq)
    got = by_sensor(store.points(equipment=eq))
    assert got["ph"] == [(base_ms + i, 7.0 + i / 100) for i in range(10)]
    assert got["rpm"] == [(base_ms + i, 400.0 + i) for i in range(5)]
    # a batch with one bad item stores the others and says which
    bad = [{**items[0], "ts": base_ms + 100}, {"equipment": eq, "sensor": "ph", "value": "high"}]
    status, body, _ = post(f"{gw.url}/api/ingest", json.dumps(bad).encode(), headers)
    assert status == 400
    answer = json.loads(body)
    assert answer["accepted"] == 1 and answer["rejected"] == 1
    assert answer["rejects"] == [
        {"reason": "invalid_value", "detail": "item 1: value is a string, not a number"}
    ]
    # events, seed 004's /events/batch
    factory = uid("F")
    t = int(time.time() * 1000) - 60_000
    events = [
        {
            "event_id": f"{factory}-{i}",
            "event_time": t + i,
            "machine_id": "M-1",
            "line_id": "L-A",
            "factory_id": factory,
            "duration_ms": 1000,
            "defect_count": i % 2,
        }
        for i in range(6)
    ]
    events.append({"event_id": f"{factory}-x", "machine_id": "M-1"})  # missing fields
    status, body, _ = post(f"{gw.url}/api/events", json.dumps(events).encode(), headers)
    assert status == 400
    answer = json.loads(body)
    assert [r["reason"] for r in answer["rejects"]] == ["missing_field"]
    assert answer["rejects"][0]["detail"].startswith("item 6: ")
    assert gw.metric("edge_events_total", result="stored") == 6
    status, body, _ = post(f"{gw.url}/api/events", json.dumps(events[:6]).encode(), headers)
    assert status == 204  # a resend: duplicates, nothing new
    assert gw.metric("edge_events_total", result="duplicate") == 6
    q = f"{gw.url}/api/stats/top-defect-lines?factory={factory}&from={t - 1}&to={t + 100}"
    with urllib.request.urlopen(q, timeout=10) as resp:
        top = json.loads(resp.read())
    assert top[0]["line_id"] == "L-A" and top[0]["total_defects"] == 3


# ------------------------------------------------------------------- errors


def test_401_400_413_and_the_token_is_never_logged(
    spawn: Gateways, victoria: VictoriaMetrics
) -> None:
    gw = spawn(ingest_toml("max_body_bytes = 4096"))
    store = VictoriaStore(victoria)
    wrong = f"wrong-{uuid.uuid4().hex}"
    eq = uid("err")
    base_ms = (int(time.time()) - 100) * 1000
    v2 = f"{gw.url}/api/v2/write?org=o&bucket=b&precision=ms"
    good = f"m,equipment={eq} f=1 {base_ms}".encode()
    for url in (v2, f"{gw.url}/write?db=x", f"{gw.url}/api/ingest", f"{gw.url}/api/events"):
        assert post(url, good, token=None)[0] == 401
        status, body, _ = post(url, good, token=wrong)
        assert status == 401 and wrong.encode() not in body
    assert post(f"{gw.url}/write?db=x&u=x&p={wrong}", good, token=None)[0] == 401
    assert gw.metric("edge_http_requests_total", endpoint="v2_write", code="401") == 2
    # 400: the good lines are stored, the bad ones listed by line number
    body = "\n".join(
        [
            f"m,equipment={eq} f=1 {base_ms}",
            f"m,equipment={eq} f=oops {base_ms + 1}",
            f"m,equipment={eq} f=2 {base_ms + 2}",
            f"m,nothing=here f=3 {base_ms + 3}",
            f"m,equipment={eq} f=4 {base_ms + 4}",
        ]
    ).encode()
    status, answer, _ = post(v2, body)
    assert status == 400
    doc = json.loads(answer)
    assert doc["code"] == "invalid" and doc["accepted"] == 3 and doc["rejected"] == 2
    assert [(r["reason"], r["detail"][:7]) for r in doc["rejects"]] == [
        ("malformed", "line 2:"),
        ("missing_field", "line 4:"),
    ]
    assert "partial write" in doc["message"]
    wait_count(store, 3, 15.0, equipment=eq)
    # the same body again: the stored lines are duplicates (fine), the bad ones still bad
    status, answer, _ = post(v2, body)
    assert status == 400 and json.loads(answer)["duplicates"] == 3
    assert post(v2, body.split(b"\n")[0])[0] == 204  # only duplicates: 204
    assert post(f"{gw.url}/api/v2/write?precision=m", good)[0] == 400  # not a v2 precision
    # 413: over max_body_bytes, plain or as a gzip body that inflates past it
    big = b"\n".join([f"m,equipment={eq} f={i}".encode() for i in range(400)])
    assert len(big) > 4096
    assert post(v2, big)[0] == 413
    small_gz = gzip.compress(big)
    assert len(small_gz) < 4096
    assert post(v2, small_gz, {"Content-Encoding": "gzip"})[0] == 413
    # a gzip body within the limit is accepted
    gz = gzip.compress(f"m,equipment={eq} g=5 {base_ms}".encode())
    assert post(v2, gz, {"Content-Encoding": "gzip"})[0] == 204
    wait_count(store, 4, 15.0, equipment=eq)
    log = gw.log_text()
    assert TOKEN not in log and wrong not in log


def test_429_when_full_is_backpressure_not_loss(spawn: Gateways, victoria: VictoriaMetrics) -> None:
    gw = spawn(ingest_toml("max_inflight_bytes = 1024\nretry_after_s = 1"))
    store = VictoriaStore(victoria)
    eq = uid("full")
    base_ms = (int(time.time()) - 300) * 1000
    n_req, per = 24, 12
    bodies = [lines_for(eq, per, base_ms + k * per, "s")[0] for k in range(n_req)]
    assert all(600 < len(b) <= 1024 for b in bodies)
    codes: list[int] = []
    retry_after: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n_req)

    def client(body: bytes) -> None:
        barrier.wait()
        while True:
            status, _, headers = post(f"{gw.url}/api/v2/write?precision=ms", body)
            with lock:
                codes.append(status)
                if status == 429:
                    retry_after.append(headers.get("Retry-After", ""))
            if status != 429:
                return
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert codes.count(204) == n_req
    assert set(codes) == {204, 429}, codes
    assert set(retry_after) == {"1"}
    wait_count(store, n_req * per, 15.0, equipment=eq)
    assert store.count(equipment=eq) == n_req * per
    assert gw.metric("edge_http_requests_total", endpoint="v2_write", code="429") == codes.count(
        429
    )


def test_disabled_by_default(spawn: Gateways) -> None:
    gw: GatewayProcess = spawn()
    status, _, _ = post(f"{gw.url}/api/v2/write", b"m,equipment=e f=1")
    assert status in (404, 405)
