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

_Core: Any = None
try:  # river's own ADWIN core (Rust), which `river.drift.ADWIN` wraps
    from river._river_rust.drift import AdaptiveWindowing

    _Core = AdaptiveWindowing
except ImportError:  # another river layout: the public class (its import costs more)
    pass

# ADWIN's parameters beside delta and clock: river's defaults
_MAX_BUCKETS, _MIN_WINDOW, _GRACE = 5, 5, 10


class _PublicCore:
    """`river.drift.ADWIN` behind the core's interface, where the core cannot be imported."""

    __slots__ = ("_ad",)

    def __init__(self, delta: float, clock: int, *_: int) -> None:
        from river.drift import ADWIN

        self._ad = ADWIN(delta=delta, clock=clock)

    def update(self, x: float) -> bool:
        self._ad.update(x)
        return bool(self._ad.drift_detected)

    def get_total(self) -> float:
        return float(self._ad.total)

    def get_width(self) -> int:
        return int(self._ad.width)


class LevelShift:
    """ADWIN on one series' values (river's ADWIN: its core, restarted after a detection
    as `river.drift.ADWIN` does). `river.drift` itself is not imported: its package pulls
    in numpy and scipy, ~110 MB of RSS per gateway process for classes it does not use."""

    __slots__ = ("_adwin", "_before", "_detected", "clock", "delta", "gate", "n", "warmup")

    def __init__(
        self, delta: float = 0.002, clock: int = 32, gate: float = 1.0, warmup: int = 300
    ) -> None:
        self.delta = delta
        self.clock = clock
        self.gate = gate
        self.warmup = warmup
        self.n = 0
        self._before = 0.0  # ADWIN's level just before its last check
        self._detected = False
        self._adwin = self._new()

    def _new(self) -> Any:
        core = _Core if _Core is not None else _PublicCore
        return core(self.delta, self.clock, _MAX_BUCKETS, _MIN_WINDOW, _GRACE)

    @property
    def level(self) -> float:
        """ADWIN's estimate of the current level (the mean of its window)."""
        ad = self._adwin
        width = ad.get_width()
        return float(ad.get_total()) / width if width else 0.0

    def update(self, x: float) -> bool:
        """Learn `x`; True if ADWIN found a change now and the series is warm.

        Whether it counts is `gated`'s to say (the caller's baseline is only looked
        up then: this is the per-reading path, one ADWIN update and two compares).
        """
        if self._detected:  # as river's ADWIN: a new window after a detection
            self._adwin = self._new()
            self._detected = False
        n = self.n + 1
        if n % self.clock == 0:  # ADWIN checks on this update: its level before it
            self._before = self.level
        detected = self._detected = self._adwin.update(x)
        self.n = n
        return n >= self.warmup and detected

    def gated(self, std: float) -> tuple[float, float] | None:
        """(level before, level after) if the level moved by at least `gate` stds."""
        after = self.level
        before = self._before
        if abs(after - before) < self.gate * std:
            return None
        return before, after

    def to_state(self) -> dict[str, Any]:
        adwin = base64.b64encode(pickle.dumps(self._adwin)).decode()
        return {"n": self.n, "before": self._before, "detected": self._detected, "adwin": adwin}

    def load_state(self, st: dict[str, Any]) -> None:
        """Inverse of `to_state`. A window of another river version (or damaged) is not
        fatal: that series' drift detection starts a new window."""
        self.n = int(st["n"])
        self._before = float(st.get("before", 0.0))
        self._detected = bool(st.get("detected", False))
        try:
            ad = pickle.loads(base64.b64decode(st["adwin"]))  # our own state file
        except Exception:
            ad = None
        if ad is None or not isinstance(ad, type(self._adwin)):
            self._adwin, self._detected = self._new(), False
            return
        self._adwin = ad
