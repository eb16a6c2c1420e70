"""Operating the gateway: /metrics and /readyz, broker outage and return, SIGTERM drain,
`check-config`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Gateways, MqttProbe, uid
from tests.servers import Mosquitto, VictoriaMetrics


def test_metrics_counters_move(
    spawn: Gateways, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    gw = spawn('[[rules]]\nsensor = "pressure"\nhigh = 10.0\n')
    assert gw.metric("edge_readings_received_total", source="mqtt") == 0
    assert gw.metric("edge_readings_written_total") == 0
    assert gw.metric("edge_alerts_total") == 0
    assert gw.metric("edge_mqtt_connected") == 1
    assert gw.metric("edge_influx_up") == 1
    eq = uid("met")
    with MqttProbe(mosquitto.port) as p:
        for i in range(10):
            p.publish(f"plant/line-m/{eq}/temperature", 20.0 + i)
        p.publish(f"plant/line-m/{eq}/pressure", [5.0, 6.0, 50.0])  # the last one breaches
        p.publish(f"plant/line-m/{eq}/pressure", b"junk")
    gw.wait_metric("edge_readings_written_total", lambda v: v >= 13)
    gw.wait_metric("edge_series_active", lambda v: v == 2, timeout=5)  # set by the 1 s tick
    assert gw.metric("edge_readings_received_total", source="mqtt") == 13
    assert gw.metric("edge_readings_written_total") == 13
    assert gw.metric("edge_messages_received_total", source="mqtt") == 12
    assert gw.metric("edge_readings_rejected_total", reason="malformed") == 1
    assert gw.metric("edge_alerts_total", kind="threshold_high", severity="high") == 1
    assert gw.metric("edge_alerts_active") == 1
    assert gw.metric("edge_pipeline_latency_seconds_count") >= 1
    assert gw.metric("edge_influx_write_seconds_count") >= 1
    assert gw.metric("edge_influx_write_errors_total") == 0
    with pytest.raises(KeyError):
        gw.metric("edge_no_such_metric")
    assert victoria.wait_for_count(victoria.selector("readings_value", equipment=eq), 13) == 13


def test_readyz_follows_the_broker_and_ingest_resumes_after_restart(
    spawn: Gateways, fresh_mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    broker = fresh_mosquitto
    gw = spawn("[mqtt]\nreconnect_max_s = 1.0\n", mqtt_port=broker.port)
    assert gw.readyz() == (
        200,
        {"ready": True, "checks": {"mqtt": True, "sink": True, "spool": True}},
    )
    eq = uid("rdy")
    with MqttProbe(broker.port) as p:
        p.publish(f"plant/line-r/{eq}/temperature", 1.0)
    victoria.wait_for_count(victoria.selector("readings_value", equipment=eq), 1)

    broker.stop()
    deadline = time.monotonic() + 10
    while gw.readyz()[0] != 503:
        assert time.monotonic() < deadline, "readyz still 200 with the broker gone"
        time.sleep(0.05)
    assert gw.readyz() == (
        503,
        {"ready": False, "checks": {"mqtt": False, "sink": True, "spool": True}},
    )
    assert gw.metric("edge_mqtt_connected") == 0
    status, _ = gw.readyz()
    assert status == 503 and gw.running

    # the broker comes back on the same port without its persisted sessions: only a
    # gateway that resubscribes on reconnect gets new readings
    shutil.rmtree(broker.persistence_dir)
    broker.persistence_dir.mkdir()
    broker.start()
    gw.wait_ready(timeout=10)
    assert gw.metric("edge_mqtt_connected") == 1
    with MqttProbe(broker.port, [f"gateway/{gw.client_id}/status"]) as p:
        [st] = p.wait_for(f"gateway/{gw.client_id}/status")
        assert st.payload == b"online" and st.retain
        p.publish(f"plant/line-r/{eq}/temperature", 2.0)
    match = victoria.selector("readings_value", equipment=eq)
    assert victoria.wait_for_count(match, 2) == 2
    assert sorted(v for _, v in victoria.series_values("readings_value", equipment=eq)) == [
        1.0,
        2.0,
    ]


def test_sigterm_drains_buffered_readings_and_exits_0(
    spawn: Gateways, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    # A flush interval far beyond the test, and one message (one spool record) far below
    # batch_size: only the shutdown drain can write these readings.
    gw = spawn("[influx]\nflush_interval_ms = 600000\n")
    eq = uid("drain")
    n = 25
    with MqttProbe(mosquitto.port, [f"gateway/{gw.client_id}/status"]) as p:
        p.wait_for(lambda m: m.payload == b"online")
        p.publish(f"plant/line-d/{eq}/temperature", [30.0 + i for i in range(n)])
        gw.wait_metric("edge_readings_received_total", lambda v: v == n, source="mqtt")
        # Positive markers instead of a quiet window, with the gateway's own 1 s tick as
        # the clock: it counts new series (edge_series_active). Each sentinel, a reading of
        # a new series, is published after the tick counted the one before, so the last
        # is counted two ticks (>= 2 s) after the readings were taken in: by then a sender
        # that did not wait for the flush interval (or used the 1 s default) has written.
        gw.wait_metric("edge_series_active", lambda v: v == 1)
        sentinels = [uid("drain-sentinel") for _ in range(2)]
        for count, sentinel in enumerate(sentinels, start=2):
            p.publish(f"plant/line-d/{sentinel}/temperature", 1.0)
            gw.wait_metric("edge_series_active", lambda v: v == count)  # noqa: B023 (called at once)
        assert gw.metric("edge_readings_written_total") == 0
        assert gw.metric("edge_influx_write_seconds_count") == 0
        assert gw.stop() == 0
        # a clean goodbye: retained `offline` on the gateway status topic
        p.wait_for(lambda m: m.payload == b"offline")
    match = victoria.selector("readings_value", equipment=eq)
    assert victoria.wait_for_count(match, n) == n
    values = sorted(v for _, v in victoria.series_values("readings_value", equipment=eq))
    assert values == [30.0 + i for i in range(n)]
    for sentinel in sentinels:  # drained too
        assert victoria.series_values("readings_value", equipment=sentinel)[0][1] == 1.0
    assert "gateway: stopped" in gw.log_text()


def test_influx_writes_wait_for_batch_size_or_flush_interval(
    spawn: Gateways, mosquitto: Mosquitto
) -> None:
    """README / deploy example: written when batch_size readings wait, or every
    flush_interval_ms, whichever comes first. No step depends on how fast the machine is.
    """
    # 1. batch_size: with a flush interval far beyond the test, 19 readings are held and
    # the 20th completes the batch. ONE write of all 20 proves the 19 waited for it.
    gw = spawn("[influx]\nflush_interval_ms = 600000\nbatch_size = 20\n")
    topic = f"plant/line-b/{uid('batching')}/temperature"
    with MqttProbe(mosquitto.port) as p:
        p.publish(topic, [float(i) for i in range(19)])
        gw.wait_metric("edge_readings_received_total", lambda v: v == 19, source="mqtt")
        gw.wait_metric("edge_spool_bytes", lambda v: v > 0)  # the sender has seen them
        assert gw.metric("edge_readings_written_total") == 0
        p.publish(topic, 19.0)
    gw.wait_metric("edge_readings_written_total", lambda v: v == 20, timeout=30)
    assert gw.metric("edge_influx_write_seconds_count") == 1

    # 2. flush_interval_ms: 5 readings, far below batch_size, are written by the timer,
    # and not before it: the sender's deadline starts when it sees them, after `t0`, so
    # `waited` can only come out longer on a slow machine (asyncio may fire a timer up
    # to its clock resolution early: 1.95, not 2.0). The 30 s only catches "never".
    gw = spawn("[influx]\nflush_interval_ms = 2000\nbatch_size = 1000\n")
    topic = f"plant/line-b/{uid('interval')}/temperature"
    with MqttProbe(mosquitto.port) as p:
        t0 = time.monotonic()
        p.publish(topic, [float(i) for i in range(5)])
        gw.wait_metric("edge_readings_written_total", lambda v: v == 5, timeout=30)
        waited = time.monotonic() - t0
    print(f"flush_interval_ms = 2000: written {waited:.2f} s after the publish")
    assert waited >= 1.95
    assert gw.metric("edge_influx_write_seconds_count") == 1


# ---------------------------------------------------------------- check-config


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "edge-gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_cli(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **env},
    )


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_one_line_naming_the_key(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[mqtt]\nport = 0\n")
    res = _run([command, "--config", str(cfg)], tmp_path)
    assert res.returncode != 0
    assert res.stderr.splitlines() == ["config: [mqtt] port must be 1-65535, got 0"]
    assert res.stdout == ""


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    cfg = tmp_path / "good.toml"
    cfg.write_text(
        '[mqtt]\nport = 1884\nusername = "edge"\npassword = "hunter2-secret"\n'
        '[influx]\ntoken = "tok-very-secret"\n'
    )
    res = _run(["check-config", "--config", str(cfg)], tmp_path, EDGE_MQTT__KEEPALIVE="42")
    assert res.returncode == 0, res.stderr
    assert "hunter2-secret" not in res.stdout and "tok-very-secret" not in res.stdout
    doc = json.loads(res.stdout)
    assert doc["mqtt"]["port"] == 1884 and doc["mqtt"]["username"] == "edge"
    assert doc["mqtt"]["keepalive"] == 42  # environment override
    assert doc["mqtt"]["password"] == "**********"
    assert doc["influx"]["token"] == "**********"
    assert doc["detection"]["window"] == 100  # defaults are filled in
    assert doc["mqtt"]["subscriptions"][0]["topic"] == "plant/+/+/+"
