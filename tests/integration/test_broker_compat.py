"""Broker compatibility: the core end to end behaviour on three real MQTT brokers.

Each check runs once per broker: a private mosquitto 2 (the session broker), NATS 2.9's
MQTT listener (one node, JetStream, `NatsCluster(1)`) and RabbitMQ 3.10's MQTT plugin
(a private node, `RabbitMQ`). One gateway per broker serves every check of that broker
(equipment names are unique per check), writing to InfluxDB 1.x, which keeps one
point per series and timestamp, so a count there is a count of distinct readings.

What differs between the brokers, and what the gateway does about it, is in
docs/brokers.md; the differences the gateway meets are asserted here (`Broker`
fields), so a broker release that changes them fails this module.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.harness import GatewayProcess, Message, MqttProbe, uid
from tests.servers import InfluxDB1, Mosquitto, NatsCluster, RabbitMQ, find_binary, process_tree
from tests.stores import Store, by_sensor, make_store, stored, wait_count

BROKERS = ("mosquitto", "nats", "rabbitmq")


@dataclass(frozen=True)
class Broker:
    name: str
    port: int
    # [mqtt] topic_forbidden_chars the gateway runs with on this broker
    forbidden: str = ""
    # a late subscriber with a wildcard filter gets the retained messages
    retained_to_wildcards: bool = True
    # QoS granted for a QoS 2 subscription
    qos2_granted: int = 2


# ------------------------------------------------------------------- brokers


class _Prestart:
    """Start RabbitMQ (~10 s) in a thread while the other brokers' checks run."""

    def __init__(self) -> None:
        self.server: RabbitMQ | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.server = RabbitMQ().start()
        except BaseException as e:  # reported by the fixture that needs it
            self.error = e

    def get(self) -> RabbitMQ:
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.server is not None
        return self.server

    def close(self) -> None:
        self._thread.join()
        if self.server is not None:
            self.server.close()


@pytest.fixture(scope="module")
def rabbit_early() -> Iterator[_Prestart | None]:
    have = find_binary(RabbitMQ.binary) is not None and find_binary("epmd") is not None
    pre = _Prestart() if have else None
    yield pre
    if pre is not None:
        pre.close()
        assert pre.server is None or not pre.server.leftovers(), "rabbitmq processes survived"


@pytest.fixture(scope="module", params=BROKERS)
def broker(request: pytest.FixtureRequest, rabbit_early: _Prestart | None) -> Iterator[Broker]:
    name = request.param
    if name == "mosquitto":
        mosq: Mosquitto = request.getfixturevalue("mosquitto")
        yield Broker(name, mosq.port)
    elif name == "nats":
        require_binary(NatsCluster.binary)
        with NatsCluster(1) as nats:
            # NATS closes the connection on a PUBLISH to a topic with '.' or ' '
            yield Broker(name, nats.nodes[0].port, forbidden=". ", qos2_granted=1)
    else:
        require_binary(RabbitMQ.binary)
        require_binary("epmd")
        assert rabbit_early is not None
        rabbit = rabbit_early.get()
        # RabbitMQ maps '.' to the level separator '/': "status/pump.1" is seen as
        # "status/pump/1" by subscribers
        yield Broker(name, rabbit.port, forbidden=".", retained_to_wildcards=False, qos2_granted=1)


# ------------------------------------------------------------------- gateway

RULES = """
[alerts]
ack_required = []

[[rules]]
equipment = "cmp-*"
sensor = "temperature"
high = 85.0
critical_high = 100.0
"""


@dataclass
class Setup:
    broker: Broker
    gw: GatewayProcess
    store: Store


