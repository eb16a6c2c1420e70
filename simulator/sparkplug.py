"""``edge-sim sparkplug``: the seed plant as Sparkplug B edge nodes.

One edge node per line (group id = the line, edge node id ``edge-{line}``), one device per
equipment, one metric per sensor (aliases 1, 2, ... unique per edge node, unit in the
``engUnit`` property). Each node connects with its NDEATH Will (``bdSeq``), publishes
NBIRTH then the DBIRTHs, then alias-only DDATA with the readings' timestamps; it answers
``Node Control/Rebirth`` NCMDs with a fresh NBIRTH + DBIRTHs. ``ddeath_at`` publishes a
DDEATH for one device (its data stops until a rebirth), ``ndeath_at`` an NDEATH for every
node, after which the run ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.core.sparkplug import schema as s
from gateway.core.sparkplug.host import BDSEQ_METRIC, REBIRTH_METRIC
from simulator.anomalies import AnomalyConfig, AnomalyEvent, Injection
from simulator.mqtt import Broker
from simulator.plant import Plant
from simulator.profiles import SEED_PLANT, SensorProfile


def _ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SparkplugResult:
    nodes: int = 0
    births: int = 0
    rebirths: int = 0
    data_messages: int = 0
    readings: int = 0
    deaths: int = 0
    elapsed_s: float = 0.0

    def summary_line(self) -> str:
        return (
            f"edge-sim sparkplug: {self.nodes} edge nodes, {self.readings} readings in "
            f"{self.data_messages} DDATA, {self.births} births ({self.rebirths} on request), "
            f"{self.deaths} deaths, {self.elapsed_s:.1f} s"
        )


@dataclass
class EdgeNode:
    """One Sparkplug edge node on its own MQTT connection."""

    group: str
    node: str
    profiles: list[SensorProfile]
    broker: Broker
    bdseq: int = 0
    seq: int = 0
    aliases: dict[tuple[str, str], int] = field(default_factory=dict)
    dead_devices: set[str] = field(default_factory=set)
    rebirth_wanted: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for i, p in enumerate(self.profiles):
            self.aliases[(p.equipment, p.sensor)] = i + 1
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edge-sim-spb-{self.group}-{self.node}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if self.broker.username:
            self.client.username_pw_set(self.broker.username, self.broker.password)
        self.client.on_message = self._on_message
        self._connected = threading.Event()
        self.client.on_connect = lambda *a: self._connected.set()

    def topic(self, typ: str, device: str | None = None) -> str:
        t = f"spBv1.0/{self.group}/{typ}/{self.node}"
        return t if device is None else f"{t}/{device}"

    def _next_seq(self) -> int:
        sq = self.seq
        self.seq = (sq + 1) & 0xFF
        return sq

    def _death(self) -> bytes:
        p = s.Payload(timestamp=_ms())
        p.metrics.add(name=BDSEQ_METRIC, datatype=s.INT64, long_value=self.bdseq)
        return bytes(p.SerializeToString())

    def connect(self, timeout_s: float) -> None:
        self.client.will_set(self.topic("NDEATH"), self._death(), qos=1, retain=False)
        self.client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive)
        self.client.loop_start()
        if not self._connected.wait(timeout_s):
            self.client.loop_stop()
            raise ConnectionError(
                f"cannot connect to MQTT broker {self.broker.host}:{self.broker.port}"
            )
        self.client.subscribe(self.topic("NCMD"), qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            p = s.Payload.FromString(msg.payload)
        except s.DecodeError:
            return
        for m in p.metrics:
            if m.name == REBIRTH_METRIC and m.boolean_value:
                self.rebirth_wanted.set()

    def birth(self, values: dict[tuple[str, str], float]) -> int:
        """NBIRTH (seq 0, bdSeq) then one DBIRTH per device, with the current values;
        returns the births' timestamp (ms)."""
        with self.lock:
            self.seq = 0
            ts = _ms()
            nb = s.Payload(timestamp=ts, seq=self._next_seq())
            nb.metrics.add(name=BDSEQ_METRIC, datatype=s.INT64, long_value=self.bdseq)
            nb.metrics.add(name=REBIRTH_METRIC, datatype=s.BOOLEAN, boolean_value=False)
            self.client.publish(self.topic("NBIRTH"), nb.SerializeToString(), 0)
            self.dead_devices.clear()
            devices: dict[str, list[SensorProfile]] = {}
            for p in self.profiles:
                devices.setdefault(p.equipment, []).append(p)
            for device, profiles in devices.items():
                db = s.Payload(timestamp=ts, seq=self._next_seq())
                for p in profiles:
                    m = db.metrics.add(
                        name=p.sensor,
                        alias=self.aliases[(p.equipment, p.sensor)],
                        timestamp=ts,
                        datatype=s.DOUBLE,
                    )
                    v = values.get((p.equipment, p.sensor))
                    if v is None:
                        m.is_null = True
                    else:
                        m.double_value = round(v, p.decimals)
                    m.properties.keys.append("engUnit")
                    m.properties.values.add(type=s.STRING, string_value=p.unit)
                self.client.publish(self.topic("DBIRTH", device), db.SerializeToString(), 0)
        return ts

    def data(self, p: SensorProfile, value: float, ts_ms: int) -> bool:
        if p.equipment in self.dead_devices:
            return False
        with self.lock:
            d = s.Payload(timestamp=ts_ms, seq=self._next_seq())
            d.metrics.add(
                alias=self.aliases[(p.equipment, p.sensor)],
                timestamp=ts_ms,
                double_value=round(value, p.decimals),
            )
            self.client.publish(self.topic("DDATA", p.equipment), d.SerializeToString(), 0)
        return True

    def ddeath(self, device: str) -> None:
        with self.lock:
            d = s.Payload(timestamp=_ms(), seq=self._next_seq())
            self.client.publish(self.topic("DDEATH", device), d.SerializeToString(), 0)
            self.dead_devices.add(device)

    def ndeath(self) -> None:
        """NDEATH, then a clean disconnect (tck-id-operational-behavior-edge-node-
        intentional-disconnect-ndeath)."""
        info = self.client.publish(self.topic("NDEATH"), self._death(), 1)
        info.wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


