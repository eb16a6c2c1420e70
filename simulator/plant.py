"""The simulated plant: every profile at its own period, with anomalies (pure, no I/O).

Time is simulated seconds since start; the caller decides how that maps to the
wall clock (the MQTT publisher runs it at ``--speed`` times real time). Series
``i`` reads at ``0, period, 2*period, ...``; readings come out in time order.

>>> plant = Plant(seed=1)
>>> [(r.t, r.profile.key) for r in plant.readings_until(1.0)][:3]
[(0.0, 'device-001/temperature'), (0.0, 'device-002/pressure'), (0.0, 'device-003/vibration')]
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from simulator.anomalies import AnomalyConfig, AnomalyEvent, AnomalyInjector, Injection
from simulator.profiles import SEED_PLANT, SensorProfile, ValueGenerator


@dataclass(frozen=True, slots=True)
class SimReading:
    """One reading to publish: simulated time, series, value, anomaly kind if any."""

    t: float
    profile: SensorProfile
    value: float
    anomaly: str | None = None


class Plant:
    """Schedules readings of all profiles and runs them through an `AnomalyInjector`."""

    def __init__(
        self,
        profiles: Iterable[SensorProfile] = SEED_PLANT,
        *,
        seed: int | str = 0,
        anomalies: AnomalyConfig | None = None,
        injections: Iterable[Injection] = (),
    ) -> None:
        self.profiles = tuple(profiles)
        if not self.profiles:
            raise ValueError("a plant needs at least one profile")
        injections = tuple(injections)
        known = {(p.equipment, p.sensor) for p in self.profiles}
        for inj in injections:
            if inj.sensor is None:
                ok = any(eq == inj.equipment for eq, _ in known)
            else:
                ok = (inj.equipment, inj.sensor) in known
            if not ok:
                where = inj.equipment + (f"/{inj.sensor}" if inj.sensor else "")
                raise ValueError(f"injection targets unknown series {where}")
        self._gens = [ValueGenerator(p, seed) for p in self.profiles]
        self.injector = AnomalyInjector(anomalies or AnomalyConfig(), seed, injections)
        # (next reading time, series index, reading number): integer counts avoid float drift.
        self._heap = [(0.0, i, 0) for i in range(len(self.profiles))]
        heapq.heapify(self._heap)

    def next_time(self) -> float:
        """Simulated time of the next scheduled reading."""
        return self._heap[0][0]

    def readings_until(self, t_end: float) -> Iterator[SimReading]:
        """Yield every reading scheduled at or before `t_end` not yet produced.

        Readings suppressed by a dropout are skipped (not yielded).
        """
        heap = self._heap
        apply = self.injector.apply
        while heap[0][0] <= t_end:
            t, i, n = heap[0]
            p = self.profiles[i]
            heapq.heapreplace(heap, ((n + 1) * p.period_s, i, n + 1))
            value, kind = apply(t, p, self._gens[i].next())
            if value is not None:
                yield SimReading(t, p, value, kind)

    def drain_events(self) -> list[AnomalyEvent]:
        """Anomaly events since the last call (started anomalies, ended dropouts)."""
        events = self.injector.events[:]
        self.injector.events.clear()
        return events
