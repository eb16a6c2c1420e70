"""Anomaly injection (pure, seeded, no I/O).

Kinds:

- ``spike``: one reading far outside the normal band, past the profile's alert
  threshold (upward past ``alert_high``, else downward past ``alert_low``, else
  above the band), always more than 10 noise-sigma away from the band.
- ``drift``: a linear ramp over ``drift_readings`` readings from the current
  value to a spike-sized value past the threshold; then the series returns to normal.
- ``stuck``: the last value repeated for ``stuck_readings`` readings.
- ``dropout``: the whole equipment goes silent for ``dropout_s`` simulated seconds
  (default 45, longer than the gateway's ``offline_after_s`` = 30), then resumes.

Anomalies start either at random, with probability ``rate`` per normal reading,
or on purpose through an `Injection` such as ``spike:device-001:temperature@20``
(kind, equipment, optional sensor, simulated second). An injection fires at the
first reading of the series at or after that second; without a sensor it applies
to every sensor of the equipment (a dropout always silences the whole equipment).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from simulator.profiles import SensorProfile

SPIKE = "spike"
DRIFT = "drift"
STUCK = "stuck"
DROPOUT = "dropout"
KINDS: tuple[str, ...] = (SPIKE, DRIFT, STUCK, DROPOUT)

SPIKE_MARGIN = 0.25  # a spike lands this fraction of the band width past the threshold


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    """How random anomalies are drawn and how long each kind lasts."""

    rate: float = 0.0
    kinds: tuple[str, ...] = KINDS
    drift_readings: int = 20
    stuck_readings: int = 20
    dropout_s: float = 45.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"anomaly rate must be within [0, 1], got {self.rate}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or (self.rate > 0 and not self.kinds):
            raise ValueError(f"unknown anomaly kinds {bad}; choose from {', '.join(KINDS)}")
        if self.drift_readings < 1 or self.stuck_readings < 1 or self.dropout_s <= 0:
            raise ValueError("anomaly durations must be positive")


@dataclass(frozen=True, slots=True)
class Injection:
    """A deliberate anomaly: ``KIND:EQUIPMENT[:SENSOR]@SECONDS``."""

    kind: str
    equipment: str
    sensor: str | None
    at_s: float

    @classmethod
    def parse(cls, spec: str) -> Injection:
        """Parse ``spike:device-001:temperature@20`` or ``dropout:device-003@10``.

        >>> Injection.parse("spike:device-001:temperature@20")
        Injection(kind='spike', equipment='device-001', sensor='temperature', at_s=20.0)
        >>> Injection.parse("dropout:fermenter-1@5.5").sensor is None
        True
        """
        head, sep, at = spec.rpartition("@")
        parts = head.split(":") if sep else []
        if not sep or len(parts) not in (2, 3) or not all(parts):
            raise ValueError(
                f"bad injection {spec!r}: expected KIND:EQUIPMENT[:SENSOR]@SECONDS, "
                "e.g. spike:device-001:temperature@20"
            )
        if parts[0] not in KINDS:
            raise ValueError(f"bad injection {spec!r}: kind must be one of {', '.join(KINDS)}")
        try:
            at_s = float(at)
        except ValueError:
            raise ValueError(f"bad injection {spec!r}: {at!r} is not a number of seconds") from None
        if not at_s >= 0:
            raise ValueError(f"bad injection {spec!r}: time must be >= 0")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None, at_s)


@dataclass(frozen=True, slots=True)
class AnomalyEvent:
    """An anomaly started (``phase="start"``) or a dropout ended (``"end"``)."""

    t: float
    kind: str
    equipment: str
    sensor: str | None
    phase: str = "start"
    value: float | None = None


def spike_value(profile: SensorProfile, rng: random.Random) -> float:
    """A value past the alert threshold (see the module docstring), rounded."""
    margin = SPIKE_MARGIN * profile.span * rng.uniform(1.0, 1.5)
    if profile.alert_high is not None:
        value = max(profile.alert_high, profile.high) + margin
    elif profile.alert_low is not None:
        threshold = min(profile.alert_low, profile.low)
        if profile.low >= 0 and threshold > 0:
            # Keep physically non-negative quantities non-negative.
            margin = min(margin, 0.8 * threshold)
        value = threshold - margin
    else:
        value = profile.high + margin
    return round(value, profile.decimals)


@dataclass(slots=True)
class _Active:
    kind: str
    remaining: int
    start: float = 0.0
    step: float = 0.0
    done: int = 0


@dataclass(slots=True)
class AnomalyInjector:
    """Applies anomalies to a plant's readings; one instance per plant.

    Call `apply` once per scheduled reading, in time order. It returns the value
    to publish (``None`` while the equipment is silent) and the anomaly kind
    affecting this reading (``None`` for a normal reading). Started anomalies and
    ended dropouts are appended to `events`.
    """

    config: AnomalyConfig = field(default_factory=AnomalyConfig)
    seed: int | str = 0
    injections: tuple[Injection, ...] = ()
    events: list[AnomalyEvent] = field(default_factory=list)
    _rngs: dict[str, random.Random] = field(default_factory=dict)
    _active: dict[str, _Active] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)
    _silent_until: dict[str, float] = field(default_factory=dict)
    _pending: list[Injection] = field(default_factory=list)
    _fired: set[tuple[int, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._pending = sorted(self.injections, key=lambda i: i.at_s)

    def _rng(self, profile: SensorProfile) -> random.Random:
        rng = self._rngs.get(profile.key)
        if rng is None:
            rng = random.Random(f"{self.seed}:anomaly:{profile.key}")
            self._rngs[profile.key] = rng
        return rng

    def apply(
        self, t: float, profile: SensorProfile, value: float
    ) -> tuple[float | None, str | None]:
        """Return ``(value or None if silent, anomaly kind or None)``."""
        eq = profile.equipment
        until = self._silent_until.get(eq)
        if until is not None:
            if t < until:
                return None, DROPOUT
            del self._silent_until[eq]
            self.events.append(AnomalyEvent(t, DROPOUT, eq, None, "end"))
        key = profile.key
        active = self._active.get(key)
        if active is not None:
            return self._continue(key, active, profile), active.kind
        kind = self._due_injection(t, profile)
        if kind is None and self.config.rate > 0:
            rng = self._rng(profile)
            if rng.random() < self.config.rate:
                kind = rng.choice(self.config.kinds)
        if kind is None:
            self._last[key] = value
            return value, None
        return self._start(t, kind, profile, value), kind

    def _due_injection(self, t: float, profile: SensorProfile) -> str | None:
        for i, inj in enumerate(self._pending):
            if inj.at_s > t:
                break
            if inj.equipment != profile.equipment or inj.sensor not in (None, profile.sensor):
                continue
            # Equipment-wide injections fire once per sensor, dropouts once per equipment.
            tag = profile.equipment if inj.kind == DROPOUT else profile.key
            if (i, tag) in self._fired:
                continue
            self._fired.add((i, tag))
            return inj.kind
        return None

    def _start(self, t: float, kind: str, profile: SensorProfile, value: float) -> float | None:
        cfg = self.config
        key = profile.key
        if kind == DROPOUT:
            self._silent_until[profile.equipment] = t + cfg.dropout_s
            self.events.append(AnomalyEvent(t, kind, profile.equipment, None))
            return None
        if kind == SPIKE:
            out = spike_value(profile, self._rng(profile))
        elif kind == DRIFT:
            target = spike_value(profile, self._rng(profile))
            step = (target - value) / cfg.drift_readings
            active = _Active(kind, cfg.drift_readings - 1, start=value, step=step, done=1)
            out = value + step
            if active.remaining > 0:
                self._active[key] = active
        else:  # STUCK
            out = self._last.get(key, value)
            if cfg.stuck_readings > 1:
                self._active[key] = _Active(kind, cfg.stuck_readings - 1, start=out)
        self.events.append(AnomalyEvent(t, kind, profile.equipment, profile.sensor, value=out))
        return out

    def _continue(self, key: str, active: _Active, profile: SensorProfile) -> float:
        active.remaining -= 1
        if active.remaining <= 0:
            del self._active[key]
        if active.kind == DRIFT:
            active.done += 1
            return active.start + active.step * active.done
        return active.start
