"""The operator API in-process: series rings, the SQLite alert history, auth off
loopback, the event stream. A real `Gateway` (not run: no broker) behind aiohttp's test
server on loopback; alerts come from `Processor.process` as in the pipeline."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from gateway.app import build
from gateway.config import (
    AlertsConfig,
    HistoryConfig,
    HttpConfig,
    InfluxConfig,
    Rule,
    Settings,
    SpoolConfig,
)
from gateway.core.alerts import Alert
from gateway.core.model import RawMessage, Reading, Score
from gateway.core.rings import SeriesRings
from gateway.daemon.history import AlertHistory
from gateway.daemon.pipeline import Gateway
from gateway.http.auth import exposure_problem, is_loopback
from gateway.http.server import GATEWAY_KEY, build_app
from gateway.http.stream import RESYNC_OVER

TOKEN = "t0ken-for-tests"


def settings(tmp_path: Path, **http: Any) -> Settings:
    return Settings(
        influx=InfluxConfig(enabled=False),
        spool=SpoolConfig(dir=str(tmp_path / "spool")),
        http=HttpConfig(**{"host": "127.0.0.1", **http}),
        rules=[Rule(sensor="temperature", high=85.0)],
        alerts=AlertsConfig(clear_after=1, ack_required=[]),
    )


def msg(eq: str, sensor: str, value: float, ts_ms: int) -> RawMessage:
    body = orjson.dumps({"value": value, "ts": ts_ms})
    return RawMessage(f"plant/line-1/{eq}/{sensor}", body, time.monotonic(), time.time_ns())


@pytest.fixture
async def client(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[TestClient]:
    http = getattr(request, "param", {"api_token": TOKEN})
    gw = build(settings(tmp_path, **http))
    assert gw.history is not None
    await gw.history.start()
    gw.processor.watchers.append(gw.history.record)
    async with TestClient(TestServer(build_app(gw), host="127.0.0.1")) as c:
        yield c
    await gw.history.close()


def gateway(c: TestClient) -> Gateway:
    return cast(Gateway, c.app[GATEWAY_KEY])


# ------------------------------------------------------------------- rings


def test_rings_keep_the_last_points_and_count_every_one() -> None:
    rings, latest = SeriesRings(4), {}  # type: ignore[var-annotated]
    sc = Score(None, ())
    bad = Score(5.0, ("zscore",))  # type: ignore[arg-type]
    for i in range(10):
        rings.record([(Reading("e", "s", float(i), i), bad if i == 8 else sc)], latest)
    ring = rings.get("e", "s")
    assert ring is not None and ring.count == 10
    assert ring.points() == [(6, 6.0, False), (7, 7.0, False), (8, 8.0, True), (9, 9.0, False)]
    assert ring.since(8) == [(8, 8.0, True), (9, 9.0, False)]
    assert ring.since(10) == []
    assert latest[("e", "s")][0].value == 9.0
    off, latest2 = SeriesRings(0), {}  # type: ignore[var-annotated]
    off.record([(Reading("e", "s", 1.0, 1), sc)], latest2)
    assert off.get("e", "s") is None and ("e", "s") in latest2


def test_rings_of_forgotten_series_go_too() -> None:
    rings, latest = SeriesRings(2), {}  # type: ignore[var-annotated]
    sc = Score(None, ())
    rings.record([(Reading(f"e{i}", "s", 1.0, 1), sc) for i in range(100)], latest)
    latest.clear()  # expiry forgot them all
    rings.record([(Reading("new", "s", 1.0, 1), sc)], latest)
    assert list(rings.rings) == [("new", "s")]


# ----------------------------------------------------------------- history


def alert(i: int, at: float, state: str = "raised", eq: str = "eq-1") -> Alert:
    return Alert(
        id=f"id-{i}",
        equipment=eq,
        sensor="temperature",
        line="line-1",
        kind="threshold_high",
        severity="high",
        state=state,
        value=90.0 + i,
        z=None,
        mean=None,
        std=None,
        threshold=85.0,
        ts=int(at * 1e9),
        raised_at=at,
        updated_at=at,
        message=f"alert {i}",
    )


async def test_history_writes_queries_and_prunes(tmp_path: Path) -> None:
    cfg = HistoryConfig(max_rows=100, retention_days=1, flush_interval_s=0.05)
    h = AlertHistory(cfg, str(tmp_path), CollectorRegistry())
    assert await h.start()
    now = time.time()
    old = [alert(i, now - 2 * 86400 + i) for i in range(50)]  # past retention
    h.record(old + [alert(100 + i, now - 100 + i, eq=f"eq-{i % 2}") for i in range(150)])
    assert await h.flush() == 200
    assert h.rows == 200
    assert len(await h.query(limit=1000)) == 200
    assert await h.prune() == 100  # 50 too old, then the oldest 50 over max_rows
    rows = await h.query(limit=1000)
    assert len(rows) == 100 and rows[0]["id"] == "id-249"  # newest first
    assert {r["equipment"] for r in await h.query(equipment="eq-0", limit=1000)} == {"eq-0"}
    assert await h.query(kind="zscore") == []
    window = await h.query(start=now - 10, end=now - 5, limit=1000)
    assert [r["id"] for r in window] == [f"id-{i}" for i in range(194, 189, -1)]
    assert rows[0]["updated_at"].endswith("Z") and rows[0]["value"] == 339.0
    await h.close()
    # a restart reads what is there
    h2 = AlertHistory(cfg, str(tmp_path), CollectorRegistry())
    assert await h2.start() and h2.rows == 100
    await h2.close()


async def test_history_moves_a_broken_file_aside(tmp_path: Path) -> None:
    (tmp_path / "history.sqlite3").write_bytes(b"this is not a database" * 100)
    h = AlertHistory(HistoryConfig(), str(tmp_path), CollectorRegistry())
    assert await h.start()
    h.record([alert(1, time.time())])
    await h.flush()
    assert [r["id"] for r in await h.query()] == ["id-1"]
    await h.close()
    assert list(tmp_path.glob("history.sqlite3.corrupt-*"))
    with sqlite3.connect(tmp_path / "history.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM alert_history").fetchone()[0] == 1


async def test_history_that_cannot_open_is_off(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    h = AlertHistory(HistoryConfig(), str(tmp_path / "file"), CollectorRegistry())
    assert not await h.start()
    h.record([alert(1, time.time())])  # ignored, no error
    assert await h.query() == []
    await h.close()


# --------------------------------------------------------------------- auth


def test_loopback_and_exposure() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.10", "gateway.local"))
    s = Settings(http=HttpConfig(host="0.0.0.0"))
    problem = exposure_problem(s.http)
    assert problem is not None and "api_token" in problem and "\n" not in problem
    assert exposure_problem(HttpConfig(host="0.0.0.0", api_token=SecretStr("x"))) is None
    assert exposure_problem(HttpConfig(host="127.0.0.1")) is None


@pytest.mark.parametrize("client", [{"host": "0.0.0.0", "api_token": TOKEN}], indirect=True)
async def test_reads_need_the_token_off_loopback(client: TestClient) -> None:
    for path in ("/api/equipment", "/api/alerts", "/api/alerts/history", "/api/stream"):
        r = await client.get(path)
        assert r.status == 401, path
        assert "error" in await r.json()
        r = await client.get(path, headers={"Authorization": "Bearer wrong"})
        assert r.status == 401, path
    r = await client.get("/api/equipment", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200
    r = await client.get(f"/api/alerts?token={TOKEN}")
    assert r.status == 200
    for path in ("/", "/static/app.js", "/static/style.css", "/metrics", "/healthz"):
        r = await client.get(path)
        assert r.status == 200, path
    r = await client.get("/api/openapi.json")
    assert r.status == 200 and (await r.json())["openapi"].startswith("3.")
    metrics = await (await client.get("/metrics")).text()
    assert 'edge_http_unauthorized_total{endpoint="/api/equipment"} 2.0' in metrics


@pytest.mark.parametrize("client", [{}], indirect=True)
async def test_commands_are_forbidden_without_a_token_set(client: TestClient) -> None:
    r = await client.post("/api/alerts/x/ack", json={})
    assert r.status == 403 and "api_token" in (await r.json())["error"]
    assert (await client.get("/api/equipment")).status == 200  # reads open on loopback


# ------------------------------------------------------------------- stream


async def read_events(resp: Any, want: int, timeout: float = 3.0) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    event = ""
    async with asyncio.timeout(timeout):
        while len(out) < want:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, orjson.loads(line[6:])))
    return out


async def test_stream_sends_readings_alerts_and_status(client: TestClient) -> None:
    gw = gateway(client)
    p = gw.processor
    t0 = int(time.time() * 1000) - 10_000
    p.process([msg("eq-a", "temperature", 20.0, t0)])
    resp = await client.get("/api/stream?series=eq-a/temperature")
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    (hello,) = await read_events(resp, 1)
    assert hello == ("hello", {"series": [["eq-a", "temperature"]]})
    t = time.monotonic()
    p.process([msg("eq-a", "temperature", 21.0, t0 + 1000)])
    p.process([msg("eq-a", "temperature", 99.0, t0 + 2000)])
    events = await read_events(resp, 2)
    latency = time.monotonic() - t
    kinds = {e for e, _ in events}
    assert "alert" in kinds, events
    got = {e: d for e, d in events}
    assert got["alert"]["state"] == "raised" and got["alert"]["equipment"] == "eq-a"
    more = events + (await read_events(resp, 1) if "reading" not in kinds else [])
    readings = [d for e, d in more if e == "reading"]
    assert readings and readings[0]["points"][-1][1] in (21.0, 99.0)
    assert latency < 1.0
    resp.close()


async def test_stream_storm_is_a_resync(client: TestClient) -> None:
    gw = gateway(client)
    resp = await client.get("/api/stream")
    await read_events(resp, 1)
    now = time.time()
    storm = [alert(i, now, eq=f"storm-{i}") for i in range(RESYNC_OVER + 1)]
    gw.processor.emit(storm)
    ((event, _),) = await read_events(resp, 1)
    assert event == "resync"
    resp.close()


async def test_stream_parameters_are_checked(client: TestClient) -> None:
    for q in (
        "series=nosensor",
        "series=a/b/c",
        "series=" + ",".join(f"e/s{i}" for i in range(65)),
    ):
        r = await client.get(f"/api/stream?{q}")
        assert r.status == 400 and "error" in await r.json(), q
