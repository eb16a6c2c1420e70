"""One alert per equipment episode, from all its sensors together (kinds ``multivariate``
and ``drift``).

Per sensor: a slow reference (time-weighted mean and variance, time constant
`baseline_s`) and a fast level (`fast_s`); the sensor's departure is
``d = |fast - reference| / reference std``. The equipment's score is the largest
departure of its warm sensors (one max-norm over the joint vector). An episode
starts when that score stayed at or above `on_sigma` for `on_delay_s`, or at once
when a sensor's drift detector found a lasting level shift; it ends when the score
stayed below `off_sigma` for `off_delay_s` (hysteresis on the readings' own time).

While an episode lasts the references do not learn, so the anomaly never becomes
the baseline and the alert clears when the signal is back, not when the baseline
has caught up with it. A further level shift during an episode escalates it. An
episode whose levels have settled (no sensor moved by more than `off_sigma` of its
std) and had no new shift for `accept_s` is a new operating point: the references
jump to the current levels and the alert clears, saying so. A value that keeps
moving away (a slow failure) is never accepted: its alert stays active.

Why these defaults (README "Detection"): 20 minutes of reference against 10 s of
level separates faults (seconds to minutes) from slow warm-ups; 3 and 2 sigma with
5 s / 30 s delays are the usual alarm hysteresis; 300 readings (5 minutes at 1 Hz)
give every sensor a usable std before it is scored.

>>> ep = EquipmentShift(warmup=50, baseline_s=600, fast_s=5, on_delay_s=3, off_delay_s=10)
>>> import random
>>> rng = random.Random(3)
>>> events = []
>>> for t in range(400):
...     for sensor, base in (("pressure", 2.0), ("flow", 30.0)):
...         x = rng.gauss(base, 0.05 * base)
...         if sensor == "flow" and 200 <= t < 260:
...             x -= 9.0  # a partly closed valve for a minute
...         ev = ep.update(t * 10**9, sensor, x)
...         if ev is not None:
...             events.append((t, ev[0], ev[1], ev[3]))
>>> events
[(207, 'raise', 'multivariate', 'flow'), (275, 'clear', 'multivariate', 'flow')]
"""

from __future__ import annotations

import math
from typing import Any

from gateway.core.model import DRIFT, MULTIVARIATE

_exp = math.exp
_sqrt = math.sqrt

# (action "raise" | "escalate" | "clear", kind, severity, sensor, value, message, ts_ns)
Episode = tuple[str, str, str, str, float, str, int]


class _Ref:
    """Reference and level of one sensor."""

    __slots__ = ("d", "f", "m", "n", "s", "t", "v")

    def __init__(self, x: float, t: float) -> None:
        self.m = x  # slow reference mean
        self.v = 0.0  # slow reference variance
        self.f = x  # fast level
        self.n = 0  # readings learned
        self.t = t  # last reading time (s)
        self.d = 0.0  # signed departure in reference stds (0 until warm)
        self.s = x  # the level it settled at, during an episode

    @property
    def std(self) -> float:
        s = _sqrt(self.v) if self.v > 0.0 else 0.0
        floor = 1e-6 * abs(self.m)
        return max(s, floor, 1e-9)


