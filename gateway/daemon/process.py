"""Process stage: one intake batch through the pure core, synchronously, without I/O.

normalize (`gateway.core.normalize`) -> detect (`gateway.core.detectors`) -> alerts
(`gateway.core.alerts`); production events take their own path (`gateway.core.events`).
Alert transitions and status changes go to the `Publisher`; what is to be written
(readings with their scores, alert and event lines) goes back to the pipeline.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import orjson

from gateway.config import Settings, Subscription
from gateway.core.alerts import Alert, AlertManager, iso_ms
from gateway.core.detectors import Detectors, OfflineTracker, RuleSet
from gateway.core.events import EventPath
from gateway.core.lineproto import alert_line
from gateway.core.model import (
    DEFECT_RATE,
    OFFLINE,
    REJECT_REASONS,
    RawMessage,
    Reading,
    Reject,
    Score,
)
from gateway.core.normalize import Normalizer
from gateway.core.ratelimit import TokenBucket
from gateway.daemon.metrics import Metrics
from gateway.daemon.publish import Publisher

log = logging.getLogger("edge.pipeline")

DEADLETTER_PAYLOAD_MAX = 1024
PUBLISH_BACKLOG_FOR_DEADLETTERS = 1000
RECENT_ALERTS = 1000  # alert transitions kept for GET /api/alerts?state=all
URGENT_STATES = frozenset({"raised", "escalated"})
URGENT_SEVERITIES = frozenset({"high", "critical"})

Processed = list[tuple[Reading, Score]]


class Processor:
    """The core's state for every series and equipment, and the batch step over it.

    `sources` names the other sources (e.g. ``opcua``) with the subscriptions their
    raw messages' topics follow; each gets a normalizer of its own that shares the
    series registry and the duplicate memory with the MQTT one.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        publisher: Publisher,
        sources: Mapping[str, Sequence[Subscription]] | None = None,
    ) -> None:
        s = self.settings = settings
        self.metrics = metrics
        self.publisher = publisher
        self.rules = RuleSet(s.rules)
        self.normalizer = Normalizer(
            s.mqtt.subscriptions, s.validation, bounds=self._bounds, source="mqtt"
        )
        self.others: dict[str, Normalizer] = {}
        for name, subs in (sources or {}).items():
            n = Normalizer(subs, s.validation, bounds=self._bounds, source=name)
            n.series = self.normalizer.series
            n.recent = self.normalizer.recent
            self.others[name] = n
        self.detectors = Detectors(s.detection, self.rules, s.alerts.clear_after)
        self.offline = OfflineTracker(s.alerts.offline_after_s)
        self.alerts = AlertManager(s.alerts)
        self.events = EventPath(s.mqtt.subscriptions, s.validation, s.events)
        prefix = s.alerts.topic_prefix
        self.ack_topic = f"{prefix}/ack"
        self.deadletter_topic = f"gateway/{s.mqtt.client_id}/deadletter"
        self._dl_bucket = TokenBucket(
            s.mqtt.deadletter_per_s, max(1, int(s.mqtt.deadletter_per_s)), time.monotonic()
        )
        # For the status API (gateway/http): the newest reading and score per series
        # (updated once per batch), and the last alert transitions.
        self.latest: dict[tuple[str, str], tuple[Reading, Score]] = {}
        self.recent_alerts: deque[Alert] = deque(maxlen=RECENT_ALERTS)
        m = metrics
        self._m_received = m.readings_received.labels("mqtt")
        self._m_rejected = {r: m.readings_rejected.labels(r) for r in REJECT_REASONS}

    def _bounds(self, equipment: str, sensor: str, line: str) -> tuple[float | None, float | None]:
        rule = self.rules.resolve(equipment, sensor, line)
        return rule.min, rule.max

    # ------------------------------------------------------------- commands
    def on_command(self, topic: str, payload: bytes) -> None:
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
        self.emit(transitions)

    # ---------------------------------------------------------------- batch
    def process(self, batch: list[RawMessage]) -> tuple[Processed, list[str]]:
        """Normalize, score and alert one batch; returns readings and lines to write."""
        now = time.time()
        mono = time.monotonic()
        normalize = self.normalizer.normalize
        others = self.others
        other_counts: dict[str, int] = {}
        score = self.detectors.score
        observe = self.alerts.observe
        seen_status = self.alerts.seen
        seen_offline = self.offline.seen
        out: Processed = []
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
            other = others.get(msg.source) if others else None
            if other is not None:
                readings, rejects = other.normalize(msg)
                other_counts[msg.source] = other_counts.get(msg.source, 0) + len(readings)
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
            n_other = 0
            for source, n in other_counts.items():
                if n:
                    self.metrics.readings_received.labels(source).inc(n)
                    n_other += n
            if len(out) > n_other:
                self._m_received.inc(len(out) - n_other)
            self.latest.update({(p[0].equipment, p[0].sensor): p for p in out})
            self.metrics.pipeline_latency.observe(time.monotonic() - oldest)
        detectors = self.detectors
        if detectors.episodes:
            for equipment, line, ep in detectors.drain_episodes():
                transitions.extend(self.alerts.episode(equipment, line, ep, now))
        if self.events.parser.enabled:
            transitions.extend(self._events_done(now))
        return out, self.emit(transitions) + event_lines

    def export_detector_counts(self) -> None:
        """Suppressed raises, active episodes, coalesced publishes into the metrics."""
        pub = self.publisher
        if pub.coalesced:
            self.metrics.publish_coalesced.inc(pub.coalesced)
            pub.coalesced = 0
        sup = self.detectors.suppressed
        for reason, n in sup.items():
            if n:
                self.metrics.alarms_suppressed.labels(reason).inc(n)
                sup[reason] = 0
        self.metrics.episodes_active.set(self.detectors.episodes_active)

    def tick(self, now: float, mono: float) -> list[str]:
        """Time-driven transitions (offline, escalation, defect rates aging out); lines."""
        transitions: list[Alert] = []
        for equipment, line in self.offline.check(mono):
            last = self.alerts.last_seen(equipment) or 0
            transitions.extend(self.alerts.offline(equipment, line, now, last))
        transitions.extend(self.alerts.tick(now))
        transitions.extend(self._defect_rate_tick(now))
        return self.emit(transitions)

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
        publisher = self.publisher
        for rj in rejects:
            counter = self._m_rejected.get(rj.reason)
            if counter is None:
                counter = self._m_rejected[rj.reason] = self.metrics.readings_rejected.labels(
                    rj.reason
                )
            counter.inc()
            if (
                self._dl_bucket.rate > 0
                and publisher.backlog < PUBLISH_BACKLOG_FOR_DEADLETTERS
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
                publisher.put(self.deadletter_topic, body, 0, False)
                self.metrics.deadletters.inc()
            else:
                self.metrics.deadletters_suppressed.inc()

    def emit(self, transitions: list[Alert]) -> list[str]:
        """Publish alert transitions and status changes; return their alert lines."""
        lines: list[str] = []
        self.recent_alerts.extend(transitions)
        prefix = self.settings.alerts.topic_prefix
        put = self.publisher.put
        for a in transitions:
            self.metrics.alerts.labels(a.kind, a.severity, a.state).inc()
            event = orjson.dumps(a.to_event())
            # a fresh or worse high/critical alert goes ahead of any backlog (an offline
            # storm is the backlog: its alerts keep their place)
            urgent = (
                a.state in URGENT_STATES and a.severity in URGENT_SEVERITIES and a.kind != OFFLINE
            )
            put(f"{prefix}/events/{a.equipment}/{a.sensor}", event, 1, False, urgent)
            active_topic = f"{prefix}/active/{a.equipment}/{a.sensor}/{a.kind}"
            retained = b"" if a.state == "cleared" else event
            put(active_topic, retained, 1, True, urgent)
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
            put(f"{status_prefix}/{equipment}", body, 1, True)
        if transitions:
            self.metrics.alerts_active.set(self.alerts.active_count)
        return lines
