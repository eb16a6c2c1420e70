"""Snapshot stage: the core's state on disk, so a restart neither re-warms nor re-raises.

Each part (detector baselines, alerts and status, events, known equipment, receive-time
stamps per series) is one file under ``<spool dir>/state/`` (`gateway.daemon.state`),
taken every ``[spool] snapshot_interval_s`` and on shutdown, loaded at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from gateway.daemon.process import Processor
from gateway.daemon.state import StateStore

log = logging.getLogger("edge.pipeline")

Part = tuple[Callable[[], Iterable[bytes]], Callable[[bytes], object]]


def state_parts(p: Processor) -> dict[str, Part]:
    """file name -> (snapshot as pieces of bytes, restore)."""
    return {
        "detectors.json": (p.detectors.snapshot_chunks, p.detectors.restore),
        "episodes.json": (
            lambda: (p.detectors.episodes_snapshot(),),
            p.detectors.restore_episodes,
        ),
        "alerts.json": (lambda: (p.alerts.snapshot(),), p.alerts.restore),
        "alarms.json": (lambda: (p.alarms.snapshot(),), p.alarms.restore),
        "events.json": (p.events.store.snapshot_chunks, p.events.store.restore),
        "equipment.json": (
            lambda: (p.offline.snapshot(),),
            lambda data: p.offline.restore(data, time.monotonic()),
        ),
        "series.json": (
            lambda: (p.normalizer.series.stamps_snapshot(),),
            p.normalizer.series.restore_stamps,
        ),
    }


class Snapshots:
    def __init__(self, store: StateStore, processor: Processor) -> None:
        self.store = store
        self.processor = processor
        self.parts = state_parts(processor)

    def restore(self) -> None:
        for name, (_, restore) in self.parts.items():
            data = self.store.load(name)
            if data is None:
                continue
            try:
                restore(data)
            except ValueError as e:
                self.store.quarantine(name, str(e))
        self._rebuild_registry()
        p = self.processor
        if p.detectors.series_count or p.alerts.active_count:
            log.info(
                "state: restored %d series baselines and %d active alerts",
                p.detectors.series_count,
                p.alerts.active_count,
            )

    def _rebuild_registry(self) -> None:
        """Make the series registry and the restored detector state agree, within max_series.

        The registry is the authority when its file lists every series (version 2): state
        of a series it does not hold (expired, or over the cap) is dropped, so a restart
        neither resurrects expired series nor admits max_series new ones beside the old.
        From an older file (only receive-time stamps), the restored baselines register
        their series as seen now, up to the cap; the rest are dropped.
        """
        p = self.processor
        reg = p.normalizer.series
        det = p.detectors
        keys = det.series_keys()
        if reg.complete:
            drop = [k for k in keys if k not in reg]
        else:
            drop = reg.adopt(keys, time.time_ns())
        for key in drop:
            det.forget(key)
        if drop:
            log.info(
                "state: %d restored series baselines dropped (expired or over max_series)",
                len(drop),
            )

    async def save(self) -> None:
        """Snapshot in the loop, letting other tasks run between pieces; write in a thread.

        Taken whole, 10,000 series' baselines stalled the loop (and every alert) for
        ~130 ms once a minute; in pieces, a few ms at a time.
        """
        blobs: dict[str, bytes] = {}
        for name, (snap, _) in self.parts.items():
            pieces = []
            for piece in snap():
                pieces.append(piece)
                await asyncio.sleep(0)
            blobs[name] = b"".join(pieces)
        try:
            for name, data in blobs.items():
                await asyncio.to_thread(self.store.save, name, data)
        except OSError as e:
            log.warning("state: cannot save to %s: %s", self.store.dir, e.strerror)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.save()
