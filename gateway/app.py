"""The composition root: reads the settings and builds the concrete edges of a gateway.

The only module that names adapters: the MQTT broker link, the OPC UA sources, the
InfluxDB sink and the disk spool. Everything else sees them through `adapters.base`.
"""

from __future__ import annotations

from pathlib import Path

from adapters.base import DurableSpool, Sink
from gateway.config import Settings
from gateway.daemon.metrics import Metrics
from gateway.daemon.pipeline import Gateway


def spool_factory(directory: Path, max_bytes: int, segment_bytes: int) -> DurableSpool:
    from adapters.spool import Spool

    return Spool(directory, max_bytes, segment_bytes=segment_bytes)


def build(
    settings: Settings, *, sink: Sink | None = None, metrics: Metrics | None = None
) -> Gateway:
    """A gateway for `settings`; `sink` replaces the configured InfluxDB (tests, demo)."""
    from adapters.mqtt import MqttLink
    from adapters.opcua import SOURCE as OPCUA
    from adapters.opcua import subscription as opcua_subscription

    m = metrics or Metrics()
    if sink is None and settings.influx.enabled:
        from adapters.influx import InfluxSink

        sink = InfluxSink(settings.influx)
    ack_topic = f"{settings.alerts.topic_prefix}/ack"
    link = MqttLink(
        settings.mqtt,
        command_topics=(ack_topic,),
        on_state=lambda up: m.mqtt_connected.set(1 if up else 0),
    )
    sources = []
    if settings.opcua.servers:
        from adapters.opcua.source import sources as opcua_sources

        sources = list(opcua_sources(settings.opcua.servers, m))
    return Gateway(
        settings,
        link=link,
        sink=sink,
        sources=sources,
        # OPC UA data changes arrive as opcua/{line}/{equipment}/{sensor} JSON messages
        # (adapters/opcua); max_series and de-duplication are shared with MQTT.
        source_subscriptions={OPCUA: [opcua_subscription()]},
        spool_factory=spool_factory,
        metrics=m,
    )
