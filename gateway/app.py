"""The composition root: reads the settings and builds the concrete edges of a gateway.

The only module that names adapters: the MQTT broker link, the OPC UA sources, the
InfluxDB sink and the disk spool. Everything else sees them through `adapters.base`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.base import DurableSpool, Sink
from gateway.config import Settings
from gateway.daemon.commands import COMMANDS
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
    prefix = settings.alerts.topic_prefix
    commands = tuple(f"{prefix}/{c}" for c in COMMANDS)  # ack, shelve, unshelve, oos
    state = sparkplug_state(settings, m)  # Sparkplug B primary host STATE, if host_id

    def on_state(up: bool) -> None:
        m.mqtt_connected.set(1 if up else 0)
        if state is not None:
            state.link_state(up)

    def on_server(server: str) -> None:  # the link moved to another broker node
        for node in link.nodes:
            m.mqtt_server.labels(server=node).set(1 if node == server else 0)

    link = MqttLink(
        settings.mqtt,
        command_topics=(*commands, f"gateway/{settings.mqtt.client_id}/forget"),
        on_state=on_state,
        on_server=on_server,
    )
    for node in link.nodes:
        m.mqtt_server.labels(server=node).set(0)
    sources = []
    if settings.opcua.servers:
        from adapters.opcua.source import sources as opcua_sources

        sources = list(opcua_sources(settings.opcua.servers, m))
    if state is not None:
        sources.append(state)
    gw = Gateway(
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
    if settings.http_ingest.enabled:
        wire_http_ingest(gw)
    return gw


def sparkplug_state(settings: Settings, m: Metrics) -> Any:
    """`[sparkplug] host_id`: the STATE connection (adapters/sparkplug), else None."""
    if not settings.sparkplug.host_id:
        return None
    from adapters.sparkplug import PrimaryHostState

    return PrimaryHostState(
        settings.mqtt,
        settings.sparkplug.host_id,
        on_online=lambda up: m.sparkplug_state_online.set(1 if up else 0),
    )


def wire_http_ingest(gw: Gateway) -> None:
    """`[http_ingest]`: the ``http`` source's normalizer and the events of its topic.

    The endpoints (gateway/http/ingest.py) deliver messages of source ``http``; their
    normalizer shares the series registry, the duplicate memory and the physical bounds
    with MQTT, and the events path also claims `TOPIC_EVENTS` messages of source
    ``http`` (MQTT messages are claimed as before, by the MQTT event subscriptions).
    """
    from gateway.core.normalize.http_format import (
        SOURCE,
        TOPIC_EVENTS,
        HttpNormalizer,
        http_event_subscription,
    )

    s = gw.settings
    p = gw.processor

    def bounds(equipment: str, sensor: str, line: str) -> tuple[float | None, float | None]:
        rule = p.rules.resolve(equipment, sensor, line)
        return rule.min, rule.max

    p.add_source(SOURCE, HttpNormalizer(s.validation, s.http_ingest, bounds))
    p.events.also_claim(SOURCE, TOPIC_EVENTS, http_event_subscription())