class EquipmentShift:
    """The episode detector of one equipment; `update` once per reading."""

    __slots__ = (
        "_ab",
        "_af",
        "_dt",
        "_refs",
        "_top",
        "accept_s",
        "active",
        "baseline_s",
        "below",
        "cause",
        "fast_s",
        "kind",
        "off_delay_s",
        "off_sigma",
        "on_delay_s",
        "on_sigma",
        "score",
        "since",
        "t_change",
        "t_on",
        "t_settle",
        "warmup",
    )

    def __init__(
        self,
        warmup: int = 300,
        baseline_s: float = 1200.0,
        fast_s: float = 10.0,
        on_sigma: float = 3.0,
        off_sigma: float = 2.0,
        on_delay_s: float = 5.0,
        off_delay_s: float = 30.0,
        accept_s: float = 900.0,
    ) -> None:
        self.warmup = warmup
        self.baseline_s = baseline_s
        self.fast_s = fast_s
        self.on_sigma = on_sigma
        self.off_sigma = off_sigma
        self.on_delay_s = on_delay_s
        self.off_delay_s = off_delay_s
        self.accept_s = accept_s
        self._refs: dict[str, _Ref] = {}
        self._dt = -1.0  # the period the two smoothing factors are for
        self._af = self._ab = 0.0
        self._top = ""  # the sensor with the largest |d|
        self.score = 0.0  # that |d|
        self.active = False
        self.kind = MULTIVARIATE
        self.since: float | None = None  # score >= on_sigma since (s)
        self.below: float | None = None  # score < off_sigma since, while active (s)
        self.t_on = 0.0  # episode start (s)
        self.t_change = 0.0  # last level shift in the episode (s)
        self.t_settle = 0.0  # since when no sensor's level moved (during an episode, s)
        self.cause = ""  # the sensor that started the episode

    def drop(self, sensor: str) -> None:
        """Forget one sensor (its series expired)."""
        if self._refs.pop(sensor, None) is not None and sensor == self._top:
            self._retop()

    def std_of(self, sensor: str) -> float:
        """The sensor's reference std once warm, else infinity (for the drift gate)."""
        r = self._refs.get(sensor)
        return r.std if r is not None and r.n >= self.warmup else math.inf

    def departure(self, sensor: str) -> float | None:
        """|d| of the sensor against its slow reference once warm, else None."""
        r = self._refs.get(sensor)
        return abs(r.d) if r is not None and r.n >= self.warmup else None

    def update(
        self, ts_ns: int, sensor: str, x: float, change: tuple[float, float] | None = None
    ) -> Episode | None:
        """Learn one reading (`change`: a level shift its drift detector found now)."""
        ts = ts_ns / 1e9
        r = self._refs.get(sensor)
        if r is None:
            r = self._refs[sensor] = _Ref(x, ts)
        dt = ts - r.t if r.n else 1.0
        if dt < 0.0:
            dt = 0.0
        else:
            r.t = ts
        if dt != self._dt:  # readings come at a steady period: two exp() per period
            self._dt = dt
            self._af = 1.0 - _exp(-dt / self.fast_s)
            self._ab = 1.0 - _exp(-dt / self.baseline_s)
        f = r.f = r.f + self._af * (x - r.f)
        active = self.active
        warm = r.n >= self.warmup
        if warm:
            v = r.v
            std = _sqrt(v) if v > 0.0 else 0.0
            floor = 1e-6 * (r.m if r.m >= 0.0 else -r.m)
            if std <= floor or std <= 1e-9:
                std = floor if floor > 1e-9 else 1e-9
            d = r.d = (f - r.m) / std
            if active and abs(f - r.s) > self.off_sigma * std:
                r.s = f  # still moving: not a new steady level yet
                self.t_settle = ts
        if not active or not warm:  # the references freeze during an episode
            a = self._ab if r.n else 1.0
            if not warm:
                a = max(a, 1.0 / (r.n + 1))
            dd = x - r.m
            r.m += a * dd
            r.v = (1.0 - a) * (r.v + a * dd * dd)
            r.n += 1
        if not warm:
            return None
        ad = d if d >= 0.0 else -d
        if ad >= self.score:
            self.score, self._top = ad, sensor
        elif sensor == self._top:
            self._retop()
        if not active and change is None and self.since is None and self.score < self.on_sigma:
            return None  # the common case: nothing to decide
        return self._decide(ts, ts_ns, sensor, x, change)

    def _retop(self) -> None:
        """The top sensor's departure fell: find the new top."""
        best, top = 0.0, ""
        for name, r in self._refs.items():
            v = abs(r.d)
            if v > best:
                best, top = v, name
        self.score, self._top = best, top

    def _decide(
        self, ts: float, ts_ns: int, sensor: str, x: float, change: tuple[float, float] | None
    ) -> Episode | None:
        e = self.score
        if not self.active:
            fire = change is not None
            if e >= self.on_sigma:
                if self.since is None:
                    self.since = ts
                fire = fire or ts - self.since >= self.on_delay_s
            else:
                self.since = None
            if not fire:
                return None
            self.active, self.below, self.t_on, self.t_change = True, None, ts, ts
            self.t_settle = ts
            for ref in self._refs.values():
                ref.s = ref.f
            if change is not None:
                self.kind, self.cause = DRIFT, sensor
                return ("raise", DRIFT, "medium", sensor, x, _moved(sensor, change), ts_ns)
            self.kind = MULTIVARIATE
            top = self.cause = self._top
            value = self._refs[top].f
            return ("raise", MULTIVARIATE, "medium", top, value, self._departures(), ts_ns)
        if change is not None:
            self.t_change = ts
            return ("escalate", self.kind, "high", sensor, x, _moved(sensor, change), ts_ns)
        if e < self.off_sigma:
            if self.below is None:
                self.below = ts
            if ts - self.below >= self.off_delay_s:
                return self._end(ts_ns, sensor, x, f"back to baseline for {self.off_delay_s:g} s")
        else:
            self.below = None
        if self.accept_s and ts - max(self.t_change, self.t_settle) >= self.accept_s:
            for ref in self._refs.values():
                ref.m, ref.d = ref.f, 0.0
            self.score = 0.0
            msg = f"new level accepted as normal after {self.accept_s / 60:g} min without change"
            return self._end(ts_ns, sensor, x, msg)
        return None

    def worse(self, sensor: str, x: float, message: str, ts_ns: int) -> Episode:
        """The active episode got worse (another detector's critical finding): escalate."""
        return ("escalate", self.kind, "high", sensor, x, message, ts_ns)

    def _end(self, ts_ns: int, sensor: str, x: float, why: str) -> Episode:
        self.active, self.since, self.below = False, None, None
        cause = self.cause or sensor
        r = self._refs.get(cause)
        return ("clear", self.kind, "medium", cause, r.f if r is not None else x, why, ts_ns)

    def _departures(self, most: int = 3) -> str:
        """The sensors contributing most, largest first: ``flow -3.2 sd (30.1 -> 24.0)``."""
        warm = [(abs(r.d), n, r) for n, r in self._refs.items() if r.n >= self.warmup]
        warm.sort(key=lambda t: t[0], reverse=True)
        parts = [
            f"{n} {r.d:+.1f} sd ({r.m:.4g} -> {r.f:.4g})"
            for ad, n, r in warm[:most]
            if ad >= self.off_sigma or n == self._top
        ]
        return "departs from its baseline: " + ", ".join(parts)

    # -------------------------------------------------------------- snapshot
    def to_state(self) -> dict[str, Any]:
        return {
            "refs": {n: [r.m, r.v, r.f, r.n, r.t, r.d, r.s] for n, r in self._refs.items()},
            "active": self.active,
            "kind": self.kind,
            "since": self.since,
            "below": self.below,
            "t_on": self.t_on,
            "t_change": self.t_change,
            "t_settle": self.t_settle,
            "cause": self.cause,
        }

    def load_state(self, st: dict[str, Any]) -> None:
        refs: dict[str, _Ref] = {}
        for name, (m, v, f, n, t, d, settled) in st["refs"].items():
            r = _Ref(float(m), float(t))
            r.v, r.f, r.n, r.d, r.s = float(v), float(f), int(n), float(d), float(settled)
            refs[str(name)] = r
        self._refs = refs
        self.active = bool(st["active"])
        self.kind = DRIFT if st["kind"] == DRIFT else MULTIVARIATE
        self.since = None if st["since"] is None else float(st["since"])
        self.below = None if st["below"] is None else float(st["below"])
        self.t_on, self.t_change = float(st["t_on"]), float(st["t_change"])
        self.cause = str(st.get("cause", ""))
        self.t_settle = float(st.get("t_settle", self.t_on))
        self.score, self._top = 0.0, ""
        for name, r in refs.items():
            if r.n >= self.warmup and abs(r.d) > self.score:
                self.score, self._top = abs(r.d), name


def _moved(sensor: str, change: tuple[float, float]) -> str:
    return f"{sensor} level moved from {change[0]:.4g} to {change[1]:.4g}"
