"""The per-reading checks every payload format ends in (pure).

`ItemChecks` holds the state a `Normalizer` keeps (series registry, duplicate memory,
caches, the message being normalized) and the checks shared by every shape of
payload: names, units, line overrides, timestamps, physical bounds, the series cap,
duplicates and receive-time stamps (`_emit`). The format modules (`json_format`,
`fields_format`) turn one payload shape into calls of `_emit`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from gateway.config import ValidationConfig
from gateway.core.model import (
    DUPLICATE,
    FUTURE_TIMESTAMP,
    INVALID_VALUE,
    MALFORMED,
    MISSING_FIELD,
    OUT_OF_RANGE,
    SERIES_LIMIT,
    STALE_TIMESTAMP,
    TOO_LARGE,
    Reading,
    Reject,
)
from gateway.core.normalize.names import kind, name_problem, short, unit_problem
from gateway.core.series import CachePruner, RecentKeys, SeriesRegistry
from gateway.core.timestamps import TimestampRangeError, parse_ts

Bounds = Callable[[str, str, str], tuple[float | None, float | None]]
# (ts ns, "", "") or (0, reject reason, detail)
When = tuple[int, str, str]

NAME_CACHE_MAX: Final = 131_072
ROUTE_CACHE_MAX: Final = 65_536

_E11: Final = 100_000_000_000
_E14: Final = 100_000_000_000_000
_E17: Final = 100_000_000_000_000_000


class ItemChecks:
    """State and per-item checks shared by the payload formats; see `Normalizer`."""

    def __init__(self, cfg: ValidationConfig, bounds: Bounds | None, source: str) -> None:
        self.cfg = cfg
        self.source = source
        self.series = SeriesRegistry(cfg.max_series, cfg.series_idle_s)
        self.recent = RecentKeys(cfg.dedup_window)
        self.internal_errors = 0  # exceptions the safety net turned into rejects
        self._bounds = bounds
        self._bounds_cache: dict[tuple[str, str, str], tuple[float | None, float | None]] = {}
        self._bounds_max = max(ROUTE_CACHE_MAX, 2 * cfg.max_series)
        self._bounds_pruner = CachePruner()
        self._max_batch = cfg.max_batch_items
        self._future_ns = int(cfg.max_future_s * 1e9)
        self._age_ns = int(cfg.max_age_s * 1e9)
        self._ok_names: set[str] = set()
        self._ok_units: set[str] = set()
        # per-message state, set at the top of normalize()
        self._topic = ""
        self._payload = b""
        self._now = 0
        self._nowt: When = (0, "", "")
        self._received = 0.0

    def prune_caches(self, budget: int) -> int:
        """Drop up to `budget` looked-at cache entries of series no longer registered."""
        return self._bounds_pruner.step(self._bounds_cache, self.series.view(), budget)

    def invalidate_bounds(self) -> None:
        """Forget cached physical bounds (after a rules reload)."""
        self._bounds_cache.clear()

    def _too_long(self, rej: list[Reject], n: int) -> None:
        self._reject(rej, TOO_LARGE, f"batch of {n} items exceeds {self._max_batch}", -1)

    def _reject(
        self, rej: list[Reject], reason: str, detail: str, i: int, key: str | None = None
    ) -> None:
        if key is not None:
            detail = f"field {short(key)}: {detail}"
        if i >= 0:
            detail = f"item {i}: {detail}"
        rej.append(Reject(reason, detail, self._topic, self._payload))

    def _name(self, v: object, what: str, allow_empty: bool = False) -> tuple[str, str] | None:
        if type(v) is str and v in self._ok_names:
            return None
        p = name_problem(v, allow_empty)
        if p is not None:
            return p[0], f"{what} {p[1]}"
        if len(self._ok_names) < NAME_CACHE_MAX:
            self._ok_names.add(v)  # type: ignore[arg-type]
        return None

    def _unit(self, v: object) -> str | None:
        if type(v) is str and v in self._ok_units:
            return None
        p = unit_problem(v)
        if p is not None:
            return f"unit {p}"
        if len(self._ok_units) < NAME_CACHE_MAX:
            self._ok_units.add(v)  # type: ignore[arg-type]
        return None

    def _line(self, tags: dict[str, str], v: object) -> dict[str, str] | tuple[str, str]:
        if v == tags.get("line"):
            return tags
        if v != "":
            p = self._name(v, "line")
            if p is not None:
                return p
            return {**tags, "line": v}  # type: ignore[dict-item]
        if type(v) is not str:
            return INVALID_VALUE, f"line is {kind(v)}, not a string"
        return {k: x for k, x in tags.items() if k != "line"}

    def _when(self, ts: object) -> When:
        """(ts ns, "", "") or (0, reason, detail) for a payload timestamp."""
        if type(ts) is int and -_E17 < ts < _E17:  # epoch s/ms/µs; see gateway.core.timestamps
            a = ts if ts >= 0 else -ts
            tns = ts * 1_000_000_000 if a < _E11 else ts * 1_000_000 if a < _E14 else ts * 1_000
        else:
            try:
                tns = parse_ts(ts)
            except TimestampRangeError as e:
                return 0, FUTURE_TIMESTAMP if e.future else STALE_TIMESTAMP, str(e)
            except ValueError as e:
                return 0, MALFORMED, str(e)[:120]
        now = self._now
        if tns > now + self._future_ns:
            return (
                0,
                FUTURE_TIMESTAMP,
                f"ts is {(tns - now) / 1e9:.0f} s ahead of the gateway clock",
            )
        if tns < now - self._age_ns:
            return 0, STALE_TIMESTAMP, f"ts is {(now - tns) / 1e9:.0f} s old"
        return tns, "", ""

    def _emit(
        self,
        out: list[Reading],
        rej: list[Reject],
        eq: str | None,
        sn: str | None,
        tags: dict[str, str],
        value: object,
        unit: str,
        when: When,
        dedup: bool,
        i: int,
        key: str | None,
    ) -> None:
        """The per-reading checks shared by every shape; appends to `out` or `rej`."""
        if eq is None:
            return self._reject(rej, MISSING_FIELD, "no equipment in topic or payload", i, key)
        if sn is None:
            return self._reject(rej, MISSING_FIELD, "no sensor in topic or payload", i, key)
        tv = type(value)
        if tv is float:
            if value - value != 0.0:  # type: ignore[operator]
                return self._reject(rej, INVALID_VALUE, "value is NaN or infinite", i, key)
            fv: float = value  # type: ignore[assignment]
        elif tv is int:
            try:
                fv = float(value)  # type: ignore[arg-type]
            except OverflowError:
                return self._reject(rej, INVALID_VALUE, "value is too large for a float", i, key)
        else:
            return self._reject(rej, INVALID_VALUE, f"value is {kind(value)}, not a number", i, key)
        tns, why, detail = when
        if why:
            return self._reject(rej, why, detail, i, key)
        bounds = self._bounds
        if bounds is not None:
            bkey = (eq, sn, tags.get("line", ""))
            b = self._bounds_cache.get(bkey)
            if b is None:
                b = self._lookup_bounds(bounds, bkey)
            lo, hi = b
            if (lo is not None and fv < lo) or (hi is not None and fv > hi):
                return self._reject(
                    rej, OUT_OF_RANGE, f"value {fv:g} outside physical bounds [{lo}, {hi}]", i, key
                )
        if dedup:  # admit records the receive time: the series' idleness counts from it
            if not self.series.admit(eq, sn, self._now):
                return self._reject(
                    rej, SERIES_LIMIT, f"new series {eq}/{sn} exceeds max_series", i, key
                )
            if self.recent.seen_before((eq, sn, tns)):
                return self._reject(rej, DUPLICATE, f"{eq}/{sn} at ts {tns} seen before", i, key)
        else:  # receive time: unique within the series, or InfluxDB keeps only the last
            tns = self.series.stamp(eq, sn, tns)
            if tns < 0:
                return self._reject(
                    rej, SERIES_LIMIT, f"new series {eq}/{sn} exceeds max_series", i, key
                )
        out.append(Reading(eq, sn, fv, tns, unit, tags, self.source, self._received))

    def _lookup_bounds(
        self, bounds: Bounds, bkey: tuple[str, str, str]
    ) -> tuple[float | None, float | None]:
        try:
            lo, hi = bounds(*bkey)
        except Exception:  # a broken rule lookup must not reject data
            self.internal_errors += 1
            lo = hi = None
        cache = self._bounds_cache
        if len(cache) >= self._bounds_max:
            cache.clear()
        b = cache[bkey] = (lo, hi)
        return b
