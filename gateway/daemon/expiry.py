"""Forgetting: idle series expire, silent equipment is forgotten (issue 20).

Driven by `Processor.tick` (once a second, between batches, with the gateway clock
passed in), a piece at a time so the loop never stalls:

- the series registry is swept `SWEEP_PER_TICK` series per tick
  (`SeriesRegistry.sweep`); a series silent for ``[validation] series_idle_s`` loses
  its registry slot, detector state, latest reading, and (pruned a piece per tick) its
  cached route, bounds and line-protocol prefix. So do the series a full registry let
  go to admit a new one (`SeriesRegistry.drain_evicted`). Both count in
  ``edge_series_expired_total{reason="idle"|"room"}``.
- an equipment whose ``offline`` alert says it has been silent for
  ``[alerts] forget_after_s`` is forgotten: its alerts cleared (``forgotten``, published
  like any transition), its retained ``status/{equipment}`` and
  ``alerts/active/{equipment}/...`` topics emptied, its series and deadman entry
  dropped, one log line. ``gateway/{client_id}/forget`` ``{"equipment", "by"}`` does the
  same at once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

import orjson

from gateway.core.alerts import RETURNED
from gateway.core.lineproto import ReadingLines, audit_line
from gateway.core.model import OFFLINE

if TYPE_CHECKING:
    from gateway.daemon.process import Processor

log = logging.getLogger("edge.pipeline")

# Series looked at per tick: 100,000 series are swept in 50 ticks (s), a few ms each
# (README "Choices and known limits", `python -m tests.bench_expiry sweep`).
SWEEP_PER_TICK: Final = 2_000
# Cache entries looked at per cache and tick, for as long as series were forgotten lately.
PRUNE_PER_TICK: Final = 2_000
# How often offline alerts are checked against forget_after_s (at most; a tenth of it
# when shorter, 1 s at least).
FORGET_CHECK_S: Final = 60.0
# The largest cache pruned (`ReadingLines`' default bound).
CACHE_MAX: Final = 200_000


class Forgetting:
    """The expiry of one `Processor`'s series and equipment; see the module docstring."""

    def __init__(self, p: Processor) -> None:
        self.p = p
        s = p.settings
        self.forget_topic = f"gateway/{s.mqtt.client_id}/forget"
        self.forget_after_s = s.alerts.forget_after_s
        self.offline_after_s = s.alerts.offline_after_s
        self.lines: ReadingLines | None = None  # the durable writer's, set by the pipeline
        self._next_check = 0.0
        self._prune_ticks = 0  # ticks of cache pruning still to do
        m = p.metrics.series_expired
        self._m_idle = m.labels("idle")
        self._m_room = m.labels("room")

    # ------------------------------------------------------------------ series
    def tick(self, now: float) -> list[str]:
        """One piece of expiry at gateway time `now` (epoch s); the alert lines to write."""
        p = self.p
        reg = p.normalizer.series
        expired = reg.sweep(int(now * 1e9), SWEEP_PER_TICK)
        if expired:
            self._forget_series(expired)
            self._m_idle.inc(len(expired))
        if reg.evicted:
            # a series evicted and back since (same batch) keeps its state
            evicted = [k for k in reg.drain_evicted() if k not in reg]
            self._forget_series(evicted)
            self._m_room.inc(len(evicted))
        if self._prune_ticks > 0:
            self._prune_ticks -= 1
            p.normalizer.prune_caches(PRUNE_PER_TICK)
            for n in p.others.values():
                n.prune_caches(PRUNE_PER_TICK)
            if self.lines is not None:
                self.lines.prune(reg.view(), PRUNE_PER_TICK)
        if self.forget_after_s and now >= self._next_check:
            self._next_check = now + min(FORGET_CHECK_S, max(1.0, self.forget_after_s / 10))
            return self._forget_silent(now)
        return []

    def _forget_series(self, keys: list[tuple[str, str]]) -> None:
        if not keys:
            return
        p = self.p
        self._caches_stale()
        forget = p.detectors.forget
        latest = p.latest
        for key in keys:
            forget(key)
            latest.pop(key, None)

    def _caches_stale(self) -> None:
        """Prune the caches for two of their cycles from now: every entry is looked at
        at least once after this."""
        self._prune_ticks = 2 * (CACHE_MAX // PRUNE_PER_TICK) + 2

    # --------------------------------------------------------------- equipment
    def _forget_silent(self, now: float) -> list[str]:
        """Forget every equipment offline for forget_after_s (counted from its last reading:
        the offline alert was raised offline_after_s after it)."""
        age = max(0.0, self.forget_after_s - self.offline_after_s)
        due: list[tuple[str, float]] = []
        for a in self.p.alerts.active():
            if a.kind != OFFLINE or a.state == RETURNED:
                continue
            since = a.first_ts / 1e9 if a.first_ts else a.raised_at  # the (re)raise
            if now - since >= age:
                due.append((a.equipment, now - since + self.offline_after_s))
        lines: list[str] = []
        for equipment, silent in due:
            lines += self.forget_equipment(equipment, now, f"silent for {silent:.0f} s")
        return lines

    def forget_equipment(self, equipment: str, now: float, why: str) -> list[str]:
        """Forget `equipment` now; the alert lines of its cleared alerts."""
        p = self.p
        transitions = p.alerts.forget(equipment, now, why)
        p.offline.forget(equipment)
        reg = p.normalizer.series
        keys = set(reg.of_equipment(equipment))
        keys.update(k for k in p.latest if k[0] == equipment)
        for key in keys:
            reg.forget(key)
            p.latest.pop(key, None)
        self._caches_stale()
        n = p.detectors.forget_equipment(equipment)
        p.alarms.forget_equipment(equipment)  # its shelves and out-of-service go too
        lines = p.emit(transitions)
        # after emit: the cleared alerts' retained active topics are emptied there
        p.publisher.put(f"{p.settings.alerts.status_prefix}/{equipment}", b"", 1, True)
        log.info(
            "equipment %s forgotten (%s): %d alerts cleared, %d series dropped",
            equipment,
            why,
            len(transitions),
            max(n, len(keys)),
        )
        return lines

    def command(self, payload: bytes) -> list[str]:
        """``gateway/{client_id}/forget`` ``{"equipment": ..., "by": ...}``."""
        try:
            cmd = orjson.loads(payload)
            equipment = cmd["equipment"]
            by = str(cmd.get("by") or "unknown")
            if not isinstance(equipment, str) or not equipment:
                raise TypeError("equipment must be a non-empty string")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            # counted like every rejected operator command, never logged per message
            self.p.metrics.alarm_commands_rejected.labels("malformed").inc()
            return []
        now = time.time()
        lines = self.forget_equipment(equipment, now, f"by {by}")
        lines.append(
            audit_line(
                action="forget",
                equipment=equipment,
                alert_id="",
                by=by,
                reason="",
                ts_ns=int(now * 1e9),
            )
        )
        return lines
