"""The Sparkplug B host's daemon side: what the pure host state decided, carried out.

`SparkplugHook` is made by the `Processor` when a subscription has ``format =
"sparkplug"``. After every batch and tick it

- appends the readings kept from the live detectors (``is_historical``, stale quality)
  to what is written, with an empty score;
- applies deaths and births to the alerts: DDEATH / matching NDEATH -> ``offline`` at
  once (status ``offline`` retained), a BIRTH -> back ``online``;
- publishes the rebirth requests (NCMD ``spBv1.0/{group}/NCMD/{node}``, QoS 0, not
  retained, as the specification asks) through the publisher;
- exports the host's counters to the ``edge_sparkplug_*`` metrics.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.core.alerts import Alert
from gateway.core.model import NO_FINDINGS, Score
from gateway.core.sparkplug import SparkplugHost, rebirth_request
from gateway.core.sparkplug.host import NAMESPACE, OFFLINE

if TYPE_CHECKING:
    from gateway.daemon.process import Processed, Processor


class SparkplugHook:
    def __init__(self, processor: Processor) -> None:
        self.p = processor
        cfg = processor.settings.sparkplug
        self.host = SparkplugHost(cfg.reorder_timeout_s, cfg.rebirth_cooldown_s, cfg.max_nodes)
        processor.normalizer.spb = self.host
        self.rebirths_sent = 0

    @classmethod
    def create(cls, processor: Processor) -> SparkplugHook | None:
        subs = processor.settings.mqtt.subscriptions
        return cls(processor) if any(s.format == "sparkplug" for s in subs) else None

    def after_batch(self, out: Processed, now: float) -> list[Alert]:
        """History readings into `out`; deaths, births and rebirths of the batch."""
        host = self.host
        if host.history:
            out.extend((r, Score(None, NO_FINDINGS)) for r in host.history)
            host.history.clear()
        if not host.signals and not host.rebirths:
            return []
        return self._apply(now)

    def tick(self, now: float, mono: float) -> list[Alert]:
        """Reorder timeouts (rebirths), and the metrics."""
        self.host.tick(mono)
        transitions = self._apply(now)
        self._export()
        return transitions

    def _apply(self, now: float) -> list[Alert]:
        host = self.host
        alerts = self.p.alerts
        transitions: list[Alert] = []
        for state, equipment, line in host.drain_signals():
            if state == OFFLINE:
                last = alerts.last_seen(equipment) or 0
                transitions.extend(alerts.offline(equipment, line, now, last))
            else:
                transitions.extend(alerts.online(equipment, now))
        rebirths = host.drain_rebirths()
        if rebirths:
            put = self.p.publisher.put
            body = rebirth_request(int(time.time() * 1000))
            count = self.p.metrics.sparkplug_rebirths.labels
            for group, node, cause in rebirths:
                put(f"{NAMESPACE}/{group}/NCMD/{node}", body, 0, False)
                count(cause).inc()
                self.rebirths_sent += 1
        return transitions

    def _export(self) -> None:
        host = self.host
        m = self.p.metrics
        for typ, n in host.messages.items():
            if n:
                m.sparkplug_messages.labels(typ).inc(n)
        host.messages.clear()
        for reason, n in host.skipped.items():
            if n:
                m.sparkplug_skipped.labels(reason).inc(n)
                host.skipped[reason] = 0
        if host.suppressed:
            m.sparkplug_rebirths_suppressed.inc(host.suppressed)
            host.suppressed = 0
        if host.stale_deaths:
            m.sparkplug_stale_deaths.inc(host.stale_deaths)
            host.stale_deaths = 0
        if host.seq_gaps:
            m.sparkplug_seq.labels("gap").inc(host.seq_gaps)
            host.seq_gaps = 0
        if host.seq_filled:
            m.sparkplug_seq.labels("filled").inc(host.seq_filled)
            host.seq_filled = 0
        if host.alias_conflicts:
            m.sparkplug_alias_conflicts.inc(host.alias_conflicts)
            host.alias_conflicts = 0
        born = sum(1 for n in host.nodes.values() if n.born)
        dead = sum(1 for n in host.nodes.values() if n.dead)
        m.sparkplug_nodes.labels("born").set(born)
        m.sparkplug_nodes.labels("dead").set(dead)
        m.sparkplug_nodes.labels("unborn").set(len(host.nodes) - born - dead)
