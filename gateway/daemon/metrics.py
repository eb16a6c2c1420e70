"""Every Prometheus metric the gateway exports (SPEC §8).

One `Metrics` object per gateway, each with its own registry, so several
gateways can live in one process (tests) without colliding. Hot-path code
increments counters once per batch, never once per reading.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.core.model import REJECT_REASONS

# `*_created` samples only add noise to a scrape of a long-running daemon.
disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
WRITE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.readings_received = Counter(
            "edge_readings_received_total",
            "Readings accepted from a source",
            ["source"],
            registry=r,
        )
        self.messages_received = Counter(
            "edge_messages_received_total",
            "Raw messages taken from a source",
            ["source"],
            registry=r,
        )
        self.readings_rejected = Counter(
            "edge_readings_rejected_total", "Inputs rejected, by reason", ["reason"], registry=r
        )
        for reason in REJECT_REASONS:
            self.readings_rejected.labels(reason)
        self.readings_written = Counter(
            "edge_readings_written_total", "Readings confirmed written to the sink", registry=r
        )
        self.write_errors = Counter(
            "edge_influx_write_errors_total",
            "Failed sink writes, by whether a retry makes sense",
            ["retryable"],
            registry=r,
        )
        self.deadletters = Counter(
            "edge_deadletter_published_total",
            "Rejects published to the dead-letter topic",
            registry=r,
        )
        self.deadletters_suppressed = Counter(
            "edge_deadletter_suppressed_total",
            "Rejects not published because of the dead-letter rate limit",
            registry=r,
        )
        self.alerts = Counter(
            "edge_alerts_total",
            "Alert transitions",
            ["kind", "severity", "state"],
            registry=r,
        )
        self.events = Counter(
            "edge_events_total",
            "Production events accepted, by result (stored, duplicate, update)",
            ["result"],
            registry=r,
        )
        for result in ("stored", "duplicate", "update"):
            self.events.labels(result)
        self.acks_unknown = Counter(
            "edge_alert_acks_rejected_total", "Acknowledgements for unknown alerts", registry=r
        )
        self.alerts_active = Gauge("edge_alerts_active", "Alerts currently active", registry=r)
        self.alarms_suppressed = Counter(
            "edge_alarms_suppressed_total",
            "Alert transitions not annunciated, by reason: on_delay (shorter than its "
            "on-delay), chatter, flood, shelved, oos (out of service), by_design (its "
            "equipment is offline, or the transition is part of an equipment episode)",
            ["reason"],
            registry=r,
        )
        for reason in ("on_delay", "chatter", "flood", "shelved", "oos", "by_design"):
            self.alarms_suppressed.labels(reason)
        # alarm-management KPIs (ISA-18.2 / EEMUA 191), docs/alarms.md
        self.alarm_annunciations = Counter(
            "edge_alarm_annunciations_total",
            "Alert raises published to the operator",
            ["line", "priority"],
            registry=r,
        )
        self.alarm_flood_active = Gauge(
            "edge_alarm_flood_active", "1 while the line is in alarm flood", ["line"], registry=r
        )
        self.alarm_flood_seconds = Counter(
            "edge_alarm_flood_seconds_total",
            "Reading time the line spent in alarm flood",
            ["line"],
            registry=r,
        )
        self.alarms_chattering = Gauge(
            "edge_alarms_chattering", "Alert points currently chattering", registry=r
        )
        self.alarms_fleeting = Counter(
            "edge_alarms_fleeting_total",
            "Alerts raised and returned within fleeting_s without an ack",
            registry=r,
        )
        self.alarms_stale = Gauge(
            "edge_alarms_stale", "Alerts active longer than stale_after_s", registry=r
        )
        self.alarms_shelved = Gauge("edge_alarms_shelved", "Alert points shelved", registry=r)
        self.alarms_by_state = Gauge(
            "edge_alarms_active",
            "Active alerts by priority and state",
            ["priority", "state"],
            registry=r,
        )
        self.alarm_ack_seconds = Histogram(
            "edge_alarm_ack_seconds",
            "Time from raise to acknowledgement",
            buckets=(5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400),
            registry=r,
        )
        self.alarm_commands_rejected = Counter(
            "edge_alarm_commands_rejected_total",
            "Operator commands (ack, shelve, unshelve, oos) rejected, by reason",
            ["reason"],
            registry=r,
        )
        self.publish_coalesced = Counter(
            "edge_publish_coalesced_total",
            "Retained status/active-alert publishes replaced by a newer value before sending",
            registry=r,
        )
        self.publish_resent = Counter(
            "edge_publish_resent_total",
            "Publishes unacknowledged when a broker connection ended, sent again after it",
            registry=r,
        )
        self.publish_failed = Counter(
            "edge_publish_failed_total",
            "Publishes the broker link refused for good (not retried), e.g. an invalid topic",
            registry=r,
        )
        self.episodes_active = Gauge(
            "edge_equipment_episodes_active",
            "Equipment with an active multivariate or drift episode",
            registry=r,
        )
        self.series_active = Gauge("edge_series_active", "Distinct series seen", registry=r)
        self.series_expired = Counter(
            "edge_series_expired_total",
            "Series forgotten: idle (no reading for series_idle_s), room (let go by a full "
            "registry to admit a new series)",
            ["reason"],
            registry=r,
        )
        for reason in ("idle", "room"):
            self.series_expired.labels(reason)
        self.pipeline_latency = Histogram(
            "edge_pipeline_latency_seconds",
            "Receive to detected, per batch of readings",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.influx_write = Histogram(
            "edge_influx_write_seconds",
            "Duration of one sink write",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.spool_bytes = Gauge("edge_spool_bytes", "Bytes waiting in the disk spool", registry=r)
        self.spool_dropped = Counter(
            "edge_spool_dropped_readings_total",
            "Readings dropped because the spool reached max_bytes",
            registry=r,
        )
        self.spool_resent = Counter(
            "edge_spool_resent_readings_total",
            "Readings sent again at start-up because their write was in flight when the "
            "gateway stopped (the store may have them already)",
            registry=r,
        )
        self.spool_quarantined = Counter(
            "edge_spool_quarantined_segments_total",
            "Damaged spool segments moved aside at start-up",
            registry=r,
        )
        self.sink_rejected_lines = Counter(
            "edge_influx_rejected_lines_total",
            "Lines the sink refused for good (kept in <spool dir>/rejected.lp)",
            registry=r,
        )
        self.queue_depth = Gauge(
            "edge_queue_depth", "Items waiting in a pipeline queue", ["queue"], registry=r
        )
        self.mqtt_connected = Gauge(
            "edge_mqtt_connected", "1 while connected to the MQTT broker", registry=r
        )
        # Which broker node the link is on ([mqtt] servers): 1 for the node of the current
        # (or last) connection, 0 for the others; edge_mqtt_connected says if it is up.
        self.mqtt_server = Gauge(
            "edge_mqtt_server",
            "1 for the MQTT broker node of the current or last connection, 0 for the others",
            ["server"],
            registry=r,
        )
        self.opcua_connected = Gauge(
            "edge_opcua_connected",
            "1 while connected to an OPC UA server",
            ["endpoint"],
            registry=r,
        )
        self.opcua_errors = Counter(
            "edge_opcua_errors_total",
            "OPC UA connection failures, by kind (connect, certificate, login, watchdog, ...)",
            ["endpoint", "kind"],
            registry=r,
        )
        self.opcua_monitored_items = Gauge(
            "edge_opcua_monitored_items",
            "Monitored items active in the current OPC UA session",
            ["endpoint"],
            registry=r,
        )
        self.sink_ok = Gauge(
            "edge_influx_up", "1 while the last write to the sink succeeded", registry=r
        )
        self._sparkplug_metrics(r)

    def _sparkplug_metrics(self, r: CollectorRegistry) -> None:
        """Sparkplug B host application (gateway/daemon/sparkplug.py, README "Sparkplug B")."""
        self.sparkplug_messages = Counter(
            "edge_sparkplug_messages_total",
            "Sparkplug B messages seen, by type (NBIRTH, NDATA, DDEATH, STATE, ...)",
            ["type"],
            registry=r,
        )
        self.sparkplug_rebirths = Counter(
            "edge_sparkplug_rebirths_total",
            "Rebirth requests (NCMD Node Control/Rebirth) sent, by cause",
            ["cause"],
            registry=r,
        )
        self.sparkplug_rebirths_suppressed = Counter(
            "edge_sparkplug_rebirths_suppressed_total",
            "Rebirth requests held back: one already asked within the cooldown",
            registry=r,
        )
        self.sparkplug_skipped = Counter(
            "edge_sparkplug_values_skipped_total",
            "Sparkplug metric values that are not readings, by reason (string, null, ...)",
            ["reason"],
            registry=r,
        )
        self.sparkplug_stale_deaths = Counter(
            "edge_sparkplug_stale_deaths_total",
            "NDEATHs ignored: bdSeq of an older session, or of a node never seen born",
            registry=r,
        )
        self.sparkplug_seq = Counter(
            "edge_sparkplug_seq_total",
            "Sparkplug seq events: gaps opened, missing messages filled within the timeout",
            ["event"],
            registry=r,
        )
        self.sparkplug_alias_conflicts = Counter(
            "edge_sparkplug_alias_conflicts_total",
            "BIRTH aliases already bound to another metric of the same edge node",
            registry=r,
        )
        self.sparkplug_nodes = Gauge(
            "edge_sparkplug_nodes", "Sparkplug edge nodes known, by state", ["state"], registry=r
        )
        self.sparkplug_state_online = Gauge(
            "edge_sparkplug_state_online",
            "1 while this gateway's Sparkplug STATE says online (host_id set)",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
