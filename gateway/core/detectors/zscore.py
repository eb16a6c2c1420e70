"""Rolling z-score of one series, validated against river's rolling variance.

The rolling statistics are those of ``river.utils.Rolling(river.stats.Var,
window_size=window)`` (mean and sample variance, ddof=1, of the last `window`
learned values), kept here by sliding Welford updates over a flat
``array('d')`` ring instead: `Rolling` stores an ``(args, kwargs)`` tuple per
value (~19 KB per series at window 100, ~2 GB at the default `max_series` of
100 000) and costs ~1.5 µs per update+get; this costs ~1.4 KB and well under
1 µs, and its state snapshots exactly. The ring is re-summed exactly each time
it wraps, so rounding never builds up (a huge value leaving the window cannot
leave a negative variance behind). A test checks it against river's numbers.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from typing import Any

# Floor of the std used for z: a flat series has std 0, and a jump off it must
# still alarm (with a large but finite z) while float jitter of a few ulps must
# not. Relative to |mean|, with an absolute floor for series that sit at 0.
_REL_EPS = 1e-6
_ABS_EPS = 1e-9
_sqrt = math.sqrt


class ZScore:
    """Rolling z-score of one series, river-style: ``score_one(x)`` then ``learn_one(x)``.

    z is taken against the baseline (mean, std of the last `window` learned
    values) before `x` is learned, and is None while fewer than `warmup`
    values have been learned. The std is floored at ``1e-6 * |mean|`` (at
    least ``1e-9``), so a flat series that jumps gets a large finite z.

    Robustness: a value with ``|z| >= threshold`` is learned clipped to
    ``mean ± threshold * std``, so one spike barely moves the baseline (and a
    lasting anomaly does not become the baseline). A lasting level shift is
    the drift detector's to find (`drift.LevelShift`): it calls `rebase(x)`,
    the window restarts from the new level and warms up again. The older rule
    is still there for `shift_after` > 0: after that many consecutive anomalous
    values on the same side of the mean the window restarts from them.

    >>> import random
    >>> rng = random.Random(42)
    >>> zs = ZScore(window=100, warmup=30, threshold=3.0)
    >>> for _ in range(30):
    ...     x = rng.gauss(20.0, 0.5)
    ...     assert zs.score_one(x) is None  # warming up
    ...     zs.learn_one(x)
    >>> round(zs.mean, 2), round(zs.std, 2)
    (20.01, 0.35)
    >>> round(zs.score_one(20.5), 2)
    1.41
    >>> round(zs.score_one(35.0), 1)
    43.3
    >>> zs.learn_one(35.0)  # learned as mean + 3 std, not as 35.0
    >>> round(zs.score_one(35.0), 1)  # so the next spike still stands out
    38.6
    """

    __slots__ = (
        "_buf",
        "_m2",
        "_mean",
        "_n",
        "_pos",
        "_recent",
        "_run",
        "shift_after",
        "threshold",
        "warmup",
        "window",
    )

    def __init__(
        self, window: int = 100, warmup: int = 30, threshold: float = 3.0, shift_after: int = 0
    ) -> None:
        if not 2 <= warmup <= window or threshold <= 0 or shift_after < 0:
            raise ValueError("need 2 <= warmup <= window, threshold > 0, shift_after >= 0")
        self.window = window
        self.warmup = warmup
        self.threshold = threshold
        self.shift_after = shift_after
        self._buf = array("d", bytes(8 * window))
        self._pos = 0  # next slot to write; the oldest value once the ring is full
        self._n = 0  # learned values in the window
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations
        self._run = 0  # +k / -k: k consecutive anomalies above / below the mean
        self._recent: list[float] | None = None  # raw values of the current run

    @property
    def n(self) -> int:
        return self._n

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def std(self) -> float:
        """Sample std (ddof=1) of the window, floored as described above."""
        n = self._n
        var = self._m2 / (n - 1) if n > 1 else 0.0
        std = _sqrt(var) if var > 0.0 else 0.0
        floor = _REL_EPS * abs(self._mean)
        if floor < _ABS_EPS:
            floor = _ABS_EPS
        return std if std > floor else floor

    def score_one(self, x: float) -> float | None:
        """z of `x` against the current baseline; None while warming up."""
        n = self._n
        if n < self.warmup:
            return None
        mean = self._mean
        var = self._m2 / (n - 1)  # `std`, inlined: this runs once per reading
        std = _sqrt(var) if var > 0.0 else 0.0
        floor = _REL_EPS * (mean if mean >= 0.0 else -mean)
        if std <= floor or std <= _ABS_EPS:
            std = floor if floor > _ABS_EPS else _ABS_EPS
        return (x - mean) / std

    def learn_one(self, x: float) -> None:
        self.learn_scored(x, self.score_one(x))

    def learn_scored(self, x: float, z: float | None) -> None:
        """`learn_one` for a caller that already has ``z = score_one(x)``."""
        t = self.threshold
        if z is not None and (z >= t or z <= -t):
            side = 1 if z > 0 else -1
            if not self.shift_after:  # clip only: the drift detector handles shifts
                self._push(self._mean + side * t * self.std)
                return
            run = self._run
            if run * side > 0 and self._recent is not None:
                run += side
                self._recent.append(x)
            else:
                run = side
                self._recent = [x]
            if run * side >= self.shift_after:
                self._rebase(self._recent)
                return
            self._run = run
            x = self._mean + side * t * self.std
        elif self._run:
            self._run = 0
            self._recent = None
        self._push(x)

    def rebase(self, x: float) -> None:
        """Restart the baseline at level `x` (a lasting shift): warms up again."""
        self._rebase((x,))

    def _push(self, x: float) -> None:
        buf = self._buf
        n = self._n
        pos = self._pos
        if n == self.window:  # slide: replace the oldest value
            old = buf[pos]
            mean = self._mean
            new_mean = mean + (x - old) / n
            self._m2 += (x - old) * (x - new_mean + old - mean)
            self._mean = new_mean
        else:
            n += 1
            self._n = n
            d = x - self._mean
            self._mean += d / n
            self._m2 += d * (x - self._mean)
        buf[pos] = x
        pos += 1
        if pos == self.window:  # wrapped (so the window is full)
            pos = 0
            self._refresh()
        self._pos = pos

    def _refresh(self) -> None:
        """Exact mean and m2 from the full ring (rounding of the updates discarded)."""
        buf = self._buf
        mean = math.fsum(buf) / len(buf)
        self._mean = mean
        self._m2 = math.fsum([(v - mean) * (v - mean) for v in buf])

    def _rebase(self, values: Iterable[float]) -> None:
        self._n = self._pos = self._run = 0
        self._mean = self._m2 = 0.0
        self._recent = None
        for v in values:
            self._push(v)

    def values(self) -> list[float]:
        """The window, oldest first."""
        if self._n < self.window:
            return self._buf[: self._n].tolist()
        return self._buf[self._pos :].tolist() + self._buf[: self._pos].tolist()

    def to_state(self) -> dict[str, Any]:
        return {
            "buf": self._buf[: self._n].tolist(),
            "pos": self._pos,
            "mean": self._mean,
            "m2": self._m2,
            "run": self._run,
            "recent": self._recent,
        }

    def load_state(self, st: dict[str, Any]) -> None:
        """Inverse of `to_state`; exact if the window size is unchanged."""
        buf = array("d", st["buf"])
        pos, run, recent = int(st["pos"]), int(st["run"]), st["recent"]
        n = len(buf)
        if not (0 <= pos < n == self.window or pos == n < self.window):
            raise ValueError("bad z-score state (or a different window size)")
        self._buf[:n] = buf
        self._n, self._pos = n, pos
        self._mean, self._m2 = float(st["mean"]), float(st["m2"])
        if recent is not None and run and len(recent) == abs(run):
            self._run, self._recent = run, [float(v) for v in recent]
        else:
            self._run, self._recent = 0, None

    def load_values(self, values: Iterable[float]) -> None:
        """Restart the baseline from `values` (oldest first; only the last `window` kept)."""
        vals = [float(v) for v in values][-self.window :]
        self._rebase(vals)
