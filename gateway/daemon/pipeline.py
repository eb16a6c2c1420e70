"""The gateway's wiring: the one place with queues and tasks.

    sources ──deliver──▶ ingest queue ──▶ process (normalize → detect → alerts)
                                            │                    │
                                            ▼                    ▼
                                       write queue          publisher (alerts,
                                            │               status, dead letters)
                               durable write (spool, fsync, ack)
                                            │
                                          sender (batches, retries the sink)

One module per stage: `process`, `durable`, `send`, `publish`, `snapshots`. Every
queue is bounded except the publish queue (alert transitions are few and must not
be lost while the broker is away). A full queue makes the stage before it wait, so
a slow sink slows intake instead of dropping data.

The pipeline knows its edges only by the interfaces in `adapters.base` (a broker
link, sources, a sink, a spool factory); `gateway.app` builds the concrete ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from adapters.base import BrokerLink, DurableSpool, Sink, Source, SpoolFactory
from gateway.config import Settings, Subscription
from gateway.core.alarms import CommandRejected
from gateway.core.alerts import Alert, AlertManager
from gateway.core.detectors import Detectors
from gateway.core.events import EventStore
from gateway.core.model import RawMessage, Reading, Score
from gateway.core.normalize import Normalizer
from gateway.core.rings import SeriesRings
from gateway.daemon.durable import (
    DurableWriter,
    SpoolThread,
    SpoolUnavailable,
    WriteItem,
    open_spool,
    remember_spooled,
)
from gateway.daemon.history import AlertHistory
from gateway.daemon.metrics import Metrics
from gateway.daemon.process import Processed, Processor, Watcher
from gateway.daemon.publish import Publisher
from gateway.daemon.send import Sender
from gateway.daemon.snapshots import Snapshots
from gateway.daemon.state import StateInUse, StateStore

__all__ = ["Gateway", "SpoolUnavailable", "StateInUse"]

log = logging.getLogger("edge.pipeline")

SUBSCRIPTIONS = "subscriptions.json"  # the filters the last run subscribed (state dir)


class Gateway:
    """One running gateway: build it with `gateway.app.build`, `await run()` until stopped.

    Also the read-only view the HTTP side uses (`gateway.http.view.StatusView`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        link: BrokerLink,
        sink: Sink | None = None,
        sources: Sequence[Source] = (),
        source_subscriptions: Mapping[str, Sequence[Subscription]] | None = None,
        spool_factory: SpoolFactory | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        s = self.settings = settings
        self.metrics = metrics or Metrics()
        self.link = link
        self.sink = sink
        self.sources = list(sources)
        self.spool_factory = spool_factory
        m = s.mqtt
        self.publisher = Publisher(link, pace=m.publish_rate_per_s or None, burst=m.publish_burst)
        self.processor = Processor(s, self.metrics, self.publisher, source_subscriptions)
        self.state = StateStore(s.spool.dir)
        self.snapshots = Snapshots(self.state, self.processor)
        # every alert transition into SQLite (gateway/daemon/history.py); None: off
        self.history: AlertHistory | None = None
        if s.history.enabled:
            self.history = AlertHistory(s.history, s.spool.dir, self.metrics.registry)
        # intake batches hold up to max_batch messages: queue_size messages in all
        self._ingest: asyncio.Queue[list[RawMessage] | None] = asyncio.Queue(
            maxsize=max(2, s.pipeline.queue_size // link.max_batch)
        )
        # processed batches waiting for the group commit; each holds up to one intake
        # batch of readings (MAX_BATCH_BYTES of payload), so 4 bound memory to tens of MB
        self._writes: asyncio.Queue[WriteItem | None] = asyncio.Queue(maxsize=4)
        self._accepting = True
        self._parked: asyncio.Future[None] | None = None
        self.spool: DurableSpool | None = None
        self._thread = SpoolThread()
        self.sender: Sender | None = None
        self.started = asyncio.Event()
        self._m_messages = self.metrics.messages_received.labels("mqtt")

    # ------------------------------------------------ the core, for callers
    @property
    def normalizer(self) -> Normalizer:
        return self.processor.normalizer

    @property
    def detectors(self) -> Detectors:
        return self.processor.detectors

    @property
    def alerts(self) -> AlertManager:
        return self.processor.alerts

    def process(self, batch: list[RawMessage]) -> tuple[Processed, list[str]]:
        """Normalize, score and alert one batch; synchronous, no I/O."""
        return self.processor.process(batch)

    # --------------------------------------------------- read-only status view
    @property
    def latest(self) -> dict[tuple[str, str], tuple[Reading, Score]]:
        return self.processor.latest

    @property
    def recent_alerts(self) -> deque[Alert]:
        return self.processor.recent_alerts

    @property
    def event_store(self) -> EventStore:
        return self.processor.events.store

    @property
    def rings(self) -> SeriesRings:
        return self.processor.rings

    def command(self, name: str, cmd: dict[str, Any]) -> CommandRejected | None:
        """An operator command from HTTP: as MQTT's (checks, audit, counters)."""
        return self.processor.commands.apply(name, cmd)

    def is_shelved(self, equipment: str, sensor: str, kind: str) -> bool:
        return self.processor.alarms.is_shelved(equipment, sensor, kind)

    def watch(self, fn: Watcher) -> Callable[[], None]:
        """Call `fn` with every emit's transitions and status changes; returns unwatch."""
        watchers = self.processor.watchers
        watchers.append(fn)
        return lambda: watchers.remove(fn) if fn in watchers else None

    def metrics_text(self) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type."""
        return self.metrics.render(), self.metrics.content_type

    @property
    def broker_connected(self) -> bool:
        return self.link.connected

    @property
    def sink_ok(self) -> bool:
        """The last sink write succeeded (or nothing failed yet, or no sink)."""
        return self.sink is None or self.sender is None or self.sender.ok

    @property
    def spool_ok(self) -> bool:
        """The disk spool is open and taking batches."""
        return self.spool is not None

    @property
    def ready(self) -> bool:
        """Broker connected, and the sink writable or the spool taking batches."""
        return self.link.connected and (self.sink_ok or self.spool_ok)

    # ---------------------------------------------------------------- intake
    async def deliver(self, batch: list[RawMessage]) -> None:
        """Called by sources; waits while the pipeline is full or stopping."""
        if not self._accepting:
            if self._parked is None:
                self._parked = asyncio.get_running_loop().create_future()
            await self._parked
        if batch and batch[0].source != "mqtt":
            self.metrics.messages_received.labels(batch[0].source).inc(len(batch))
        else:
            self._m_messages.inc(len(batch))
        await self._ingest.put(batch)

    async def _process_loop(self) -> None:
        process = self.processor.process
        while True:
            item = await self._ingest.get()
            if item is None:
                await self._writes.put(None)
                return
            out, lines = process(item)
            await self._writes.put((out, lines, item))

    # ------------------------------------------------------------------ tick
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.tick()

    def tick(self) -> None:
        p = self.processor
        lines = p.tick(time.time(), time.monotonic())
        if lines:
            with contextlib.suppress(asyncio.QueueFull):
                self._writes.put_nowait(([], lines, []))
        m = self.metrics
        m.series_active.set(p.detectors.series_count)
        p.export_detector_counts()
        m.alerts_active.set(p.alerts.active_count)
        m.queue_depth.labels("ingest").set(self._ingest.qsize())
        m.queue_depth.labels("write").set(self._writes.qsize())
        m.queue_depth.labels("publish").set(self.publisher.backlog)
        # also while the sender sits in a retry loop (sink down), when it cannot
        if self.sender is not None:
            self.sender.update_spool_metrics()

    # ----------------------------------------------------------------- state
    def _retire_filters(self) -> None:
        """Subscriptions an earlier run had that the config no longer has (a line moved to
        another gateway): their filters are unsubscribed from the persistent session at
        every connect, and what it still delivers of them is stored but not scored
        (`Processor.retire`). They stay listed as retired (an unsubscribe of a filter
        the session no longer has is harmless), so a run that never reached the broker
        does not forget them; one configured again is no longer retired."""
        now = self.settings.mqtt.subscriptions
        topics = {s.topic for s in now}
        try:
            doc = orjson.loads(self.state.load(SUBSCRIPTIONS) or b"{}")
            had = [Subscription(**d) for d in doc.get("subscriptions", ())]
            had += [Subscription(**d) for d in doc.get("retired", ())]
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError) as e:
            log.warning("state: %s unreadable (%s): no filter is unsubscribed", SUBSCRIPTIONS, e)
            had = []
        gone = list({s.topic: s for s in had if s.topic not in topics}.values())
        if gone:
            self.link.retire_filters([s.topic for s in gone])
            self.processor.retire(gone)
        dump = [s.model_dump(exclude={"shard"}) for s in now]
        retired = [s.model_dump(exclude={"shard"}) for s in gone]
        self.state.save(SUBSCRIPTIONS, orjson.dumps({"subscriptions": dump, "retired": retired}))

    def restore_state(self) -> None:
        self.snapshots.restore()

    async def save_state(self) -> None:
        await self.snapshots.save()

    # ------------------------------------------------------------- lifecycle
    async def open_spool(self) -> None:
        """Open (and recover) the disk spool when there is a sink; raises SpoolUnavailable."""
        if self.sink is None or self.spool_factory is None:
            return
        spool = await open_spool(self.settings, self.spool_factory, self._thread, self.metrics)
        self.spool = spool
        await self._thread.run(remember_spooled, spool, self.processor.normalizer.recent)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain and return; raises StateInUse when another
        gateway (or `edge-gateway state import`) holds this spool dir's state."""
        self.state.lock()
        try:
            self._retire_filters()
            await self._run(stop)
        finally:
            self.state.unlock()

    async def _run(self, stop: asyncio.Event) -> None:
        from gateway.http.server import start_http

        await self.open_spool()
        self.restore_state()
        runner = None
        if self.history is not None:
            if await self.history.start():
                self.processor.watchers.append(self.history.record)
            else:
                self.history = None
        if self.settings.http.enabled:
            try:
                runner = await start_http(self, self.settings.http.host, self.settings.http.port)
            except OSError:
                if self.history is not None:
                    await self.history.close()
                raise
        self.metrics.mqtt_connected.set(0)
        self.metrics.sink_ok.set(1)
        writer = DurableWriter(self.settings, self.metrics, self.link, self.spool, self._thread)
        self.processor.expiry.lines = writer.lines  # its cache of expired series is pruned
        stages = [
            asyncio.create_task(self._process_loop(), name="process"),
            asyncio.create_task(writer.run(self._writes), name="spool"),
        ]
        sender_task = None
        if self.spool is not None and self.sink is not None:
            self.sender = Sender(
                self.settings, self.metrics, self.sink, self.spool, self._thread, writer.spooled
            )
            self.sender.update_spool_metrics()
            sender_task = asyncio.create_task(self.sender.run(), name="send")
        publisher = asyncio.create_task(self.publisher.run(), name="publish")
        others = [
            asyncio.create_task(
                self.link.run(self.deliver, self.processor.on_command), name="mqtt"
            ),
            asyncio.create_task(self._tick_loop(), name="tick"),
            asyncio.create_task(
                self.snapshots.run(self.settings.spool.snapshot_interval_s), name="snapshot"
            ),
        ]
        others += [
            asyncio.create_task(src.run(self.deliver), name=f"source {src.name}")
            for src in self.sources
        ]
        self.started.set()
        log.info("gateway: started (client_id %s)", self.settings.mqtt.client_id)
        watched = {*stages, publisher, *others} | ({sender_task} if sender_task else set())
        stop_wait = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stop_wait, *watched}, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stop_wait and not t.cancelled() and t.exception() is not None:
                log.error("gateway: task %s failed: %r", t.get_name(), t.exception())
        stop_wait.cancel()
        await self._drain(stages, sender_task, publisher)
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self.save_state()
        if self.spool is not None:
            await self._thread.run(self.spool.close)
        self._thread.shutdown()
        if self.history is not None:
            await self.history.close()  # after the drain's last transitions
        if runner is not None:
            await runner.cleanup()
        if self.sink is not None:
            await self.sink.close()
        log.info("gateway: stopped")

    async def _drain(
        self,
        stages: list[asyncio.Task[None]],
        sender_task: asyncio.Task[None] | None,
        publisher: asyncio.Task[None],
    ) -> None:
        """Stop intake; make in-flight readings durable; send what time allows."""
        deadline = self.settings.pipeline.shutdown_timeout_s
        self._accepting = False
        process, spooler = stages
        sender = self.sender
        try:
            async with asyncio.timeout(deadline):
                if not process.done():
                    await self._ingest.put(None)
                    await process
                if not spooler.done():
                    await spooler  # everything received is now in the spool, and acked
                self.tick()
                if self.link.connected and not publisher.done():
                    self.publisher.close()
                    await publisher
                # (a failing sink is not waited for: the spool keeps the data)
                if sender_task is not None and sender is not None and sender.ok:
                    sender.stopping = True
                    sender.spooled.set()
                    await sender_task
                await self.link.goodbye()
        except TimeoutError:
            left = self.spool.pending_readings if self.spool is not None else 0
            log.warning(
                "gateway: shutdown deadline %.0f s reached; %d readings stay in the spool "
                "for the next start",
                deadline,
                left,
            )
        tasks = [*stages, publisher] + ([sender_task] if sender_task else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