@pytest.fixture(scope="module")
def setup(
    broker: Broker, influxdb1: InfluxDB1, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    store = make_store(influxdb1, "compat_" + broker.name + "_" + uuid.uuid4().hex[:6])
    extra = (
        f"""
[mqtt]
deadletter_per_s = 1000
reconnect_min_s = 0.2
topic_forbidden_chars = {json.dumps(broker.forbidden)}

{GatewayProcess.DEFAULT_SUBSCRIPTION}
[[mqtt.subscriptions]]
topic = "batch/+"
template = "batch/{{line}}"
qos = 2
"""
        + RULES
    )
    tmp: Path = tmp_path_factory.mktemp(f"compat-{broker.name}")
    gw = GatewayProcess(broker.port, store.url, tmp, extra_toml=extra, influx=store.gateway_influx)
    try:
        yield Setup(broker, gw, store)
    finally:
        rc = gw.stop() if gw.running else None
        log = gw.log_text()
    assert rc in (0, None), gw.log_tail()
    assert "Traceback" not in log, gw.log_tail()


@pytest.fixture
def probe(setup: Setup) -> Iterator[MqttProbe]:
    with MqttProbe(setup.broker.port) as p:
        yield p


def retained(port: int, topic_filter: str) -> list[Message]:
    """What a subscriber arriving now gets for `topic_filter` (its retained messages),
    ended by a sentinel it publishes after the SUBACK (no sleep)."""
    sentinel = f"test/sentinel/{uuid.uuid4().hex}"
    with MqttProbe(port, [topic_filter, sentinel]) as late:
        late.publish(sentinel, b"end")
        late.wait_for(sentinel)
        return [m for m in late.messages() if m.topic != sentinel]


def now_ms() -> int:
    return int(time.time() * 1000)


# -------------------------------------------------------------------- checks


def test_qos1_readings_with_timestamps_are_stored_exactly(setup: Setup, probe: MqttProbe) -> None:
    store = setup.store
    line, eq, eq2 = uid("line"), uid("cmp-read"), uid("cmp-batch")
    base = now_ms() - 60_000
    expected: dict[str, list[tuple[int, float]]] = {}
    infos = []
    for i in range(100):  # one reading per message, 4 series
        sensor = f"s{i % 4}"
        payload = {"value": i + 0.25, "ts": base + i}
        infos.append(
            probe.client.publish(f"plant/{line}/{eq}/{sensor}", json.dumps(payload), qos=1)
        )
        expected.setdefault(sensor, []).append((base + i, i + 0.25))
    for j in range(20):  # batches of 5 on the QoS 2 subscription, payload names
        items = [
            {"equipment": eq2, "sensor": f"b{k}", "value": j * 10.0 + k, "ts": base + j}
            for k in range(5)
        ]
        infos.append(probe.client.publish(f"batch/{line}", json.dumps(items), qos=1))
        for k in range(5):
            expected.setdefault(f"b{k}", []).append((base + j, j * 10.0 + k))
    for info in infos:
        info.wait_for_publish(10)
        assert info.is_published()
    wait_count(store, 200, 20.0, line=line)
    time.sleep(0.5)  # anything beyond 200 (a reading stored twice) has arrived too
    distinct, extra, per_series = stored(store, line=line)
    assert (distinct, extra) == (200, 0)
    assert len(per_series) == 9
    got = by_sensor(store.points(equipment=eq)) | by_sensor(store.points(equipment=eq2))
    assert got == expected


def test_spike_alert_event_retained_active_ack_and_clear(setup: Setup, probe: MqttProbe) -> None:
    port = setup.broker.port
    eq = uid("cmp-alert")
    events, active = f"alerts/events/{eq}/temperature", f"alerts/active/{eq}/temperature/"
    active += "threshold_high"
    probe.subscribe(events, active, f"status/{eq}")
    topic = f"plant/line-c/{eq}/temperature"
    probe.publish(topic, {"value": 50.0})
    probe.publish(topic, {"value": 95.0})
    [raised] = probe.wait_for(events)
    ev = raised.json()
    assert (ev["kind"], ev["state"], ev["severity"], ev["value"]) == (
        "threshold_high",
        "raised",
        "high",
        95.0,
    )
    assert not raised.retain
    probe.wait_for(active)
    # a late subscriber: exact topic on every broker; a wildcard only where retained
    # messages are delivered to wildcard subscriptions (not RabbitMQ 3.10)
    [late] = retained(port, active)
    assert late.retain and late.json()["id"] == ev["id"] and late.json()["state"] == "raised"
    by_wildcard = retained(port, f"alerts/active/{eq}/#")
    assert len(by_wildcard) == (1 if setup.broker.retained_to_wildcards else 0)
    # (c) retained status/{equipment}: the last one published
    probe.wait_for(f"status/{eq}")
    [status] = retained(port, f"status/{eq}")
    assert status.retain and status.json()["equipment"] == eq
    assert status.json() == probe.messages(f"status/{eq}")[-1].json()

    # (d) acknowledged over MQTT
    probe.publish("alerts/ack", {"id": ev["id"], "by": "op-compat"})
    msgs = probe.wait_for(events, count=2)
    ack = msgs[1].json()
    assert (ack["id"], ack["state"], ack["acknowledged_by"]) == (
        ev["id"],
        "acknowledged",
        "op-compat",
    )
    probe.wait_for(lambda m: m.topic == active and b"acknowledged" in m.payload)
    [late] = retained(port, active)
    assert late.json()["state"] == "acknowledged"

    # cleared: the retained active alert is emptied (zero-length retained)
    for _ in range(6):
        probe.publish(topic, {"value": 50.0})
    msgs = probe.wait_for(events, count=3)
    assert msgs[2].json()["state"] == "cleared" and msgs[2].json()["id"] == ev["id"]
    probe.wait_for(lambda m: m.topic == active and m.payload == b"")
    assert retained(port, active) == []


def test_rejected_payload_goes_to_the_dead_letter_topic(setup: Setup, probe: MqttProbe) -> None:
    gw, store = setup.gw, setup.store
    line, eq = uid("line"), uid("cmp-dead")
    probe.subscribe(gw.deadletter_topic)
    topic = f"plant/{line}/{eq}/temperature"
    probe.publish(topic, b"not json")
    probe.publish(topic, {"value": 1.5, "ts": now_ms()})
    [dead] = probe.wait_for(lambda m: m.topic == gw.deadletter_topic and b"not json" in m.payload)
    assert not dead.retain
    doc = dead.json()
    assert (doc["reason"], doc["topic"], doc["payload"]) == ("malformed", topic, "not json")
    assert wait_count(store, 1, line=line) == 1


def test_names_the_broker_cannot_carry_are_stored_not_published(
    setup: Setup, probe: MqttProbe
) -> None:
    """An equipment named in a payload may hold a character the broker cannot carry in
    a topic. Its readings are stored; its status/alerts go out where the broker can
    take them, and are counted and logged once (not sent) where it cannot. The gateway
    stays connected and what follows still goes out."""
    gw, store, b = setup.gw, setup.store, setup.broker
    line, eq = uid("line"), uid("cmp-name")
    dotted = f"{eq}.a"
    probe.subscribe(f"status/{eq}", f"status/{dotted}", f"alerts/events/{eq}/#")
    failed0 = gw.metric("edge_publish_failed_total")
    ts = now_ms()
    items = [
        {"equipment": dotted, "sensor": "temperature", "value": 20.0, "ts": ts},
        {"equipment": dotted, "sensor": "temperature", "value": 99.0, "ts": ts + 1},  # alert
        {"equipment": eq, "sensor": "temperature", "value": 20.0, "ts": ts},
    ]
    probe.publish(f"batch/{line}", items)
    wait_count(store, 3, line=line)
    assert store.count(equipment=dotted) == 2
    probe.wait_for(f"status/{eq}")
    # after the dotted equipment's publishes: the link is still up and carries alerts
    probe.publish(f"plant/{line}/{eq}/temperature", {"value": 99.0, "ts": ts + 2})
    [ev] = probe.wait_for(f"alerts/events/{eq}/#")
    assert ev.json()["state"] == "raised"
    if "." in b.forbidden:
        # status and one alert event + its active topic for the dotted equipment
        gw.wait_metric("edge_publish_failed_total", lambda v: v >= failed0 + 3)
        assert probe.messages(f"status/{dotted}") == []
        assert gw.log_text().count("which the broker cannot carry") == 1, gw.log_tail()
    else:
        assert [m.json()["equipment"] for m in probe.wait_for(f"status/{dotted}")] == [dotted]
        assert gw.metric("edge_publish_failed_total") == failed0
    assert gw.metric("edge_mqtt_connected") == 1
    assert "unavailable" not in gw.log_text(), gw.log_tail()


def test_qos2_subscription_is_downgraded_with_one_log_line(setup: Setup) -> None:
    log = setup.gw.log_text()
    line = "mqtt: broker granted QoS 1 for 'batch/+' (asked 2)"
    assert log.count(line) == (0 if setup.broker.qos2_granted == 2 else 1), setup.gw.log_tail()
    assert "refused the subscription" not in log


def test_restart_resumes_the_persistent_session(setup: Setup, probe: MqttProbe) -> None:
    """SIGKILL (the broker publishes the retained Last Will `offline`), readings published
    while the gateway is down, restart: the persistent session hands them over and
    each is stored once."""
    gw, store, port = setup.gw, setup.store, setup.broker.port
    status = f"gateway/{gw.client_id}/status"
    [online] = retained(port, status)
    assert (online.payload, online.retain) == (b"online", True)
    probe.subscribe(status)
    probe.clear()
    gw.kill()
    probe.wait_for(lambda m: m.topic == status and m.payload == b"offline", timeout=10)
    [will] = retained(port, status)
    assert will.payload == b"offline"

    line, eq = uid("line"), uid("cmp-resume")
    base = now_ms() - 30_000
    for i in range(50):
        probe.publish(f"plant/{line}/{eq}/s{i % 2}", {"value": float(i), "ts": base + i})
    gw.start()
    wait_count(store, 50, 20.0, line=line)
    time.sleep(0.5)
    distinct, extra, _ = stored(store, line=line)
    assert (distinct, extra) == (50, 0)
    got = by_sensor(store.points(line=line))
    assert got == {f"s{k}": [(base + i, float(i)) for i in range(k, 50, 2)] for k in (0, 1)}
    probe.wait_for(lambda m: m.topic == status and m.payload == b"online")
    [back] = retained(port, status)
    assert back.payload == b"online"


def test_rabbitmq_node_is_private(rabbit_early: _Prestart | None) -> None:
    """A node of its own (ports, epmd, cookie, mnesia): the system RabbitMQ (5672) and
    epmd (4369), if any, are neither used nor touched. (That none of its processes
    survives — Erlang starts helpers in process groups of their own — is checked when
    the module's node stops.)"""
    require_binary(RabbitMQ.binary)
    require_binary("epmd")
    assert rabbit_early is not None
    server = rabbit_early.get()
    assert server.nodename == f"edge-test-{server.port}@localhost"
    ports = {server.port, server.amqp_port, server.dist_port, server.epmd_port}
    assert len(ports) == 4 and not ports & {1883, 5672, 4369, 25672}
    assert server.proc is not None
    assert len(process_tree(server.proc.pid)) >= 3  # sh, epmd, beam.smp, ...
