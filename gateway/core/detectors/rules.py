"""``[[rules]]`` compiled: which limits apply to a series, and the threshold findings."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.config import Rule
from gateway.core.model import DEFAULT_POLICY, THRESHOLD_HIGH, THRESHOLD_LOW, AlarmPolicy, Finding

_LIMITS = ("high", "low", "critical_high", "critical_low", "min", "max", "max_slope_per_min")
# alarm-management keys (gateway.core.alerts): merged like the limits, into `policy`
_POLICY = (
    "deadband",
    "on_delay_s",
    "off_delay_s",
    "priority",
    "cause",
    "consequence",
    "action",
    "response_time_s",
)
DEADBAND_FRACTION = 0.01  # default deadband: 1 % of the span between the limits


@dataclass(slots=True, frozen=True)
class ResolvedRule:
    """The limits that apply to one series after merging every matching rule."""

    high: float | None = None
    low: float | None = None
    critical_high: float | None = None
    critical_low: float | None = None
    min: float | None = None
    max: float | None = None
    max_slope_per_min: float | None = None
    policy: AlarmPolicy = DEFAULT_POLICY


NO_RULE = ResolvedRule()


def _policy(merged: dict[str, Any], keys: dict[str, Any]) -> AlarmPolicy:
    """The alarm policy of a merged rule; the deadband defaults to 1 % of its span
    (high - low, or the limit's own magnitude when one side is missing)."""
    deadband = keys.get("deadband")
    if deadband is None:
        hi = [merged[k] for k in ("critical_high", "high") if k in merged]
        lo = [merged[k] for k in ("critical_low", "low") if k in merged]
        one_side = max((abs(v) for v in hi + lo), default=0.0)
        span = min(hi) - max(lo) if hi and lo else one_side
        deadband = DEADBAND_FRACTION * span
    return AlarmPolicy(
        deadband=float(deadband),
        on_delay_s=float(keys.get("on_delay_s") or 0.0),
        off_delay_s=float(keys.get("off_delay_s") or 0.0),
        priority=keys.get("priority"),
        cause=keys.get("cause"),
        consequence=keys.get("consequence"),
        action=keys.get("action"),
        response_time_s=keys.get("response_time_s"),
    )


def out_of_range(rule: ResolvedRule, value: float) -> bool:
    """True if `value` is outside the rule's physical bounds (`min`/`max`, inclusive)."""
    lo, hi = rule.min, rule.max
    return (lo is not None and value < lo) or (hi is not None and value > hi)


def _glob(pattern: str) -> Callable[[str], object] | None:
    """A matcher for an fnmatch glob (case-sensitive); None for '*' (matches all)."""
    if pattern == "*":
        return None
    return re.compile(fnmatch.translate(pattern)).match


class RuleSet:
    """Compiled ``[[rules]]``: which limits apply to a series.

    A rule matches when its `equipment`, `sensor` and `line` globs (fnmatch,
    case-sensitive, default ``*``) all match. Every matching rule applies in
    file order, and a later rule overrides only the keys it sets (non-None):
    ``[{sensor="temperature", high=85, low=15}, {equipment="oven-*", high=250}]``
    gives oven temperatures high=250, low=15. Results are cached per series
    (the cache is dropped when it exceeds `cache_size` entries).
    """

    __slots__ = ("_cache", "_rules", "cache_size")

    out_of_range = staticmethod(out_of_range)

    def __init__(self, rules: Iterable[Rule] = (), cache_size: int = 200_000) -> None:
        self._rules = [
            (
                _glob(r.equipment),
                _glob(r.sensor),
                _glob(r.line),
                {k: float(getattr(r, k)) for k in _LIMITS if getattr(r, k) is not None},
                {k: getattr(r, k) for k in _POLICY if getattr(r, k) is not None},
            )
            for r in rules
        ]
        self._cache: dict[tuple[str, str, str], ResolvedRule] = {}
        self.cache_size = cache_size

    def __len__(self) -> int:
        return len(self._rules)

    def resolve(self, equipment: str, sensor: str, line: str = "") -> ResolvedRule:
        if not self._rules:
            return NO_RULE
        key = (equipment, sensor, line)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        merged: dict[str, float] = {}
        keys: dict[str, Any] = {}
        for eq, se, li, limits, policy in self._rules:
            if (
                (eq is None or eq(equipment))
                and (se is None or se(sensor))
                and (li is None or li(line))
            ):
                merged.update(limits)
                keys.update(policy)
        res = ResolvedRule(**merged, policy=_policy(merged, keys)) if merged or keys else NO_RULE
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[key] = res
        return res


def threshold_finding(sensor: str, v: float, rule: ResolvedRule) -> Finding | None:
    ch, h, cl, lo = rule.critical_high, rule.high, rule.critical_low, rule.low
    if ch is not None and v > ch:
        return Finding(THRESHOLD_HIGH, "critical", v, ch, f"{sensor} {v} above critical limit {ch}")
    if h is not None and v > h:
        return Finding(THRESHOLD_HIGH, "high", v, h, f"{sensor} {v} above high limit {h}")
    if cl is not None and v < cl:
        return Finding(THRESHOLD_LOW, "critical", v, cl, f"{sensor} {v} below critical limit {cl}")
    if lo is not None and v < lo:
        return Finding(THRESHOLD_LOW, "high", v, lo, f"{sensor} {v} below low limit {lo}")
    return None
