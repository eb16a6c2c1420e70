"""MQTT publishers: the seed plant in real time (`run_plant`) and load mode (`run_load`).

Both use paho-mqtt 2.x with its network thread (`loop_start`), MQTT 3.1.1, a clean
session and a unique client id. Both stop on `duration`/`count`, on a set `stop`
event, or on Ctrl-C (KeyboardInterrupt in the calling thread): they then wait a
moment for outstanding QoS 1 acknowledgements, disconnect and return totals.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulator.anomalies import AnomalyConfig, AnomalyEvent, Injection
from simulator.payload import MsClock, load_topics, reading_payload
from simulator.plant import Plant
from simulator.profiles import SEED_PLANT, SensorProfile

LOAD_LOW, LOAD_HIGH = 20.0, 80.0  # load values are uniform in this band: never a 3-sigma outlier
SLICE_S = 0.005  # load pacing granularity


@dataclass(frozen=True, slots=True)
class Broker:
    """Where and how to connect."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    keepalive: int = 30
    connect_timeout_s: float = 10.0


class _Session:
    """A connected paho client plus publish-acknowledgement bookkeeping."""

    def __init__(self, broker: Broker, default_id: str) -> None:
        cid = broker.client_id or f"{default_id}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311, clean_session=True
        )
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        self.client.max_inflight_messages_set(200)
        self.client.reconnect_delay_set(1, 5)
        self.acked = 0  # messages published (QoS 0) or acknowledged (QoS 1/2)
        self.last_ack = time.monotonic()
        self._connected = threading.Event()
        self._refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.broker = broker

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        else:
            self._connected.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.acked += 1
        self.last_ack = time.monotonic()

    def connect(self, stop: threading.Event | None) -> None:
        """Connect (retrying until `connect_timeout_s`) or raise `ConnectionError`."""
        b = self.broker
        self.client.connect_async(b.host, b.port, b.keepalive)
        self.client.loop_start()
        deadline = time.monotonic() + b.connect_timeout_s
        while not self._connected.wait(0.05):
            why = None
            if self._refused:
                why = f"broker refused the connection: {self._refused}"
            elif time.monotonic() >= deadline:
                why = f"no answer within {b.connect_timeout_s:g} s"
            elif stop is not None and stop.is_set():
                why = "stopped before connecting"
            if why:
                self.client.loop_stop()
                raise ConnectionError(f"cannot connect to MQTT broker {b.host}:{b.port}: {why}")

    def drain(self, sent: int, timeout_s: float) -> None:
        """Wait until `sent` messages are acknowledged or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while self.acked < sent and time.monotonic() < deadline:
            time.sleep(0.002)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------------------- load mode


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Totals of one load run; `rate` is readings per second over `elapsed_s`.

    `elapsed_s` runs from the first publish to the last acknowledgement (QoS 1/2)
    or the last message written to the socket (QoS 0).
    """

    readings: int
    messages: int
    acked_messages: int
    batch: int
    series: int
    qos: int
    elapsed_s: float
    target_rate: float | None
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.readings / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def unacked_messages(self) -> int:
        return self.messages - self.acked_messages

    def summary_line(self) -> str:
        """``sent 100000 readings in 4.02 s = 24875 readings/s (1000 msgs, batch 100)``."""
        line = (
            f"sent {self.readings} readings in {self.elapsed_s:.2f} s = "
            f"{self.rate:.0f} readings/s ({self.messages} msgs, batch {self.batch})"
        )
        if self.unacked_messages:
            line += f", {self.unacked_messages} msgs unacknowledged"
        if self.interrupted:
            line += ", interrupted"
        return line

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rate"] = round(self.rate, 1)
        d["elapsed_s"] = round(self.elapsed_s, 4)
        return d


