"""Equipment profiles of the seed plant and their value generators (pure, no I/O).

The seed plant is the reference table of SPEC §5. Devices sit on line ``line-1``,
the fermenter on line ``line-2``; topics are ``{prefix}/{line}/{equipment}/{sensor}``.

A `ValueGenerator` produces a slowly wandering value inside the profile's normal
band: a mean-reverting random walk (Ornstein-Uhlenbeck style) around the middle
of the band plus white measurement noise, clamped to the band. It is seeded per
series, so a series' sequence depends only on the seed and its own name.

>>> gen = ValueGenerator(profile("device-001", "temperature"), seed=7)
>>> all(20.0 <= gen.next() <= 80.0 for _ in range(1000))
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Shape of the normal signal, as fractions of the band width (high - low).
WALK_STEP = 0.01  # std of one random-walk step of the underlying level
MEAN_REVERSION = 0.02  # fraction of the distance to mid-band recovered per reading
LEVEL_MARGIN = 0.1  # the level stays this far inside the band
NOISE = 0.01  # std of the measurement noise added to the level


@dataclass(frozen=True, slots=True)
class SensorProfile:
    """One simulated series: where it is published, its normal band and alert limits."""

    line: str
    equipment: str
    sensor: str
    unit: str
    low: float
    high: float
    period_s: float
    alert_high: float | None = None
    alert_low: float | None = None
    decimals: int = 2

    @property
    def mid(self) -> float:
        return (self.low + self.high) / 2.0

    @property
    def span(self) -> float:
        return self.high - self.low

    @property
    def noise_sigma(self) -> float:
        """Std of the white noise on top of the wandering level."""
        return self.span * NOISE

    @property
    def key(self) -> str:
        """``equipment/sensor``, the series identity."""
        return f"{self.equipment}/{self.sensor}"

    def topic(self, prefix: str = "plant") -> str:
        """``{prefix}/{line}/{equipment}/{sensor}``."""
        return f"{prefix}/{self.line}/{self.equipment}/{self.sensor}"


# SPEC §5 "Example reference values for the simulator and tests (seed plant)".
SEED_PLANT: tuple[SensorProfile, ...] = (
    SensorProfile("line-1", "device-001", "temperature", "celsius", 20, 80, 2, 85, 15),
    SensorProfile("line-1", "device-002", "pressure", "psi", 10, 50, 3, 55, 5),
    SensorProfile("line-1", "device-003", "vibration", "hz", 0, 100, 1, 120, None),
    SensorProfile(
        "line-1", "device-004", "production_rate", "units_per_hour", 100, 500, 5, None, 50, 1
    ),
    SensorProfile("line-1", "device-005", "quality", "percent", 85, 100, 4, None, 80),
    SensorProfile("line-2", "fermenter-1", "temperature", "celsius", 35, 40, 1, 45, None),
    SensorProfile("line-2", "fermenter-1", "ph", "ph", 6.5, 7.5, 1, None, None, 3),
    SensorProfile("line-2", "fermenter-1", "agitator_rpm", "rpm", 300, 600, 1, None, None, 1),
)


def profile(
    equipment: str, sensor: str, profiles: tuple[SensorProfile, ...] = SEED_PLANT
) -> SensorProfile:
    """Look up one profile by equipment and sensor; `KeyError` if absent."""
    for p in profiles:
        if p.equipment == equipment and p.sensor == sensor:
            return p
    raise KeyError(f"{equipment}/{sensor}")


def series_rng(seed: int | str, purpose: str, key: str) -> random.Random:
    """A `random.Random` for one series and purpose, reproducible across runs.

    String seeds are hashed with SHA-512 by `random.Random`, not with the
    per-process `hash()`, so the sequence is stable between interpreters.
    """
    return random.Random(f"{seed}:{purpose}:{key}")


class ValueGenerator:
    """Normal (anomaly-free) values of one series; see the module docstring."""

    __slots__ = ("_gauss", "_hi", "_level", "_lo", "profile")

    def __init__(self, profile: SensorProfile, seed: int | str = 0) -> None:
        self.profile = profile
        rng = series_rng(seed, "value", profile.key)
        self._gauss = rng.gauss
        margin = profile.span * LEVEL_MARGIN
        self._lo = profile.low + margin
        self._hi = profile.high - margin
        # Start somewhere in the middle half of the band.
        self._level = profile.mid + rng.uniform(-0.25, 0.25) * profile.span

    def next(self) -> float:
        """The next reading, always within [low, high]."""
        p = self.profile
        span = p.span
        level = self._level
        level += MEAN_REVERSION * (p.mid - level) + self._gauss(0.0, WALK_STEP * span)
        level = min(max(level, self._lo), self._hi)
        self._level = level
        value = level + self._gauss(0.0, NOISE * span)
        return min(max(value, p.low), p.high)
