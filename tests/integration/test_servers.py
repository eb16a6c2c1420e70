"""The real-server fixtures work: MQTT round trips, TSDB writes read back exactly, restarts."""

from __future__ import annotations

import os
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import require_binary
from tests.servers import (
    InfluxDB1,
    Mosquitto,
    NatsCluster,
    VictoriaMetrics,
    _Server,
    free_port,
    http_request,
    port_open,
)


class _Collector:
    """paho client that records (topic, payload, retain) of every message it gets."""

    def __init__(self, server: _Server, client_id: str = "", clean: bool = True) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean
        )
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        self.client.connect(server.host, server.port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(5), "no CONNACK"

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.client.subscribe(topic, qos)
        assert self.subscribed.wait(5), "no SUBACK"

    def wait_for(self, n: int, timeout: float = 5.0) -> list[tuple[str, bytes, bool]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(server: _Server, topic: str, payloads: list[bytes], retain: bool = False) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(server.host, server.port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_mosquitto_retained_message_reaches_late_subscriber(mosquitto: Mosquitto) -> None:
    assert mosquitto.host == "127.0.0.1" and mosquitto.port != 1883
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    _assert_retained_reaches_late_subscriber(mosquitto)


def _assert_retained_reaches_late_subscriber(server: _Server) -> None:
    topic = f"test/{uuid.uuid4().hex}/state"
    _publish(server, topic, [b"online"], retain=True)
    sub = _Collector(server)
    try:
        sub.subscribe(topic)
        assert sub.wait_for(1) == [(topic, b"online", True)]
    finally:
        sub.close()


def test_mosquitto_persistent_session_survives_restart_and_kill(
    fresh_mosquitto: Mosquitto,
) -> None:
    broker = fresh_mosquitto
    topic = f"test/{uuid.uuid4().hex}/q"
    client_id = f"persist-{uuid.uuid4().hex[:8]}"
    sub = _Collector(broker, client_id=client_id, clean=False)
    sub.subscribe(topic, qos=1)
    sub.close()

    port = broker.port
    _publish(broker, topic, [b"1", b"2", b"3"])
    old_pid = broker.proc.pid if broker.proc else -1
    broker.restart()  # graceful: persistence DB written on SIGTERM
    assert broker.port == port and _gone(old_pid)
    _publish(broker, topic, [b"4", b"5"])
    time.sleep(broker.autosave_interval + 1.5)  # let the periodic autosave run
    broker.restart(hard=True)  # SIGKILL: only the autosaved state survives
    assert broker.port == port

    sub = _Collector(broker, client_id=client_id, clean=False)
    try:
        got = sub.wait_for(5)
        assert [payload for _, payload, _ in got] == [b"1", b"2", b"3", b"4", b"5"]
    finally:
        sub.close()


def test_victoria_line_protocol_roundtrip_ms_precision_and_kill_restart(
    fresh_victoria: VictoriaMetrics,
) -> None:
    vm = fresh_victoria
    machine = f"m-{uuid.uuid4().hex[:8]}"
    base = time.time_ns() - 5_000_000_000  # current time: older points fall out of retention
    sub_ms = [0, 999_999, 500_000]  # nanosecond remainders: VM floors them to ms
    stamps = [base - base % 1_000_000 + i * 1_000_000_000 + r for i, r in enumerate(sub_ms)]
    values = [21.5, -3.25, 1e-3]
    lines = [
        f"readings,machine={machine},sensor=temp value={v} {ts}"
        for v, ts in zip(values, stamps, strict=True)
    ]
    assert vm.write_lines(lines) == 204

    match = vm.selector("readings_value", machine=machine)
    assert vm.wait_for_count(match, 3) == 3
    expected = [
        {
            "metric": {"__name__": "readings_value", "machine": machine, "sensor": "temp"},
            "values": values,
            "timestamps": [ts // 1_000_000 for ts in stamps],
        }
    ]
    assert vm.export(match) == expected
    assert vm.series_values("readings_value", machine=machine, sensor="temp") == [
        (ts // 1_000_000, v) for ts, v in zip(stamps, values, strict=True)
    ]
    assert vm.series_values("readings_value", machine="no-such-machine") == []

    port, old_pid = vm.port, vm.proc.pid if vm.proc else -1
    vm.restart()  # graceful: VM persists everything on SIGTERM
    assert vm.port == port and _gone(old_pid)
    assert vm.wait_for_count(match, 3) == 3
    assert vm.export(match) == expected

    # A crash right after a newer write: the persisted points survive; the new point may
    # be lost (VM 1.79 keeps ~5 s of acknowledged rows in memory only).
    assert vm.write_lines(f"readings,machine={machine},sensor=temp value=9 {time.time_ns()}") == 204
    old_pid = vm.proc.pid if vm.proc else -1
    vm.kill()
    assert not vm.running and _gone(old_pid) and not port_open(vm.host, port)
    vm.start()
    assert vm.port == port
    vm.force_flush()
    assert vm.export(match)[0]["values"][:3] == values
    assert vm.export(match)[0]["timestamps"][:3] == expected[0]["timestamps"]


def test_influxdb1_v1_write_and_select(influxdb1: InfluxDB1) -> None:
    db = f"db_{uuid.uuid4().hex[:8]}"
    influxdb1.create_database(db)
    base = time.time_ns() - 5_000_000_000
    stamps = [base + i * 1_000_000_123 for i in range(3)]  # full ns precision kept
    values = [1.5, 2.5, -7.0]
    lines = [
        f"readings,machine=m1,sensor=temp value={v} {ts}"
        for v, ts in zip(values, stamps, strict=True)
    ]
    assert influxdb1.write_lines(db, lines) == 204

    rows = influxdb1.points("SELECT value, machine FROM readings WHERE sensor = 'temp'", db)
    assert rows == [
        {"time": ts, "value": v, "machine": "m1"} for ts, v in zip(stamps, values, strict=True)
    ]
    # 1.6 has no v2 write API: the sink must use api = "v1" for it.
    status, _ = http_request(f"{influxdb1.url}/api/v2/write?bucket={db}", b"x v=1", "POST")
    assert status == 404


def test_stop_leaves_no_process_and_close_removes_dir() -> None:
    require_binary(InfluxDB1.binary)
    server = InfluxDB1().start()
    pid, workdir = server.proc.pid if server.proc else -1, server.dir
    assert server.startup_seconds is not None and server.startup_seconds < server.start_timeout
    server.close()
    assert _gone(pid) and not workdir.exists() and not server.running


def test_nats_single_node_serves_mqtt_with_retained_messages() -> None:
    require_binary(NatsCluster.binary)
    with NatsCluster(1) as nats:
        [node] = nats.nodes
        assert node.healthy() and node.port != 1883
        _assert_retained_reaches_late_subscriber(node)
        pid = node.proc.pid if node.proc else -1
    assert _gone(pid) and not nats.dir.exists()


def test_require_binary_fails_under_ci_and_skips_locally(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = f"no-such-binary-{free_port()}"
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI: required binary missing"):
        require_binary(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=missing):
        require_binary(missing)
    assert require_binary("sh").endswith("/sh")