def run_load(
    host: str = "127.0.0.1",
    port: int = 1883,
    rate: float | None = 10_000.0,
    batch: int = 1,
    series: int = 100,
    count: int | None = None,
    qos: int = 1,
    *,
    duration: float | None = None,
    topic_prefix: str = "plant",
    seed: int = 0,
    broker: Broker | None = None,
    max_pending: int = 2_000,
    ack_timeout_s: float = 30.0,
    stop: threading.Event | None = None,
) -> LoadResult:
    """Publish `rate` readings/s in total (None or <= 0: as fast as possible) over
    `series` synthetic series, `batch` readings per message, until `count`
    readings, `duration` seconds, `stop` or Ctrl-C. At most `max_pending`
    messages are unacknowledged at a time, so a slow broker lowers the achieved
    rate instead of filling memory. Raises `ConnectionError` if the broker is
    unreachable. `broker` overrides `host`/`port` and adds credentials.
    """
    if batch < 1 or series < 1 or qos not in (0, 1, 2):
        raise ValueError("batch and series must be >= 1 and qos 0, 1 or 2")
    if count is not None and count < 0:
        raise ValueError("count must be >= 0")
    target = rate if rate is not None and rate > 0 else None
    session = _Session(broker or Broker(host, port), "edge-sim-load")
    session.connect(stop)
    client = session.client
    topics = load_topics(series, topic_prefix)
    clock = MsClock()
    rnd = random.Random(seed).random
    span = LOAD_HIGH - LOAD_LOW
    sent = msgs = 0
    interrupted = False
    t0 = time.monotonic()
    try:
        while count is None or sent < count:
            now = time.monotonic()
            elapsed = now - t0
            if (duration is not None and elapsed >= duration) or (
                stop is not None and stop.is_set()
            ):
                break
            if target is not None and sent > target * elapsed:
                time.sleep(min(SLICE_S, (sent - target * elapsed) / target))
                continue
            if msgs - session.acked >= max_pending:
                time.sleep(0.0005)
                continue
            k = batch if count is None else min(batch, count - sent)
            s = msgs % series
            ts = clock.run(s, k)
            if k == 1:
                body: Any = {"value": round(LOAD_LOW + span * rnd(), 2), "ts": ts[0]}
            else:
                body = [{"value": round(LOAD_LOW + span * rnd(), 2), "ts": t} for t in ts]
            client.publish(topics[s], orjson.dumps(body), qos)
            msgs += 1
            sent += k
    except KeyboardInterrupt:
        interrupted = True
    try:
        session.drain(msgs, 2.0 if interrupted else ack_timeout_s)
    except KeyboardInterrupt:
        interrupted = True
    acked = session.acked
    end = session.last_ack if acked >= msgs and msgs else time.monotonic()
    session.close()
    return LoadResult(
        readings=sent,
        messages=msgs,
        acked_messages=min(acked, msgs),
        batch=batch,
        series=series,
        qos=qos,
        elapsed_s=max(end - t0, 1e-9),
        target_rate=target,
        interrupted=interrupted,
    )


# --------------------------------------------------------------------------- plant mode


@dataclass(frozen=True, slots=True)
class PlantResult:
    """Totals of one plant run (`elapsed_s` is wall time, `sim_s` simulated)."""

    readings: int
    anomalies: int
    acked_messages: int
    elapsed_s: float
    sim_s: float
    interrupted: bool = False

    def summary_line(self) -> str:
        line = (
            f"published {self.readings} readings ({self.anomalies} anomalies injected) "
            f"in {self.elapsed_s:.1f} s"
        )
        if self.acked_messages < self.readings:
            line += f", {self.readings - self.acked_messages} unacknowledged"
        if self.interrupted:
            line += ", interrupted"
        return line

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["elapsed_s"] = round(self.elapsed_s, 3)
        d["sim_s"] = round(self.sim_s, 3)
        return d


def run_plant(
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    topic_prefix: str = "plant",
    seed: int | str = 0,
    anomalies: AnomalyConfig | None = None,
    injections: Iterable[Injection] = (),
    duration: float | None = None,
    qos: int = 1,
    speed: float = 1.0,
    profiles: Iterable[SensorProfile] = SEED_PLANT,
    broker: Broker | None = None,
    on_event: Callable[[AnomalyEvent], None] | None = None,
    stop: threading.Event | None = None,
) -> PlantResult:
    """Publish the plant's profiles at their periods until `duration` simulated
    seconds (None: forever), `stop` or Ctrl-C. `speed` scales simulated time
    against the wall clock (2.0 = twice as fast). Payload ``ts`` is the wall
    clock, so at a high speed a dropout is shorter than the gateway's offline
    timeout in real time. `on_event` sees each started anomaly and ended dropout.
    """
    if speed <= 0:
        raise ValueError("speed must be > 0")
    plant = Plant(profiles, seed=seed, anomalies=anomalies, injections=injections)
    session = _Session(broker or Broker(host, port), "edge-sim")
    session.connect(stop)
    client = session.client
    topics = {p: p.topic(topic_prefix) for p in plant.profiles}
    clock = MsClock()
    published = n_anomalies = 0
    interrupted = False
    sim_now = 0.0
    t0 = time.monotonic()
    try:
        while True:
            sim_now = (time.monotonic() - t0) * speed
            limit = sim_now if duration is None else min(sim_now, duration)
            for r in plant.readings_until(limit):
                p = r.profile
                ts = clock.next(p.key)
                client.publish(topics[p], reading_payload(r.value, ts, p.unit, p.decimals), qos)
                published += 1
            for ev in plant.drain_events():
                if ev.phase == "start":
                    n_anomalies += 1
                if on_event is not None:
                    on_event(ev)
            if (duration is not None and sim_now >= duration) or (
                stop is not None and stop.is_set()
            ):
                break
            nxt = plant.next_time() if duration is None else min(plant.next_time(), duration)
            wait = nxt / speed - (time.monotonic() - t0)
            if wait > 0:
                time.sleep(min(wait, 0.2))
    except KeyboardInterrupt:
        interrupted = True
    try:
        session.drain(published, 5.0)
    except KeyboardInterrupt:
        interrupted = True
    acked = session.acked
    session.close()
    return PlantResult(
        readings=published,
        anomalies=n_anomalies,
        acked_messages=min(acked, published),
        elapsed_s=time.monotonic() - t0,
        sim_s=sim_now if duration is None else min(sim_now, duration),
        interrupted=interrupted,
    )
