"""The simulator against a real mosquitto started by this module on a free port.

Under ``CI=1`` a missing mosquitto fails these tests (`tests.conftest.require_binary`).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulator.anomalies import AnomalyEvent, Injection
from simulator.mqtt import run_load, run_plant
from tests.conftest import require_binary
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration
SENTINEL_PREFIX = "plant/_sentinel/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def broker_port() -> Iterator[int]:
    """A private mosquitto of this module (never port 1883, where a system broker may
    listen; not the session broker, whose other tests publish on ``plant/...``)."""
    require_binary(Mosquitto.binary)
    with Mosquitto() as broker:
        yield broker.port


class Collector:
    """A paho subscriber that keeps every (topic, item) it receives.

    Sentinels (`settle`) are published by the collector's own client on
    ``plant/_sentinel/<id>`` and kept apart from the items.
    """

    def __init__(self, port: int, topic_filter: str) -> None:
        self.items: list[tuple[str, dict]] = []
        self.sentinels: set[str] = set()
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{port}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(5), "subscriber did not get SUBACK"

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(SENTINEL_PREFIX):
            with self.lock:
                self.sentinels.add(msg.topic.removeprefix(SENTINEL_PREFIX))
            return
        data = orjson.loads(msg.payload)
        with self.lock:
            for item in data if isinstance(data, list) else [data]:
                self.items.append((msg.topic, item))

    def wait_for(self, n: int, timeout: float = 15.0) -> int:
        """Wait until at least `n` items arrived (or `timeout`); return how many did."""
        deadline = time.monotonic() + timeout
        while len(self.items) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.items)

    def settle(self, n: int, timeout: float = 15.0) -> int:
        """`wait_for(n)`, then a sentinel round trip; return the item count after it.

        Publishers whose QoS 1 messages the broker acknowledged before the sentinel was
        published have them delivered to this subscriber before the sentinel, so any
        extra item (a resend, a duplicate) is counted by then.
        """
        self.wait_for(n, timeout)
        sid = uuid.uuid4().hex
        self.client.publish(SENTINEL_PREFIX + sid, b"{}", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + timeout
        while sid not in self.sentinels:
            assert time.monotonic() < deadline, "the sentinel never came back"
            time.sleep(0.01)
        return len(self.items)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collector(broker_port: int) -> Iterator[Collector]:
    c = Collector(broker_port, "plant/#")
    yield c
    c.close()


def test_run_load_delivers_exactly_count_readings(broker_port: int, collector: Collector) -> None:
    result = run_load("127.0.0.1", broker_port, rate=5000, batch=10, series=20, count=2000, qos=1)

    assert (result.readings, result.messages, result.acked_messages) == (2000, 200, 200)
    assert collector.settle(2000) == 2000
    assert not result.interrupted
    # Paced, not a burst: the pacer publishes only while sent <= rate * elapsed, so the
    # total never exceeds rate * elapsed + one batch. A slow machine only lowers the rate
    # (the speed is printed, not asserted); a pacer that bursts breaks this at any speed.
    print(result.summary_line())
    assert result.readings <= 5000 * result.elapsed_s + 10
    assert "sent 2000 readings in" in result.summary_line()
    assert "(200 msgs, batch 10)" in result.summary_line()
    topics = {t for t, _ in collector.items}
    assert len(topics) == 20
    assert all(t.startswith("plant/load/eq-") for t in topics)
    # Per series, every ts is distinct (the gateway would drop a repeat as a duplicate).
    pairs = {(t, item["ts"]) for t, item in collector.items}
    assert len(pairs) == 2000
    assert all(20 <= item["value"] <= 80 for _, item in collector.items)


def test_run_load_duration_and_qos0(broker_port: int, collector: Collector) -> None:
    t0 = time.monotonic()
    result = run_load("127.0.0.1", broker_port, rate=1000, batch=1, series=5, duration=0.5, qos=0)
    took = time.monotonic() - t0
    # ~500 readings on an idle machine (printed); a slow one sends fewer, so only the
    # bounds that hold at any speed are asserted: something was sent, the run lasted
    # the duration, and pacing (publish while sent <= rate * elapsed, elapsed < 0.5 s)
    # caps it at 1000 * 0.5 + 1.
    print(f"{result.summary_line()}; run_load returned after {took:.2f} s")
    assert 0 < result.readings <= 501
    assert took >= 0.5 and not result.interrupted
    assert result.messages == result.readings
    assert collector.settle(result.readings) == result.readings
    assert isinstance(collector.items[0][1], dict)


def test_run_plant_publishes_profiles_and_injected_spike(
    broker_port: int, collector: Collector
) -> None:
    events: list[AnomalyEvent] = []
    result = run_plant(
        "127.0.0.1",
        broker_port,
        seed=1,
        duration=6,
        speed=20,
        injections=[Injection.parse("spike:device-001:temperature@4")],
        on_event=events.append,
    )
    # 0..6 s inclusive: 4 + 3 + 7 + 2 + 2 + 3 * 7 readings.
    assert result.readings == 39
    assert collector.settle(39) == 39
    temps = [i for t, i in collector.items if t == "plant/line-1/device-001/temperature"]
    assert len(temps) == 4
    assert sum(i["value"] > 85 for i in temps) == 1
    assert all(i["unit"] == "celsius" and isinstance(i["ts"], int) for i in temps)
    assert any(t == "plant/line-2/fermenter-1/ph" for t, _ in collector.items)
    assert [e.kind for e in events] == ["spike"]


def _edge_sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_cli_load_prints_rate_line_and_json(broker_port: int, collector: Collector) -> None:
    proc = _edge_sim(
        *("mqtt", "--port", str(broker_port), "--rate", "2000", "--batch", "5"),
        *("--series", "3", "--count", "500", "--json"),
    )
    assert proc.returncode == 0, proc.stderr
    line, js = proc.stdout.strip().splitlines()
    assert line.startswith("sent 500 readings in ") and line.endswith("(100 msgs, batch 5)")
    summary = orjson.loads(js)
    assert summary["readings"] == 500 and summary["rate"] > 0
    assert collector.settle(500) == 500


def test_cli_unreachable_broker_exits_1() -> None:
    proc = _edge_sim("mqtt", "--port", str(_free_port()), "--connect-timeout", "0.5")
    assert proc.returncode == 1
    assert "cannot connect to MQTT broker" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_plant_mode_stops_cleanly_on_signal(
    broker_port: int, collector: Collector, sig: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "mqtt", "--port", str(broker_port), "--speed", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert collector.wait_for(20, timeout=15) >= 20  # it is publishing
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.startswith("published ") and out.rstrip().endswith(", interrupted")
    assert "Traceback" not in err
