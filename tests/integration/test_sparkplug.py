"""Sparkplug B end to end: edge nodes on the session mosquitto, the gateway as host
application, readings in VictoriaMetrics. Edge nodes: the simulator's (`simulator.sparkplug`),
a scripted one (tests/sparkplug_edge.py) and, where Node.js is there, Eclipse Tahu's
JavaScript client (npm ``sparkplug-client``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gateway.core.sparkplug import schema as s
from simulator.mqtt import Broker
from simulator.profiles import SensorProfile
from simulator.sparkplug import EdgeNode
from tests.harness import Gateways, MqttProbe, uid
from tests.servers import Mosquitto, VictoriaMetrics
from tests.sparkplug_edge import Edge
from tests.stores import Store, by_sensor, stored, wait_count

SPB = """
[[mqtt.subscriptions]]
topic = "spBv1.0/#"
format = "sparkplug"
qos = 0

[sparkplug]
reorder_timeout_s = 0.5
rebirth_cooldown_s = 3.0

[alerts]
ack_required = []
"""
COMPRESSED = s.Payload(uuid="SPBV1.0_COMPRESSED", body=b"\x1f\x8b").SerializeToString()
NODE_MODULES = Path(os.environ.get("EDGE_NODE_MODULES", "~/.cache/edge-gateway/node_modules"))


def tahu_client() -> str:
    """Path of node, with npm `sparkplug-client` installed into NODE_MODULES if missing
    (a few seconds); missing node or a failed install: skip, or fail under CI."""
    node_bin, npm = shutil.which("node"), shutil.which("npm")
    modules = NODE_MODULES.expanduser()
    why = ""
    if node_bin is None or npm is None:
        why = "node/npm not found on PATH"
    elif not (modules / "sparkplug-client").is_dir():
        modules.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(modules.parent),
             "sparkplug-client@3"],
            capture_output=True, timeout=180, check=False,
        )  # fmt: skip
        if r.returncode != 0 or not (modules / "sparkplug-client").is_dir():
            why = f"npm install sparkplug-client failed: {r.stderr[-500:]!r}"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {why}", pytrace=False)
        pytest.skip(why)
    assert node_bin is not None
    return node_bin


def ncmds(probe: MqttProbe, group: str) -> list[str]:
    return [m.topic for m in probe.messages(f"spBv1.0/{group}/NCMD/#")]


class Pump(threading.Thread):
    """Publishes DDATA for every profile every 50 ms; answers rebirths; records what it sent."""

    def __init__(self, node: EdgeNode) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.stop = threading.Event()
        self.values = {(p.equipment, p.sensor): 50.0 for p in node.profiles}
        self.sent: dict[str, set[tuple[int, float]]] = {}
        self.rebirths = 0

    def run(self) -> None:
        node = self.node
        while not self.stop.is_set():
            if node.rebirth_wanted.is_set():
                node.rebirth_wanted.clear()
                ts = node.birth(self.values)
                self.rebirths += 1
                for (eq, _), v in self.values.items():
                    self.sent.setdefault(eq, set()).add((ts, v))
            for p in node.profiles:
                ts = time.time_ns() // 1_000_000
                v = self.values[(p.equipment, p.sensor)]
                if node.data(p, v, ts):
                    self.sent.setdefault(p.equipment, set()).add((ts, v))
            time.sleep(0.05)


def test_late_gateway_one_rebirth_data_spike_ddeath_and_ndeaths(
    spawn_store: Gateways, store: Store, probe: MqttProbe, mosquitto: Mosquitto
) -> None:
    spawn = spawn_store  # once per real store: what each keeps is counted its own way
    group = uid("spb-line")
    dev_a, dev_b = uid("press"), uid("pump")
    profiles = [
        SensorProfile(group, dev_a, "temperature", "celsius", 20, 80, 1),
        SensorProfile(group, dev_b, "pressure", "psi", 10, 50, 1),
    ]
    node = EdgeNode(group, f"edge-{group}", profiles, Broker("127.0.0.1", mosquitto.port), bdseq=7)
    probe.subscribe(f"spBv1.0/{group}/#", f"alerts/events/{dev_a}/#", f"alerts/events/{dev_b}/#")
    probe.subscribe(f"alerts/events/edge-{group}/#", f"status/{dev_b}")
    node.connect(5)
    node.birth({})  # before any gateway listens
    pump = Pump(node)
    pump.start()
    try:
        gw = spawn(SPB + f'[[rules]]\nsensor = "temperature"\nequipment = "{dev_a}"\nhigh = 85\n')
        # a gateway started after the births asks once (cause startup), then ingests
        probe.wait_for(f"spBv1.0/{group}/NCMD/#", timeout=10)
        wait_count(store, 10, timeout=15.0, equipment=dev_a)
        assert ncmds(probe, group) == [f"spBv1.0/{group}/NCMD/edge-{group}"]
        assert pump.rebirths == 1
        assert gw.metric("edge_sparkplug_rebirths_total", cause="startup") == 1
        points = store.points(equipment=dev_a)
        assert {(p.tags["line"], p.tags["sensor"], p.tags["unit"]) for p in points} == {
            (group, "temperature", "celsius")
        }
        distinct, extra, _ = stored(store, equipment=dev_a)
        assert extra == 0 and distinct == len(points)  # one point per metric timestamp
        got = set(by_sensor(points)["temperature"])
        assert got <= pump.sent[dev_a]  # the metrics' own timestamps
        # a spike raises the usual alert
        pump.values[(dev_a, "temperature")] = 95.0
        # (a z-score alert of the same sensor may come with it: only the rule's is asked)
        raised = probe.wait_for(
            lambda m: (
                m.topic == f"alerts/events/{dev_a}/temperature"
                and m.json()["kind"] == "threshold_high"
            ),
            timeout=10,
        )[0]
        assert raised.json()["state"] == "raised"
        pump.values[(dev_a, "temperature")] = 50.0
        # DDEATH: that device offline at once (offline_after_s is 30 s)
        t0 = time.monotonic()
        node.ddeath(dev_b)
        [off] = probe.wait_for(f"alerts/events/{dev_b}/*", timeout=5)
        assert time.monotonic() - t0 < 5
        assert (off.json()["kind"], off.json()["state"]) == ("offline", "raised")
        probe.wait_for(lambda m: m.topic == f"status/{dev_b}" and b"offline" in m.payload)
        # an NDEATH of an older session (bdSeq 6): ignored
        probe.publish(node.topic("NDEATH"), Edge(group, node.node, bdseq=6).ndeath()[1], qos=0)
        gw.wait_metric("edge_sparkplug_stale_deaths_total", lambda v: v == 1)
        assert probe.messages(f"alerts/events/{dev_a}/*") == []
        # the current session's NDEATH: the node and its devices offline
        pump.stop.set()
        pump.join(5)
        node.ndeath()
        probe.wait_for(f"alerts/events/{dev_a}/*", timeout=5)
        probe.wait_for(f"alerts/events/edge-{group}/*", timeout=5)
        assert gw.metric("edge_readings_rejected_total", reason="malformed") == 0
    finally:
        pump.stop.set()


def test_seq_wrap_gap_and_hostile_payloads(spawn: Gateways, probe: MqttProbe) -> None:
    gw = spawn(SPB)
    edge = Edge(uid("spb-g"), uid("node"))
    probe.subscribe(f"spBv1.0/{edge.group}/NCMD/#", gw.deadletter_topic)
    probe.publish(
        *edge.nbirth([{"name": "Flow", "alias": 1, "datatype": s.DOUBLE, "double_value": 1}])
    )

    def ndata(v: float) -> None:
        probe.publish(edge.topic("NDATA"), edge.payload([{"alias": 1, "double_value": v}]), qos=0)

    for i in range(300):  # seq 1 .. 255, 0 .. 44: the wrap is no gap
        ndata(float(i))
    gw.wait_metric("edge_readings_received_total", lambda v: v >= 301, source="mqtt")
    time.sleep(1.0)
    assert ncmds(probe, edge.group) == []
    edge.seq += 2  # two lost
    ndata(1.0)
    probe.wait_for(f"spBv1.0/{edge.group}/NCMD/#", timeout=5)
    time.sleep(1.5)
    assert len(ncmds(probe, edge.group)) == 1
    assert gw.metric("edge_sparkplug_rebirths_total", cause="seq_gap") == 1
    # hostile input: counted, dead-lettered, intake goes on
    hostile = [
        (edge.topic("NDATA"), b"\xff\xfe garbage"),
        (f"spBv1.0/{edge.group}/NWHAT/{edge.node}", edge.payload([])),
        (edge.topic("NDATA"), COMPRESSED),
        (edge.topic("NDATA"), edge.payload([{"name": "/".join("x" * 40), "double_value": 1}])),
    ]  # fmt: skip
    before = gw.metric("edge_readings_received_total", source="mqtt")
    for topic, payload in hostile:
        probe.publish(topic, payload, qos=0)
    ndata(2.0)
    gw.wait_metric("edge_readings_received_total", lambda v: v >= before + 1, source="mqtt")
    assert gw.metric("edge_readings_rejected_total", reason="malformed") == 3
    probe.wait_for(gw.deadletter_topic, count=3)


def test_primary_host_state(spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto) -> None:
    host = uid("scada")
    topic = f"spBv1.0/STATE/{host}"
    gw = spawn(SPB.replace("[sparkplug]\n", f'[sparkplug]\nhost_id = "{host}"\n'))
    probe.subscribe(topic)
    [online] = probe.wait_for(lambda m: m.topic == topic and m.json()["online"] is True)
    ts = online.json()["timestamp"]
    assert online.retain and abs(ts - time.time() * 1000) < 60_000
    gw.wait_metric("edge_sparkplug_state_online", lambda v: v == 1)
    # someone says we are offline: we say online again (same timestamp)
    probe.clear()
    probe.publish(topic, {"online": False, "timestamp": ts}, retain=True)
    probe.wait_for(lambda m: m.topic == topic and m.json()["online"] is True)
    probe.clear()
    assert gw.stop() == 0
    [off] = probe.wait_for(lambda m: m.topic == topic and m.json()["online"] is False)
    assert off.json()["timestamp"] == ts


def test_tahu_js_edge_node_negative_ints_and_one_rebirth(
    spawn: Gateways, probe: MqttProbe, mosquitto: Mosquitto, victoria: VictoriaMetrics
) -> None:
    """An edge node that is not ours: Eclipse Tahu's JavaScript client."""
    node_bin = tahu_client()
    group, device = uid("tahu-g"), uid("tahu-dev")
    probe.subscribe(f"spBv1.0/{group}/#")
    script = Path(__file__).with_name("sparkplug_tahu_edge.js")
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES.expanduser())}
    proc = subprocess.Popen(
        [node_bin, str(script), f"mqtt://127.0.0.1:{mosquitto.port}", group, "tahu1", device, "20"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        probe.wait_for(f"spBv1.0/{group}/DBIRTH/#", timeout=15)
        gw = spawn(SPB)  # after the births: one rebirth
        sel = victoria.selector("readings_value", equipment=device, sensor="Ints.i16")
        victoria.wait_for_count(sel, 1, timeout=20)
        victoria.wait_for_count(
            victoria.selector("readings_value", equipment=device, sensor="temp"), 5
        )
        vals = {
            sn: [
                v for _, v in victoria.series_values("readings_value", equipment=device, sensor=sn)
            ]
            for sn in ("Ints.i8", "Ints.i16", "Ints.i32")
        }
        assert vals["Ints.i16"][0] == -300 and vals["Ints.i32"][0] == -70000
        assert -5 in vals["Ints.i8"] and all(v <= 0 for v in vals["Ints.i8"])
        assert len(ncmds(probe, group)) == 1
        assert gw.metric("edge_sparkplug_rebirths_total", cause="startup") == 1
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert out.count("REBIRTH") == 1, out[-2000:]
