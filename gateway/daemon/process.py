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
from collections.abc import Callable, Iterable, Mapping, Sequence

import orjson

from gateway.config import Settings, Subscription
from gateway.core.alarms import Annunciator, priority_mix
from gateway.core.alerts import Alert, AlertManager, iso_ms
from gateway.core.detectors import Detectors, OfflineTracker, RuleSet
from gateway.core.events import EventPath
from gateway.core.lineproto import alert_line
from gateway.core.model import (
    DEFECT_RATE,
    NO_FINDINGS,
    OFFLINE,
    REJECT_REASONS,
    AlarmPolicy,
    RawMessage,
    Reading,
    Reject,
    Score,
)
from gateway.core.normalize import Normalizer
from gateway.core.ratelimit import TokenBucket
from gateway.core.rings import SeriesRings
from gateway.daemon.commands import AlarmCommands
from gateway.daemon.expiry import Forgetting
from gateway.daemon.metrics import Metrics
from gateway.daemon.publish import Publisher
from gateway.daemon.sparkplug import SparkplugHook

UNSCORED = Score(None, NO_FINDINGS)  # a reading stored without detection

log = logging.getLogger("edge.pipeline")

DEADLETTER_PAYLOAD_MAX = 1024
PUBLISH_BACKLOG_FOR_DEADLETTERS = 1000
RECENT_ALERTS = 1000  # alert transitions kept for GET /api/alerts?state=all
URGENT_STATES = frozenset({"raised", "escalated"})
URGENT_SEVERITIES = frozenset({"high", "critical"})