def run_sparkplug(
    broker: Broker,
    *,
    duration: float | None = None,
    speed: float = 1.0,
    seed: int | str = 0,
    injections: Iterable[Injection] = (),
    ddeath_at: float | None = None,
    ddeath_device: str = "device-003",
    ndeath_at: float | None = None,
    bdseq: int = 0,
    profiles: Iterable[SensorProfile] = SEED_PLANT,
    on_event: Callable[[AnomalyEvent], None] | None = None,
    stop: threading.Event | None = None,
) -> SparkplugResult:
    """Run the plant as edge nodes until `duration` simulated seconds, `stop`, an NDEATH
    (`ndeath_at`) or Ctrl-C."""
    if speed <= 0:
        raise ValueError("speed must be > 0")
    plant = Plant(profiles, seed=seed, anomalies=AnomalyConfig(), injections=injections)
    by_line: dict[str, list[SensorProfile]] = {}
    for p in plant.profiles:
        by_line.setdefault(p.line, []).append(p)
    nodes = {
        line: EdgeNode(line, f"edge-{line}", ps, broker, bdseq=bdseq)
        for line, ps in by_line.items()
    }
    result = SparkplugResult(nodes=len(nodes))
    for n in nodes.values():
        n.connect(broker.connect_timeout_s)
    last: dict[tuple[str, str], float] = {}
    t0 = time.monotonic()
    for n in nodes.values():
        n.birth(last)
        result.births += 1
    ended = False
    try:
        while not ended:
            sim_now = (time.monotonic() - t0) * speed
            limit = sim_now if duration is None else min(sim_now, duration)
            for r in plant.readings_until(limit):
                p = r.profile
                last[(p.equipment, p.sensor)] = r.value
                if nodes[p.line].data(p, r.value, _ms()):
                    result.readings += 1
                    result.data_messages += 1
            if on_event is not None:
                for ev in plant.drain_events():
                    on_event(ev)
            for n in nodes.values():
                if n.rebirth_wanted.is_set():
                    n.rebirth_wanted.clear()
                    n.birth(last)
                    result.births += 1
                    result.rebirths += 1
            if ddeath_at is not None and sim_now >= ddeath_at:
                ddeath_at = None
                for n in nodes.values():
                    if any(p.equipment == ddeath_device for p in n.profiles):
                        n.ddeath(ddeath_device)
                        result.deaths += 1
            if ndeath_at is not None and sim_now >= ndeath_at:
                for n in nodes.values():
                    n.ndeath()
                    result.deaths += 1
                ended = True
                break
            if (duration is not None and sim_now >= duration) or (
                stop is not None and stop.is_set()
            ):
                break
            nxt = plant.next_time() if duration is None else min(plant.next_time(), duration)
            wait = nxt / speed - (time.monotonic() - t0)
            time.sleep(min(max(wait, 0.0), 0.05))
    except KeyboardInterrupt:
        pass
    if not ended:  # an edge node says NDEATH before it disconnects
        for n in nodes.values():
            n.ndeath()
            result.deaths += 1
    result.elapsed_s = time.monotonic() - t0
    return result
