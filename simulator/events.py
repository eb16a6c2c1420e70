"""Production events of the seed plant (SPEC §4 "Production events").

`EventGenerator` is pure and deterministic for a seed: every machine finishes a
cycle every ``cycle_s`` (±20 %) and reports one event with its duration and defect
count (mostly 0, sometimes -1 = unknown). Like a PLC bridge after a reconnect it
also resends some events unchanged (duplicates, a few seconds later) and corrects
some later (updates: same id, different defect count, 5-30 s later).

`run_events` publishes them over MQTT in (scaled) real time, one event per message,
to ``{prefix}/{factory}/{line}/{machine}/events`` — the topic the gateway's
``format = "event"`` subscription with template
``factory/{factory}/{line}/{equipment}/events`` expects.

>>> gen = EventGenerator(seed=1, start_ms=1_767_225_600_000)
>>> first = gen.events_until(60.0)[0]
>>> first.kind, first.topic
('new', 'factory/F01/line-2/fermenter-1/events')
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from simulator.mqtt import Broker, _Session


@dataclass(frozen=True, slots=True)
class Machine:
    """A machine that reports production events."""

    factory: str
    line: str
    machine: str
    cycle_s: float = 30.0
    defect_p: float = 0.05  # probability that a cycle has defects (1-3 of them)


# The seed plant's equipment as producing machines (SPEC §5 table), factory F01.
SEED_MACHINES: tuple[Machine, ...] = (
    Machine("F01", "line-1", "device-001", 20.0, 0.03),
    Machine("F01", "line-1", "device-002", 25.0, 0.05),
    Machine("F01", "line-1", "device-003", 15.0, 0.02),
    Machine("F01", "line-1", "device-004", 30.0, 0.04),
    Machine("F01", "line-1", "device-005", 30.0, 0.10),
    Machine("F01", "line-2", "fermenter-1", 60.0, 0.08),
)

NEW, DUPLICATE, UPDATE = "new", "duplicate", "update"


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One message to publish at simulated time `t` (seconds since start)."""

    t: float
    topic: str
    payload: dict[str, Any]
    kind: str  # NEW, DUPLICATE or UPDATE

    def body(self) -> bytes:
        return orjson.dumps(self.payload)


class EventGenerator:
    """Deterministic event stream: `events_until(t)` returns the next events in time order."""

    def __init__(
        self,
        machines: Iterable[Machine] = SEED_MACHINES,
        *,
        seed: int | str = 0,
        start_ms: int | None = None,
        duplicate_rate: float = 0.05,
        update_rate: float = 0.02,
        unknown_rate: float = 0.01,
        topic_prefix: str = "factory",
    ) -> None:
        self.machines = tuple(machines)
        if not self.machines:
            raise ValueError("at least one machine is needed")
        for name, p in (
            ("duplicate_rate", duplicate_rate),
            ("update_rate", update_rate),
            ("unknown_rate", unknown_rate),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self._rnd = random.Random(f"{seed}/events")
        self.start_ms = time.time_ns() // 1_000_000 if start_ms is None else start_ms
        self.duplicate_rate = duplicate_rate
        self.update_rate = update_rate
        self.unknown_rate = unknown_rate
        self.prefix = topic_prefix
        self._seq = 0
        # (time, tie-breaker, machine index or -1 for a scheduled resend, resend event)
        self._heap: list[tuple[float, int, int, SimEvent | None]] = []
        for i, m in enumerate(self.machines):
            self._push(self._rnd.uniform(0.0, m.cycle_s), i, None)

    def _push(self, t: float, machine: int, ev: SimEvent | None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, machine, ev))

    def _defects(self, m: Machine) -> int:
        r = self._rnd.random()
        if r < self.unknown_rate:
            return -1
        if r < self.unknown_rate + m.defect_p:
            return self._rnd.randint(1, 3)
        return 0

    def events_until(self, t_end: float) -> list[SimEvent]:
        """Every message with simulated time < `t_end` not returned before."""
        out: list[SimEvent] = []
        rnd = self._rnd
        while self._heap and self._heap[0][0] < t_end:
            t, _, idx, resend = heapq.heappop(self._heap)
            if resend is not None:
                out.append(SimEvent(t, resend.topic, resend.payload, resend.kind))
                continue
            m = self.machines[idx]
            duration = m.cycle_s * rnd.uniform(0.8, 1.2)
            defects = self._defects(m)
            payload: dict[str, Any] = {
                "event_id": f"{m.machine}-{self._seq:08d}",
                "event_time": self.start_ms + round(t * 1000),
                "machine_id": m.machine,
                "line_id": m.line,
                "factory_id": m.factory,
                "duration_ms": round(duration * 1000),
                "defect_count": defects,
            }
            topic = f"{self.prefix}/{m.factory}/{m.line}/{m.machine}/events"
            ev = SimEvent(t, topic, payload, NEW)
            out.append(ev)
            if rnd.random() < self.duplicate_rate:
                self._push(t + rnd.uniform(0.5, 5.0), -1, SimEvent(t, topic, payload, DUPLICATE))
            if rnd.random() < self.update_rate:
                fixed = {**payload, "defect_count": max(0, defects) + 1}
                self._push(t + rnd.uniform(5.0, 30.0), -1, SimEvent(t, topic, fixed, UPDATE))
            self._push(t + duration, idx, None)
        return out


@dataclass(frozen=True, slots=True)
class EventsResult:
    """Totals of one `run_events` call, by kind."""

    new: int
    duplicates: int
    updates: int
    elapsed_s: float

    def summary_line(self) -> str:
        return (
            f"sent {self.new} events, {self.duplicates} duplicates, {self.updates} updates "
            f"in {self.elapsed_s:.1f} s"
        )


def run_events(
    broker: Broker | None = None,
    *,
    duration: float | None = None,
    speed: float = 1.0,
    seed: int | str = 0,
    duplicate_rate: float = 0.05,
    update_rate: float = 0.02,
    unknown_rate: float = 0.01,
    machines: Iterable[Machine] = SEED_MACHINES,
    topic_prefix: str = "factory",
    qos: int = 1,
    stop: threading.Event | None = None,
) -> EventsResult:
    """Publish the seed plant's events at `speed` x real time until `duration` (wall
    seconds), `stop` or Ctrl-C. Raises ConnectionError if the broker is unreachable."""
    if speed <= 0:
        raise ValueError("speed must be > 0")
    gen = EventGenerator(
        machines,
        seed=seed,
        duplicate_rate=duplicate_rate,
        update_rate=update_rate,
        unknown_rate=unknown_rate,
        topic_prefix=topic_prefix,
    )
    session = _Session(broker or Broker(), "edge-sim-events")
    session.connect(stop)
    counts = {NEW: 0, DUPLICATE: 0, UPDATE: 0}
    sent = 0
    t0 = time.monotonic()
    try:
        while True:
            elapsed = time.monotonic() - t0
            if (duration is not None and elapsed >= duration) or (
                stop is not None and stop.is_set()
            ):
                break
            for ev in gen.events_until(elapsed * speed):
                session.client.publish(ev.topic, ev.body(), qos=qos)
                counts[ev.kind] += 1
                sent += 1
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        session.drain(sent, 5.0)
        session.close()
    return EventsResult(counts[NEW], counts[DUPLICATE], counts[UPDATE], time.monotonic() - t0)