Processed = list[tuple[Reading, Score]]
# (alert transitions, status changes (equipment, status, last_seen ns)) of one emit
Watcher = Callable[[list[Alert], list[tuple[str, str, int]]], None]


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
            self.add_source(name, Normalizer(subs, s.validation, bounds=self._bounds, source=name))
        self.detectors = Detectors(s.detection, self.rules, s.alerts.clear_after)
        self.offline = OfflineTracker(s.alerts.offline_after_s)
        self.alerts = AlertManager(s.alerts, self._policy)
        self.alarms = Annunciator(s.alerts, self.alerts)  # what reaches the operator
        mix = priority_mix([r.priority for r in s.rules])
        if mix is not None:
            log.warning("%s", mix)
        self.events = EventPath(s.mqtt.subscriptions, s.validation, s.events)
        prefix = s.alerts.topic_prefix
        self.commands = AlarmCommands(prefix, self.alerts, self.alarms, metrics, self.emit)
        self._signal_at = (0, 0.0)  # (newest reading ts, gateway time it arrived)
        self.deadletter_topic = f"gateway/{s.mqtt.client_id}/deadletter"
        self._dl_bucket = TokenBucket(
            s.mqtt.deadletter_per_s, max(1, int(s.mqtt.deadletter_per_s)), time.monotonic()
        )
        # For the status API (gateway/http): the newest reading and score per series
        # (updated once per batch), and the last alert transitions.
        self.latest: dict[tuple[str, str], tuple[Reading, Score]] = {}
        self.recent_alerts: deque[Alert] = deque(maxlen=RECENT_ALERTS)
        # recent readings per series for the page's charts (`latest` is updated with them)
        self.rings = SeriesRings(s.http.series_points)
        # told every alert transition and status change, after publishing (history, SSE)
        self.watchers: list[Watcher] = []
        m = metrics
        self._m_received = m.readings_received.labels("mqtt")
        self._m_rejected = {r: m.readings_rejected.labels(r) for r in REJECT_REASONS}
        self.expiry = Forgetting(self)  # idle series, forgotten equipment (issue 20)
        self.sparkplug = SparkplugHook.create(self)  # format sparkplug (issue 15)
        self._live_subs = len(s.mqtt.subscriptions)  # indexes past it: retired ones
        self.retired_readings = 0

    def retire(self, subscriptions: Sequence[Subscription]) -> None:
        """Subscriptions an earlier run had and the config no longer has (a line moved to
        another gateway). The link numbers them after the configured ones and the MQTT
        normalizer reads them with their own templates; what their persistent session
        still delivers is stored, but neither scored nor alerted nor tracked, so this
        gateway raises nothing (not even `offline`) for equipment it no longer owns."""
        self.normalizer.add_subscriptions(subscriptions)

    def add_source(self, name: str, normalizer: Normalizer) -> None:
        """Normalize raw messages of source `name` with `normalizer`, sharing the series
        registry (max_series) and the duplicate memory with the MQTT one."""
        normalizer.series = self.normalizer.series
        normalizer.recent = self.normalizer.recent
        self.others[name] = normalizer

    def _policy(self, equipment: str, sensor: str, line: str) -> AlarmPolicy:
        return self.rules.resolve(equipment, sensor, line).policy

    def _bounds(self, equipment: str, sensor: str, line: str) -> tuple[float | None, float | None]:
        rule = self.rules.resolve(equipment, sensor, line)
        return rule.min, rule.max

    # ------------------------------------------------------------- commands
    def on_command(self, topic: str, payload: bytes) -> None:
        if topic == self.expiry.forget_topic:  # written with the next batch, audited
            self.commands.lines.extend(self.expiry.command(payload))
            return
        self.commands.handle(topic, payload)  # ack, shelve, unshelve, oos

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
        live_subs = self._live_subs
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
            if msg.subscription >= live_subs and other is None:  # a moved line's leftovers
                if readings and not self.retired_readings:
                    log.info(
                        "mqtt: readings on %s, no longer configured, are stored but "
                        "not scored (a moved line's last readings)",
                        msg.topic,
                    )
                self.retired_readings += len(readings)
                out.extend((r, UNSCORED) for r in readings)
                continue
            for r in readings:
                if seen_offline(r.equipment, r.line, mono):
                    transitions.extend(self.alerts.online(r.equipment, now))
                seen_status(r.equipment, r.ts)
                sc = score(r)
                t = observe(r, sc, now)
                if t:
                    transitions.extend(t)
                out.append((r, sc))
        if self.sparkplug is not None:  # history readings, deaths, births, rebirths
            transitions.extend(self.sparkplug.after_batch(out, now))
        if out:
            n_other = 0
            for source, n in other_counts.items():
                if n:
                    self.metrics.readings_received.labels(source).inc(n)
                    n_other += n
            if len(out) > n_other:
                self._m_received.inc(len(out) - n_other)
            self.rings.record(out, self.latest)  # and `latest`
            self.metrics.pipeline_latency.observe(time.monotonic() - oldest)
        if out:  # the readings' clock, for chattering and flood windows
            newest = out[-1][0].ts
            if newest > self._signal_at[0]:
                self._signal_at = (newest, now)
                self.alarms.advance(newest)
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
        if pub.resent:
            self.metrics.publish_resent.inc(pub.resent)
            pub.resent = 0
        if pub.failed:
            self.metrics.publish_failed.inc(pub.failed)
            pub.failed = 0
        m = self.metrics
        for sup in (self.detectors.suppressed, self.alerts.suppressed, self.alarms.suppressed):
            for reason, n in sup.items():
                if n:
                    m.alarms_suppressed.labels(reason).inc(n)
                    sup[reason] = 0
        m.episodes_active.set(self.detectors.episodes_active)
        self._export_alarm_kpis(time.time())

    def _export_alarm_kpis(self, now: float) -> None:
        """The alarm-management KPIs (ISA-18.2) from the annunciator's counters."""
        m, al = self.metrics, self.alarms
        for (line, priority), n in al.annunciations.items():
            m.alarm_annunciations.labels(line, priority).inc(n)
        al.annunciations.clear()
        for line, secs in al.flood_seconds.items():
            m.alarm_flood_seconds.labels(line).inc(secs)
        al.flood_seconds.clear()
        for line, active in al.floods().items():
            m.alarm_flood_active.labels(line).set(1 if active else 0)
        if al.fleeting:
            m.alarms_fleeting.inc(al.fleeting)
            al.fleeting = 0
        for secs in al.ack_seconds:
            m.alarm_ack_seconds.observe(secs)
        al.ack_seconds.clear()
        m.alarms_chattering.set(al.chattering)
        m.alarms_shelved.set(al.shelved)
        m.alarms_stale.set(al.stale_count(now))
        by_state: dict[tuple[str, str], int] = {}
        for a in self.alerts.iter_active():
            k = (a.priority or a.severity, a.state)
            by_state[k] = by_state.get(k, 0) + 1
        for priority in ("low", "medium", "high", "critical"):
            for state in ("raised", "escalated", "acknowledged", "returned"):
                m.alarms_by_state.labels(priority, state).set(by_state.get((priority, state), 0))

    def tick(self, now: float, mono: float) -> list[str]:
        """Time-driven transitions (offline, escalation, defect rates aging out); lines."""
        transitions: list[Alert] = []
        for equipment, line in self.offline.check(mono):
            last = self.alerts.last_seen(equipment) or 0
            transitions.extend(self.alerts.offline(equipment, line, now, last))
        transitions.extend(self.alerts.tick(now))
        if self.sparkplug is not None:  # reorder timeouts, edge_sparkplug_* metrics
            transitions.extend(self.sparkplug.tick(now, mono))
        signal, at = self._signal_at
        if signal and now - at > 1.0:  # no newer reading: the readings' clock runs on
            self.alarms.advance(signal + int((now - at) * 1e9))
        self.alarms.tick(now)
        transitions.extend(self._defect_rate_tick(now))
        return self.emit(transitions) + self.expiry.tick(now)

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
        """Route alert transitions through alarm management, publish what it lets
        through (and the retained topics it keeps) and status changes; return the
        alert lines of every transition, with why it was not annunciated, if not."""
        lines = self.commands.drain() if self.commands.lines else []
        self.recent_alerts.extend(transitions)
        route = self.alarms.route
        count = self.metrics.alerts.labels
        for a in transitions:
            count(a.kind, a.severity, a.state).inc()
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
                    priority=a.priority,
                    suppressed=route(a),
                )
            )
        prefix = self.settings.alerts.topic_prefix
        put = self.publisher.put
        for p in self.alarms.drain():
            b = p.alert
            if b is None:  # shelved/, oos/, flood/, or an active/ topic withdrawn
                put(f"{prefix}/{p.topic}", p.body, 1, True)
                continue
            event = orjson.dumps(b.to_event())
            # a fresh or worse high/critical alert goes ahead of any backlog (an offline
            # storm is the backlog: its alerts keep their place)
            urgent = (
                b.state in URGENT_STATES and b.severity in URGENT_SEVERITIES and b.kind != OFFLINE
            )
            put(f"{prefix}/events/{b.equipment}/{b.sensor}", event, 1, False, urgent)
            active_topic = f"{prefix}/active/{b.equipment}/{b.sensor}/{b.kind}"
            retained = b"" if b.state == "cleared" else event
            put(active_topic, retained, 1, True, urgent)
        status_prefix = self.settings.alerts.status_prefix
        changes = self.alerts.drain_status_changes()
        for equipment, status, last_seen_ns in changes:
            body = orjson.dumps(
                {"equipment": equipment, "status": status, "last_seen": iso_ms(last_seen_ns)}
            )
            put(f"{status_prefix}/{equipment}", body, 1, True)
        if self.watchers and (transitions or changes):
            for watch in self.watchers:
                watch(transitions, changes)
        if transitions:
            self.metrics.alerts_active.set(self.alerts.active_count)
        return lines
