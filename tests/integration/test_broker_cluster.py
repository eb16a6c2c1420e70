"""Broker failover on a real clustered MQTT broker: a 3-node NATS cluster.

Each node runs JetStream and the MQTT listener with ``stream_replicas: 3``, so a QoS 1
persistent session lives on every node (tests/servers.py `NatsCluster`). The gateway
lists all three nodes in ``[mqtt] servers`` and sits on node 1; a paho client publishes
~2,000 readings/s (QoS 1, payload timestamps) through node 3; node 1 is SIGKILLed under
that load. The gateway must move to node 2 with the same client id and persistent
session, and every reading must be stored exactly once (distinct points, no extra
points, counted as each store counts them: VictoriaMetrics and InfluxDB 1.x). The
failover time (kill -> connected on the new node) is printed and kept under a
generous bound.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import require_binary
from tests.harness import GatewayProcess, uid
from tests.servers import HOST, NatsCluster
from tests.stores import Store, stored, wait_count

RATE = 2000  # readings/s
PER_MESSAGE = 10  # readings per MQTT message: 200 QoS 1 messages/s
SENSORS = 20
BEFORE_KILL_S = 4.0
AFTER_KILL_S = 6.0
FAILOVER_BOUND_S = 30.0


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    require_binary(NatsCluster.binary)
    with NatsCluster(3) as cluster:
        yield cluster


class Load:
    """A paho publisher thread: `rate` readings/s on one node, QoS 1, paced by clock."""

    def __init__(self, host: str, port: int, line: str, rate: int) -> None:
        self.line = line
        self.rate = rate
        self.sent = 0  # readings handed to paho
        self.acked = 0  # messages PUBACKed by the broker
        self.messages = 0
        self.stop = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=uid("load"), clean_session=True
        )
        self.client.max_inflight_messages_set(1000)
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.t0_ms = int(time.time() * 1000) - 3_600_000  # an hour ago: unique, in range
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_publish(self, c: object, u: object, mid: int, rc: object, props: object) -> None:
        self.acked += 1

    def _run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while self.sent + PER_MESSAGE <= due:
                n0 = self.sent
                sensor = (n0 // PER_MESSAGE) % SENSORS
                batch = [
                    {"value": float(n), "ts": self.t0_ms + n} for n in range(n0, n0 + PER_MESSAGE)
                ]
                topic = f"plant/{self.line}/eq/s{sensor}"
                self.client.publish(topic, json.dumps(batch), qos=1)
                self.sent += PER_MESSAGE
                self.messages += 1
            time.sleep(0.005)

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float = 20.0) -> None:
        """Stop publishing and wait until the broker acknowledged every message."""
        self.stop.set()
        self._thread.join()
        deadline = time.monotonic() + timeout
        while self.acked < self.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.loop_stop()
        self.client.disconnect()
        assert self.acked == self.messages, f"{self.messages - self.acked} publishes not acked"


def test_failover_to_the_next_node_stores_every_reading_once(
    nats_cluster: NatsCluster, store: Store, tmp_path: Path
) -> None:
    cluster = nats_cluster
    first, second, third = cluster.nodes  # the gateway starts on 1, the load is on 3
    servers = ", ".join(f'"{s}"' for s in cluster.servers)
    gw = GatewayProcess(
        first.port,
        store.url,
        tmp_path,
        extra_toml=f"[mqtt]\nservers = [{servers}]\nreconnect_min_s = 0.2\nconnect_timeout_s = 5\n",
        ready_timeout=30,
        influx=store.gateway_influx,
    )
    line = uid("nats")
    load = Load(HOST, third.port, line, RATE)
    try:
        assert gw.metric("edge_mqtt_connected") == 1
        assert gw.metric("edge_mqtt_server", server=first.server) == 1
        assert gw.metric("edge_mqtt_server", server=second.server) == 0
        load.start()
        time.sleep(BEFORE_KILL_S)
        before = load.sent
        t_kill = time.monotonic()
        first.kill()
        gw.wait_metric(
            "edge_mqtt_server", lambda v: v == 0, timeout=FAILOVER_BOUND_S, server=first.server
        )
        gw.wait_metric("edge_mqtt_connected", lambda v: v == 1, timeout=FAILOVER_BOUND_S)
        failover_s = time.monotonic() - t_kill
        now = [n for n in (second, third) if gw.metric("edge_mqtt_server", server=n.server)]
        assert len(now) == 1, gw.log_tail()
        time.sleep(AFTER_KILL_S)
        load.finish()
        total = load.sent
        wait_count(store, total, timeout=30.0, line=line)
        time.sleep(1.0)  # anything beyond `total` (a duplicate) has arrived too
        distinct, extra, per_series = stored(store, line=line)
        print(
            f"\nNATS 3-node failover: {failover_s:.2f}s from SIGKILL of {first.server} to "
            f"connected on {now[0].server}; {total} readings ({before} before the kill), "
            f"{load.messages} QoS 1 messages at {RATE}/s"
        )
        assert distinct == total
        assert extra == 0, f"{extra} readings stored twice"
        assert len(per_series) == SENSORS
        assert gw.metric("edge_mqtt_server", server=first.server) == 0
        log = gw.log_text()
        assert log.count("broker node changed") == 1, gw.log_tail()
        assert failover_s < FAILOVER_BOUND_S
    finally:
        load.stop.set()
        gw.stop()
    assert "Traceback" not in gw.log_text(), gw.log_tail()
