"""Durable-write stage: group commit to the spool, then acknowledge the messages.

Processed batches queue here; everything queued at a moment is appended to the spool
and fsynced once, and only then are the MQTT messages those readings came from
acknowledged (docs/reliability.md "The path of one QoS 1 message") and the HTTP
requests they came from answered (`settle`: the `Completion`s in `conn`). Also opens the
spool at start-up and rebuilds the duplicate memory from its newest records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from adapters.base import BrokerLink, DurableSpool, SpoolFactory, SpoolRecovery
from gateway.config import Settings
from gateway.core.lineproto import ReadingLines, reading_keys
from gateway.core.model import Completion, RawMessage, Reading, Score
from gateway.core.series import RecentKeys
from gateway.daemon.metrics import Metrics

log = logging.getLogger("edge.pipeline")
T = TypeVar("T")

SEGMENT_BYTES = 16 << 20  # spool segment files
SEGMENT_MIN_BYTES = 64 << 10

# A processed batch: readings with scores, alert/event lines, the messages to ack.
WriteItem = tuple[list[tuple[Reading, Score]], list[str], list[RawMessage]]


class SpoolUnavailable(Exception):
    """The spool directory cannot be used; the message says what to change."""


class SpoolThread:
    """The one thread every spool call runs on (the spool is not thread-safe)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="spool")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


async def open_spool(
    settings: Settings, factory: SpoolFactory, thread: SpoolThread, metrics: Metrics
) -> DurableSpool:
    """Open (and recover) the disk spool; raises SpoolUnavailable."""
    spool_dir = Path(settings.spool.dir)
    max_bytes = settings.spool.max_bytes
    # segments of at most 1/8 of the bound: the sent history kept (two segments)
    # stays small beside it
    segment = min(SEGMENT_BYTES, max(SEGMENT_MIN_BYTES, max_bytes // 8))
    spool = factory(spool_dir / "spool", max_bytes, segment)
    try:
        rec: SpoolRecovery = await thread.run(spool.open)
    except OSError as e:
        raise SpoolUnavailable(
            f"spool: cannot use {spool_dir} ({e.strerror}); set [spool] dir to a writable directory"
        ) from None
    if rec.quarantined:
        metrics.spool_quarantined.inc(rec.quarantined)
    if rec.inflight_readings:
        metrics.spool_resent.inc(rec.inflight_readings)
        log.warning(
            "spool: %d readings were being written when the gateway stopped; sending them "
            "again (InfluxDB keeps one point each; VictoriaMetrics may keep them twice)",
            rec.inflight_readings,
        )
    if rec.records:
        log.info(
            "spool: %d readings in %d batches left by the last run; replaying",
            rec.readings,
            rec.records,
        )
    return spool


def remember_spooled(spool: DurableSpool, recent: RecentKeys) -> None:
    """Seed the duplicate memory with the newest readings the spool holds or sent.

    After a crash the broker redelivers QoS 1 messages that were durable here but
    whose PUBACK never reached it; remembered, their readings are `duplicate`s
    instead of being written twice. Runs before the broker connection opens.
    """
    if not recent.capacity:
        return
    t0 = time.monotonic()
    n = 0
    for body in spool.recent_bodies(recent.capacity):
        for key in reading_keys(body):
            recent.seen_before(key)
            n += 1
    if n:
        log.info(
            "spool: %d recent readings remembered as seen (%.2f s), so redeliveries are recognised",
            n,
            time.monotonic() - t0,
        )


def settle(group: list[WriteItem], why: str | None) -> None:
    """Resolve the `Completion`s riding on a group's batches (HTTP ingest): durable, or why not.

    Only the first message of each batch is looked at: a source puts completions on
    every message of its batches or on none, so MQTT pays one check per batch.
    """
    for g in group:
        msgs = g[2]
        if msgs and isinstance(msgs[0].conn, Completion):
            for m in msgs:
                c = m.conn
                if isinstance(c, Completion):
                    if why is None:
                        c.durable()
                    else:
                        c.failed(why)


class DurableWriter:
    """The group-commit task (`run`); `spooled` is set whenever new records are on disk."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        link: BrokerLink,
        spool: DurableSpool | None,
        thread: SpoolThread,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.link = link
        self.spool = spool
        self.thread = thread
        self.lines = ReadingLines(z_threshold=settings.detection.threshold_sigma)
        self.spooled = asyncio.Event()

    async def run(self, writes: asyncio.Queue[WriteItem | None]) -> None:
        spool = self.spool
        batch_size = self.settings.influx.batch_size
        stopping = False
        while not stopping:
            item = await writes.get()
            group: list[WriteItem] = []
            while item is not None:
                group.append(item)
                if sum(len(g[0]) for g in group) >= batch_size:
                    break
                try:
                    item = writes.get_nowait()
                except asyncio.QueueEmpty:
                    break
            else:
                stopping = True
            if not group:
                continue
            readings = [r for g in group for r in g[0]]
            alert_lines = [line for g in group for line in g[1]]
            messages = [m for g in group for m in g[2]]
            if spool is None:  # no sink: nothing to make durable
                self.metrics.readings_written.inc(len(readings))
                self.link.ack(messages)
                settle(group, None)
                continue
            body = self.lines.build(readings)
            if alert_lines:
                extra = "\n".join(alert_lines).encode()
                body = body + b"\n" + extra if body else extra
            try:
                await self.thread.run(self._append_durably, spool, body, len(readings))
            except BaseException as e:
                settle(group, f"spool unavailable ({type(e).__name__})")
                raise
            self.link.ack(messages)
            self.spooled.set()
            settle(group, None)

    @staticmethod
    def _append_durably(spool: DurableSpool, body: bytes, readings: int) -> None:
        spool.append(body, readings)
        spool.sync()
