"""Lasting level shifts of one series: river's ADWIN on the raw values, gated by size.

ADWIN keeps a window of recent values and drops its older part when the two parts'
means differ with confidence `delta`; every `clock` readings it checks. On real data
(a pump at 1 Hz) it also fires on changes far smaller than the sensor's own noise,
so a detection counts only once the series is warm (`warmup` readings) and the level
moved by at least `gate` times the caller's baseline std. What counts is a changepoint:
the z-score restarts its baseline at the new level and the equipment's episode alert
is raised (kind ``drift``) or escalated.

>>> import random
>>> rng = random.Random(7)
>>> ls = LevelShift(warmup=100)
>>> found = []
>>> for i in range(600):
...     x = rng.gauss(10.0 if i < 300 else 14.0, 1.0)
...     if ls.update(x):
...         shift = ls.gated(std=1.0)  # in the caller's baseline stds
...         if shift is not None:
...             found.append((i, round(shift[0], 1), round(shift[1], 1)))
>>> len(found), 300 <= found[0][0] < 400  # one detection, soon after the step
(1, True)
>>> found[0][1:]  # ADWIN's level before and after (its window still mixes both)
(10.3, 12.7)

State is river's own object, pickled for the snapshot (~1.6 KB at a 3,000-reading
window; ~0.3 KB in memory); ~0.13 µs per update.
"""

from __future__ import annotations

import base64
import pickle
from typing import Any

from river import drift


class LevelShift:
    __slots__ = ("_adwin", "_before", "clock", "delta", "gate", "n", "warmup")

    def __init__(
        self, delta: float = 0.002, clock: int = 32, gate: float = 1.0, warmup: int = 300
    ) -> None:
        self.delta = delta
        self.clock = clock
        self.gate = gate
        self.warmup = warmup
        self.n = 0
        self._before = 0.0  # ADWIN's level just before its last check
        self._adwin = drift.ADWIN(delta=delta, clock=clock)

    @property
    def level(self) -> float:
        """ADWIN's estimate of the current level (the mean of its window)."""
        return float(self._adwin.estimation)

    def update(self, x: float) -> bool:
        """Learn `x`; True if ADWIN found a change now and the series is warm.

        Whether it counts is `gated`'s to say (the caller's baseline is only looked
        up then: this is the per-reading path, one ADWIN update and two compares).
        """
        ad = self._adwin
        n = self.n + 1
        if n % self.clock == 0:  # ADWIN checks on this update: its level before it
            self._before = ad.estimation
        ad.update(x)
        self.n = n
        return n >= self.warmup and ad.drift_detected

    def gated(self, std: float) -> tuple[float, float] | None:
        """(level before, level after) if the level moved by at least `gate` stds."""
        after = float(self._adwin.estimation)
        before = self._before
        if abs(after - before) < self.gate * std:
            return None
        return before, after

    def to_state(self) -> dict[str, Any]:
        adwin = base64.b64encode(pickle.dumps(self._adwin)).decode()
        return {"n": self.n, "before": self._before, "adwin": adwin}

    def load_state(self, st: dict[str, Any]) -> None:
        """Inverse of `to_state`; raises ValueError on anything else."""
        try:
            ad = pickle.loads(base64.b64decode(st["adwin"]))  # our own state file
        except Exception as e:  # a state file of another river version, or damaged
            raise ValueError(f"drift state unreadable: {type(e).__name__}") from None
        if not isinstance(ad, drift.ADWIN):
            raise ValueError("drift state is not an ADWIN")
        self._adwin = ad
        self.n = int(st["n"])
        self._before = float(st.get("before", ad.estimation))
