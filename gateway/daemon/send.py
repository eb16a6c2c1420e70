"""Send stage: spooled records to the sink in order, released once confirmed.

Batches fill up to ``[influx] batch_size`` readings or ``flush_interval_ms``. A write
that can be retried is, with capped backoff (and the server's ``Retry-After``); one
the sink will never accept is bisected until the offending lines are found, and those
are kept in ``<spool dir>/rejected.lp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from adapters.base import DurableSpool, Sink, SinkError
from gateway.config import Settings
from gateway.core.backoff import Backoff
from gateway.daemon.durable import SpoolThread
from gateway.daemon.metrics import Metrics

log = logging.getLogger("edge.pipeline")


class Sender:
    """The send task (`run`); `ok` says whether the last write succeeded."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        sink: Sink,
        spool: DurableSpool,
        thread: SpoolThread,
        spooled: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sink = sink
        self.spool = spool
        self.thread = thread
        self.spooled = spooled  # set by the durable writer when records arrive
        self.ok = True
        self.stopping = False  # set to return once the spool is empty
        self._dropped_seen = 0

    async def run(self) -> None:
        cfg = self.settings.influx
        interval = cfg.flush_interval_ms / 1000
        spool = self.spool
        spooled = self.spooled
        while True:
            self.update_spool_metrics()
            if not spool.pending_readings and not spool.peek(1):
                if self.stopping:
                    return
                spooled.clear()
                await spooled.wait()
                continue
            # let a batch fill up to batch_size, but not longer than flush_interval_ms
            deadline = time.monotonic() + interval
            while spool.pending_readings < cfg.batch_size and not self.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                spooled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(spooled.wait(), remaining)
            taken = await self.thread.run(spool.take, cfg.batch_size)
            if not taken:
                continue
            await self.send(b"\n".join(body for _, body in taken))
            records = [r for r, _ in taken]
            await self.thread.run(spool.release_many, records)
            self.metrics.readings_written.inc(sum(r.readings for r in records))

    async def send(self, body: bytes) -> None:
        """Write one body, retrying what can be retried; split what cannot."""
        cfg = self.settings.influx
        backoff = Backoff(cfg.retry_min_s, cfg.retry_max_s)
        while True:
            t0 = time.monotonic()
            try:
                await self.sink.write(body)
            except SinkError as e:
                self.metrics.write_errors.labels("true" if e.retryable else "false").inc()
                if not e.retryable:
                    await self._rejected_by_sink(body, e)
                    return
                if self.ok:
                    log.warning("sink: %s failing: %s (spooling, retrying)", self.sink.name, e)
                    self.ok = False
                    self.metrics.sink_ok.set(0)
                delay = backoff.next()
                if e.retry_after is not None:
                    delay = max(delay, e.retry_after)
                await asyncio.sleep(delay)
                continue
            self.metrics.influx_write.observe(time.monotonic() - t0)
            if not self.ok:
                log.info("sink: %s writable again", self.sink.name)
                self.ok = True
                self.metrics.sink_ok.set(1)
            return

    async def _rejected_by_sink(self, body: bytes, err: SinkError) -> None:
        """A permanent rejection: bisect to find the offending lines, file them."""
        lines = body.split(b"\n")
        if len(lines) == 1:
            spool_dir = Path(self.settings.spool.dir)
            await asyncio.to_thread(_append_rejected, spool_dir, body, str(err))
            self.metrics.sink_rejected_lines.inc()
            log.error("sink: rejected a line for good (%s); kept in rejected.lp", err)
            return
        half = len(lines) // 2
        await self.send(b"\n".join(lines[:half]))
        await self.send(b"\n".join(lines[half:]))

    def update_spool_metrics(self) -> None:
        spool = self.spool
        self.metrics.spool_bytes.set(spool.pending_bytes)
        dropped = spool.dropped_readings - self._dropped_seen
        if dropped:
            self._dropped_seen = spool.dropped_readings
            self.metrics.spool_dropped.inc(dropped)
            log.error(
                "spool: over max_bytes (%d): dropped the oldest %d readings",
                self.settings.spool.max_bytes,
                dropped,
            )


def _append_rejected(spool_dir: Path, line: bytes, why: str) -> None:
    """Lines the sink will never accept, kept for a person to look at."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(spool_dir / "rejected.lp", "ab") as f:
        f.write(f"# {stamp} {why}\n".encode() + line + b"\n")
