"""The gateway's wiring: the one place with queues and tasks.

    source ──deliver──▶ ingest queue ──▶ process (normalize → detect → alerts)
                                            │                    │
                                            ▼                    ▼
                                       write queue         publish queue
                                            │                    │
                                     writer (batches,      publisher (alerts,
                                     retries the sink)     status, dead letters)

Every queue is bounded except the publish queue (alert transitions are few
and must not be lost while the broker is away). A full queue makes the stage
before it wait, so a slow sink slows intake instead of dropping data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import orjson

from adapters.base import Sink, SinkError
from adapters.mqtt import MAX_BATCH, MqttLink, NotConnected
from adapters.opcua import subscription as opcua_subscription
from adapters.spool import Spool
from gateway.alerts import Alert, AlertManager, iso_ms
from gateway.backoff import Backoff
from gateway.config import Settings
from gateway.detect import Detectors, OfflineTracker, RuleSet
from gateway.events import EventPath
from gateway.lineproto import ReadingLines, alert_line, reading_keys
from gateway.metrics import Metrics
from gateway.model import DEFECT_RATE, REJECT_REASONS, RawMessage, Reading, Reject, Score
from gateway.normalize import Normalizer
from gateway.ratelimit import TokenBucket
from gateway.state import StateStore

log = logging.getLogger("edge.pipeline")
T = TypeVar("T")

DEADLETTER_PAYLOAD_MAX = 1024
PUBLISH_BACKLOG_FOR_DEADLETTERS = 1000
PUBLISH_WINDOW = 128  # MQTT publishes awaiting their PUBACK at once
RECENT_ALERTS = 1000
SEGMENT_BYTES = 16 << 20  # spool segment files
SEGMENT_MIN_BYTES = 64 << 10  # alert transitions kept for GET /api/alerts?state=all

# Queue items; None in a queue means "stop after what came before".
WriteItem = tuple[list[tuple[Reading, Score]], list[str], list[RawMessage]]  # + to ack
PublishItem = tuple[str, bytes, int, bool]  # topic, payload, qos, retain


class Gateway:
    """One running gateway: build it from Settings, `await run()` until stopped."""

    def __init__(
        self,
        settings: Settings,
        *,
        sink: Sink | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        s = self.settings = settings
        self.metrics = metrics or Metrics()
        self.rules = RuleSet(s.rules)
        self.normalizer = Normalizer(
            s.mqtt.subscriptions, s.validation, bounds=self._bounds, source="mqtt"
        )
        # OPC UA data changes arrive as opcua/{line}/{equipment}/{sensor} JSON messages
        # (adapters/opcua); max_series and de-duplication are shared with MQTT.
        self.opcua_normalizer = Normalizer(
            [opcua_subscription()], s.validation, bounds=self._bounds, source="opcua"
        )
        self.opcua_normalizer.series = self.normalizer.series
        self.opcua_normalizer.recent = self.normalizer.recent
        self.detectors = Detectors(s.detection, self.rules)
        self.offline = OfflineTracker(s.alerts.offline_after_s)
        self.alerts = AlertManager(s.alerts)
        self.events = EventPath(s.mqtt.subscriptions, s.validation, s.events)
        if sink is None and s.influx.enabled:
            from adapters.influx import InfluxSink

            sink = InfluxSink(s.influx)
        self.sink = sink
        prefix = s.alerts.topic_prefix
        self.ack_topic = f"{prefix}/ack"
        self.deadletter_topic = f"gateway/{s.mqtt.client_id}/deadletter"
        self.mqtt = MqttLink(s.mqtt, command_topics=(self.ack_topic,), on_state=self._mqtt_state)
        self.lines = ReadingLines()
        self.state = StateStore(s.spool.dir)
        # intake batches hold up to MAX_BATCH messages: queue_size messages in all
        self._ingest: asyncio.Queue[list[RawMessage] | None] = asyncio.Queue(
            maxsize=max(2, s.pipeline.queue_size // MAX_BATCH)
        )
        # processed batches waiting for the group commit; each holds up to one intake
        # batch of readings (MAX_BATCH_BYTES of payload), so 8 bound memory to tens of MB
        self._writes: asyncio.Queue[WriteItem | None] = asyncio.Queue(maxsize=4)
        self._publish: asyncio.Queue[PublishItem | None] = asyncio.Queue()
        self._accepting = True
        self._parked: asyncio.Future[None] | None = None
        self._sink_ok = True
        self.spool: Spool | None = None
        self.spool_dir: Path | None = None
        self._spool_thread = ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._spooled = asyncio.Event()  # set when the spool has new records
        self._stopping = False
        self._dropped_seen = 0
        self._dl_bucket = TokenBucket(
            s.mqtt.deadletter_per_s, max(1, int(s.mqtt.deadletter_per_s)), time.monotonic()
        )
        self.started = asyncio.Event()
        # For the status API (gateway/http.py): the newest reading and score per
        # series (updated once per batch), and the last alert transitions.
        self.latest: dict[tuple[str, str], tuple[Reading, Score]] = {}
        self.recent_alerts: deque[Alert] = deque(maxlen=RECENT_ALERTS)
        m = self.metrics
        self._m_received = m.readings_received.labels("mqtt")
        self._m_messages = m.messages_received.labels("mqtt")
        self._m_rejected = {r: m.readings_rejected.labels(r) for r in REJECT_REASONS}

    # ----------------------------------------------------------------- state
    def _bounds(self, equipment: str, sensor: str, line: str) -> tuple[float | None, float | None]:
        rule = self.rules.resolve(equipment, sensor, line)
        return rule.min, rule.max

    def _mqtt_state(self, up: bool) -> None:
        self.metrics.mqtt_connected.set(1 if up else 0)

    @property
    def sink_ok(self) -> bool:
        """The last sink write succeeded (or nothing failed yet, or no sink)."""
        return self.sink is None or self._sink_ok

    @property
    def spool_ok(self) -> bool:
        """The disk spool is open and taking batches."""
        return self.spool is not None

    @property
    def ready(self) -> bool:
        """Broker connected, and the sink writable or the spool taking batches."""
        return self.mqtt.connected and (self.sink_ok or self.spool_ok)

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

    def _on_command(self, topic: str, payload: bytes) -> None:
        if topic != self.ack_topic:
            return
        try:
            cmd = orjson.loads(payload)
            alert_id = str(cmd["id"])
            by = str(cmd.get("by") or "unknown")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            self.metrics.acks_unknown.inc()
            log.warning("alerts: ignored malformed ack on %s", topic)
            return
        transitions = self.alerts.acknowledge(alert_id, by, time.time())
        if not transitions:
            self.metrics.acks_unknown.inc()
        self._emit(transitions)

    # --------------------------------------------------------------- process
    async def _process_loop(self) -> None:
        while True:
            item = await self._ingest.get()
            if item is None:
                await self._writes.put(None)
                return
            out, alert_lines = self.process(item)
            await self._writes.put((out, alert_lines, item))

    def process(self, batch: list[RawMessage]) -> tuple[list[tuple[Reading, Score]], list[str]]:
        """Normalize, score and alert one batch; synchronous, no I/O."""
        now = time.time()
        mono = time.monotonic()
        normalize = self.normalizer.normalize
        normalize_opcua = self.opcua_normalizer.normalize
        n_opcua = 0
        score = self.detectors.score
        observe = self.alerts.observe
        seen_status = self.alerts.seen
        seen_offline = self.offline.seen
        out: list[tuple[Reading, Score]] = []
        transitions: list[Alert] = []
        oldest = batch[0].received if batch else mono
        claim = self.events.claim  # format = "event" topics take the events path
        event_lines: list[str] = []
        for msg in batch:
            levels = claim(msg)
            if levels is not None:
                rejects = self.events.ingest(msg, levels, event_lines)
                if rejects:
                    self._rejected(rejects, mono)
                continue
            if msg.source == "opcua":
                readings, rejects = normalize_opcua(msg)
                n_opcua += len(readings)
            else:
                readings, rejects = normalize(msg)
            if rejects:
                self._rejected(rejects, mono)
            for r in readings:
                if seen_offline(r.equipment, r.line, mono):
                    transitions.extend(self.alerts.online(r.equipment, now))
                seen_status(r.equipment, r.ts)
                sc = score(r)
                t = observe(r, sc, now)
                if t:
                    transitions.extend(t)
                out.append((r, sc))
        if out:
            if n_opcua:
                self.metrics.readings_received.labels("opcua").inc(n_opcua)
            if len(out) > n_opcua:
                self._m_received.inc(len(out) - n_opcua)
            self.latest.update({(p[0].equipment, p[0].sensor): p for p in out})
            self.metrics.pipeline_latency.observe(time.monotonic() - oldest)
        if self.events.parser.enabled:
            transitions.extend(self._events_done(now))
        return out, self._emit(transitions) + event_lines

    def _events_done(self, now: float) -> list[Alert]:
        """Count a batch's events; re-check the defect rate of the machines it touched."""
        counts, touched = self.events.drain()
        for result, n in counts.items():
            if n:
                self.metrics.events.labels(result).inc(n)
        out: list[Alert] = []
        now_ns = int(now * 1e9)
        threshold = self.settings.events.warning_rate_per_h
        for machine, (line, newest) in touched.items():
            if newest:
                self.alerts.seen(machine, newest)
            rate = self.events.rate(machine, now_ns)
            out.extend(self.alerts.defect_rate(machine, line, rate, threshold, now))
        return out

    def _defect_rate_tick(self, now: float) -> list[Alert]:
        """Clear defect_rate alerts of machines whose defects aged out of the window."""
        out: list[Alert] = []
        threshold = self.settings.events.warning_rate_per_h
        for a in self.alerts.active():
            if a.kind == DEFECT_RATE:
                rate = self.events.rate(a.equipment, int(now * 1e9))
                out.extend(self.alerts.defect_rate(a.equipment, a.line, rate, threshold, now))
        return out

    def _rejected(self, rejects: Iterable[Reject], mono: float) -> None:
        for rj in rejects:
            counter = self._m_rejected.get(rj.reason)
            if counter is None:
                counter = self._m_rejected[rj.reason] = self.metrics.readings_rejected.labels(
                    rj.reason
                )
            counter.inc()
            if (
                self._dl_bucket.rate > 0
                and self._publish.qsize() < PUBLISH_BACKLOG_FOR_DEADLETTERS
                and self._dl_bucket.take(mono)
            ):
                body = orjson.dumps(
                    {
                        "reason": rj.reason,
                        "detail": rj.detail,
                        "topic": rj.topic,
                        "payload": rj.payload[:DEADLETTER_PAYLOAD_MAX].decode("utf-8", "replace"),
                        "ts": time.time(),
                    }
                )
                self._publish.put_nowait((self.deadletter_topic, body, 0, False))
                self.metrics.deadletters.inc()
            else:
                self.metrics.deadletters_suppressed.inc()

    def _emit(self, transitions: list[Alert]) -> list[str]:
        """Publish alert transitions and status changes; return their alert lines."""
        lines: list[str] = []
        self.recent_alerts.extend(transitions)
        prefix = self.settings.alerts.topic_prefix
        for a in transitions:
            self.metrics.alerts.labels(a.kind, a.severity, a.state).inc()
            event = orjson.dumps(a.to_event())
            self._publish.put_nowait((f"{prefix}/events/{a.equipment}/{a.sensor}", event, 1, False))
            active_topic = f"{prefix}/active/{a.equipment}/{a.sensor}/{a.kind}"
            retained = b"" if a.state == "cleared" else event
            self._publish.put_nowait((active_topic, retained, 1, True))
            lines.append(
                alert_line(
                    equipment=a.equipment,
                    sensor=a.sensor,
                    kind=a.kind,
                    severity=a.severity,
                    state=a.state,
                    alert_id=a.id,
                    message=a.message,
                    value=a.value,
                    z=a.z,
                    threshold=a.threshold,
                    ts_ns=int(a.updated_at * 1e9),
                )
            )
        status_prefix = self.settings.alerts.status_prefix
        for equipment, status, last_seen_ns in self.alerts.drain_status_changes():
            body = orjson.dumps(
                {"equipment": equipment, "status": status, "last_seen": iso_ms(last_seen_ns)}
            )
            self._publish.put_nowait((f"{status_prefix}/{equipment}", body, 1, True))
        if transitions:
            self.metrics.alerts_active.set(self.alerts.active_count)
        return lines

    # ----------------------------------------------------------------- write
    async def _spool_loop(self) -> None:
        """Group-commit: append what is queued to the spool, fsync once, then ack."""
        spool = self.spool
        stopping = False
        while not stopping:
            item = await self._writes.get()
            group: list[WriteItem] = []
            while item is not None:
                group.append(item)
                if sum(len(g[0]) for g in group) >= self.settings.influx.batch_size:
                    break
                try:
                    item = self._writes.get_nowait()
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
                self.mqtt.ack(messages)
                continue
            body = self.lines.build(readings)
            if alert_lines:
                extra = "\n".join(alert_lines).encode()
                body = body + b"\n" + extra if body else extra
            await self._in_spool_thread(self._append_durably, body, len(readings))
            self.mqtt.ack(messages)
            self._spooled.set()

    def _append_durably(self, body: bytes, readings: int) -> None:
        assert self.spool is not None
        self.spool.append(body, readings)
        self.spool.sync()

    async def _in_spool_thread(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._spool_thread, fn, *args)

    async def _send_loop(self) -> None:
        """Send spooled records to the sink in order; release each once confirmed."""
        assert self.spool is not None and self.sink is not None
        cfg = self.settings.influx
        interval = cfg.flush_interval_ms / 1000
        spool = self.spool
        while True:
            self._update_spool_metrics()
            if not spool.pending_readings and not spool.peek(1):
                if self._stopping:
                    return
                self._spooled.clear()
                await self._spooled.wait()
                continue
            # let a batch fill up to batch_size, but not longer than flush_interval_ms
            deadline = time.monotonic() + interval
            while spool.pending_readings < cfg.batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._spooled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spooled.wait(), remaining)
            taken = await self._in_spool_thread(spool.take, cfg.batch_size)
            if not taken:
                continue
            await self._send(b"\n".join(body for _, body in taken))
            records = [r for r, _ in taken]
            await self._in_spool_thread(spool.release_many, records)
            self.metrics.readings_written.inc(sum(r.readings for r in records))

    async def _send(self, body: bytes) -> None:
        """Write one body, retrying what can be retried; split what cannot."""
        assert self.sink is not None
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
                if self._sink_ok:
                    log.warning("sink: %s failing: %s (spooling, retrying)", self.sink.name, e)
                    self._sink_ok = False
                    self.metrics.sink_ok.set(0)
                delay = backoff.next()
                if e.retry_after is not None:
                    delay = max(delay, e.retry_after)
                await asyncio.sleep(delay)
                continue
            self.metrics.influx_write.observe(time.monotonic() - t0)
            if not self._sink_ok:
                log.info("sink: %s writable again", self.sink.name)
                self._sink_ok = True
                self.metrics.sink_ok.set(1)
            return

    async def _rejected_by_sink(self, body: bytes, err: SinkError) -> None:
        """A permanent rejection: bisect to find the offending lines, file them."""
        lines = body.split(b"\n")
        if len(lines) == 1:
            assert self.spool_dir is not None
            await asyncio.to_thread(_append_rejected, self.spool_dir, body, str(err))
            self.metrics.sink_rejected_lines.inc()
            log.error("sink: rejected a line for good (%s); kept in rejected.lp", err)
            return
        half = len(lines) // 2
        await self._send(b"\n".join(lines[:half]))
        await self._send(b"\n".join(lines[half:]))

    def _update_spool_metrics(self) -> None:
        spool = self.spool
        if spool is None:
            return
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

    # --------------------------------------------------------------- publish
    async def _publish_loop(self) -> None:
        """Publish alerts, status and dead letters in order, up to PUBLISH_WINDOW at once.

        One awaited PUBACK per message would cap this at one broker round trip per
        message; a storm of offline/online transitions (a switch reboots, 10,000
        equipment go quiet) would then delay the next spike's alert by seconds.
        What is not acknowledged is published again after a reconnect, from the
        first failure on and in order, so the last retained message stays right.
        """
        queue = self._publish
        stopping = False
        while not stopping:
            item = await queue.get()
            window: list[PublishItem] = []
            while item is not None:
                window.append(item)
                if len(window) >= PUBLISH_WINDOW:
                    break
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            else:
                stopping = True
            while window:
                await self.mqtt.wait_connected()
                results = await asyncio.gather(
                    *(self.mqtt.publish(t, b, qos=q, retain=r) for t, b, q, r in window),
                    return_exceptions=True,
                )
                failed = next((i for i, e in enumerate(results) if e is not None), None)
                if failed is None:
                    break
                err = results[failed]
                if not isinstance(err, NotConnected):  # cannot succeed on a retry
                    log.error("mqtt: cannot publish to %s: %s", window[failed][0], err)
                    window = window[failed + 1 :]
                    continue
                window = window[failed:]
                await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ tick
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.tick()

    def tick(self) -> None:
        now = time.time()
        transitions: list[Alert] = []
        for equipment, line in self.offline.check(time.monotonic()):
            last = self.alerts.last_seen(equipment) or 0
            transitions.extend(self.alerts.offline(equipment, line, now, last))
        transitions.extend(self.alerts.tick(now))
        transitions.extend(self._defect_rate_tick(now))
        lines = self._emit(transitions)
        if lines:
            with contextlib.suppress(asyncio.QueueFull):
                self._writes.put_nowait(([], lines, []))
        m = self.metrics
        m.series_active.set(self.detectors.series_count)
        m.alerts_active.set(self.alerts.active_count)
        m.queue_depth.labels("ingest").set(self._ingest.qsize())
        m.queue_depth.labels("write").set(self._writes.qsize())
        m.queue_depth.labels("publish").set(self._publish.qsize())
        # also while the sender sits in a retry loop (sink down), when it cannot
        self._update_spool_metrics()

    # ----------------------------------------------------------------- state
    def _state_parts(
        self,
    ) -> dict[str, tuple[Callable[[], Iterable[bytes]], Callable[[bytes], object]]]:
        """name -> (snapshot as pieces of bytes, restore)."""
        return {
            "detectors.json": (self.detectors.snapshot_chunks, self.detectors.restore),
            "alerts.json": (lambda: (self.alerts.snapshot(),), self.alerts.restore),
            "events.json": (self.events.store.snapshot_chunks, self.events.store.restore),
            "equipment.json": (
                lambda: (self.offline.snapshot(),),
                lambda data: self.offline.restore(data, time.monotonic()),
            ),
            "series.json": (
                lambda: (self.normalizer.series.stamps_snapshot(),),
                self.normalizer.series.restore_stamps,
            ),
        }

    def restore_state(self) -> None:
        for name, (_, restore) in self._state_parts().items():
            data = self.state.load(name)
            if data is None:
                continue
            try:
                restore(data)
            except ValueError as e:
                self.state.quarantine(name, str(e))
        if self.detectors.series_count or self.alerts.active_count:
            log.info(
                "state: restored %d series baselines and %d active alerts",
                self.detectors.series_count,
                self.alerts.active_count,
            )

    async def save_state(self) -> None:
        """Snapshot in the loop, letting other tasks run between pieces; write in a thread.

        Taken whole, 10,000 series' baselines stalled the loop (and every alert) for
        ~130 ms once a minute; in pieces, a few ms at a time.
        """
        blobs: dict[str, bytes] = {}
        for name, (snap, _) in self._state_parts().items():
            pieces = []
            for piece in snap():
                pieces.append(piece)
                await asyncio.sleep(0)
            blobs[name] = b"".join(pieces)
        try:
            for name, data in blobs.items():
                await asyncio.to_thread(self.state.save, name, data)
        except OSError as e:
            log.warning("state: cannot save to %s: %s", self.state.dir, e.strerror)

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.spool.snapshot_interval_s)
            await self.save_state()

    # ------------------------------------------------------------- lifecycle
    async def open_spool(self) -> None:
        """Open (and recover) the disk spool; raises SpoolUnavailable."""
        if self.sink is None:
            return
        from adapters.spool import Spool

        self.spool_dir = Path(self.settings.spool.dir)
        max_bytes = self.settings.spool.max_bytes
        # segments of at most 1/8 of the bound: the sent history kept (two segments)
        # stays small beside it
        segment = min(SEGMENT_BYTES, max(SEGMENT_MIN_BYTES, max_bytes // 8))
        spool = Spool(self.spool_dir / "spool", max_bytes, segment_bytes=segment)
        try:
            rec = await self._in_spool_thread(spool.open)
        except OSError as e:
            raise SpoolUnavailable(
                f"spool: cannot use {self.spool_dir} ({e.strerror}); set [spool] dir "
                "to a writable directory"
            ) from None
        self.spool = spool
        await self._in_spool_thread(self._remember_spooled, spool)
        if rec.quarantined:
            self.metrics.spool_quarantined.inc(rec.quarantined)
        if rec.records:
            log.info(
                "spool: %d readings in %d batches left by the last run; replaying",
                rec.readings,
                rec.records,
            )
        self._update_spool_metrics()

    def _remember_spooled(self, spool: Spool) -> None:
        """Seed the duplicate memory with the newest readings the spool holds or sent.

        After a crash the broker redelivers QoS 1 messages that were durable here but
        whose PUBACK never reached it; remembered, their readings are `duplicate`s
        instead of being written twice. Runs before the broker connection opens.
        """
        recent = self.normalizer.recent
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
                "spool: %d recent readings remembered as seen (%.2f s), so redeliveries "
                "are recognised",
                n,
                time.monotonic() - t0,
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain and return."""
        from gateway.http import start_http

        await self.open_spool()
        self.restore_state()
        runner = None
        if self.settings.http.enabled:
            runner = await start_http(self, self.settings.http.host, self.settings.http.port)
        self.metrics.mqtt_connected.set(0)
        self.metrics.sink_ok.set(1)
        stages = [
            asyncio.create_task(self._process_loop(), name="process"),
            asyncio.create_task(self._spool_loop(), name="spool"),
        ]
        sender = None
        if self.spool is not None:
            sender = asyncio.create_task(self._send_loop(), name="send")
        publisher = asyncio.create_task(self._publish_loop(), name="publish")
        others = [
            asyncio.create_task(self.mqtt.run(self.deliver, self._on_command), name="mqtt"),
            asyncio.create_task(self._tick_loop(), name="tick"),
            asyncio.create_task(self._snapshot_loop(), name="snapshot"),
        ]
        if self.settings.opcua.servers:
            from adapters.opcua.source import sources

            others += [
                asyncio.create_task(src.run(self.deliver), name=f"opcua {src.endpoint}")
                for src in sources(self.settings.opcua.servers, self.metrics)
            ]
        self.started.set()
        log.info("gateway: started (client_id %s)", self.settings.mqtt.client_id)
        watched = {*stages, publisher, *others} | ({sender} if sender else set())
        stop_wait = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stop_wait, *watched}, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stop_wait and not t.cancelled() and t.exception() is not None:
                log.error("gateway: task %s failed: %r", t.get_name(), t.exception())
        stop_wait.cancel()
        await self._drain(stages, sender, publisher)
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self.save_state()
        if self.spool is not None:
            await self._in_spool_thread(self.spool.close)
        self._spool_thread.shutdown(wait=True)
        if runner is not None:
            await runner.cleanup()
        if self.sink is not None:
            await self.sink.close()
        log.info("gateway: stopped")

    async def _drain(
        self,
        stages: list[asyncio.Task[None]],
        sender: asyncio.Task[None] | None,
        publisher: asyncio.Task[None],
    ) -> None:
        """Stop intake; make in-flight readings durable; send what time allows."""
        deadline = self.settings.pipeline.shutdown_timeout_s
        self._accepting = False
        process, spooler = stages
        try:
            async with asyncio.timeout(deadline):
                if not process.done():
                    await self._ingest.put(None)
                    await process
                if not spooler.done():
                    await spooler  # everything received is now in the spool, and acked
                self.tick()
                if self.mqtt.connected and not publisher.done():
                    self._publish.put_nowait(None)
                    await publisher
                if sender is not None and not sender.done() and self._sink_ok:
                    # (a failing sink is not waited for: the spool keeps the data)
                    self._stopping = True
                    self._spooled.set()
                    await sender
                await self.mqtt.goodbye()
        except TimeoutError:
            left = self.spool.pending_readings if self.spool is not None else 0
            log.warning(
                "gateway: shutdown deadline %.0f s reached; %d readings stay in the spool "
                "for the next start",
                deadline,
                left,
            )
        tasks = [*stages, publisher] + ([sender] if sender else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SpoolUnavailable(Exception):
    """The spool directory cannot be used; the message says what to change."""


def _append_rejected(spool_dir: Path, line: bytes, why: str) -> None:
    """Lines the sink will never accept, kept for a person to look at."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(spool_dir / "rejected.lp", "ab") as f:
        f.write(f"# {stamp} {why}\n".encode() + line + b"\n")
