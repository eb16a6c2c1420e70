"""OPC UA source (asyncua): subscriptions on PLC variables -> raw messages (see README.md).

This package's top level imports no network library: the pipeline uses the
constants below to build the normalizer of source ``opcua``. The asyncua-based
modules, along the data path: `source` (`OpcuaSource`: reconnects, errors,
metrics), `session` (one connection: open, subscribe, publish handling, watchdog,
close), `security` (endpoint and certificates), `browse` (which variables),
`encoding` (value -> payload), `errors` (failure kinds).

Each data change becomes a `RawMessage` with topic ``opcua/{line}/{equipment}/{sensor}``
(``-`` as the line level when there is no line; the payload then carries
``"line": ""`` so no line tag is set) and a JSON payload in the MQTT ``json``
format: ``{"value": v, "ts": source_ts_ns, "unit": u}``, or
``{"quality": "<StatusCode name>", "ts": ...}`` for a Bad status.
"""

from __future__ import annotations

from typing import Final

from gateway.config import Subscription

SOURCE: Final = "opcua"
TOPIC_FILTER: Final = "opcua/+/+/+"
TOPIC_TEMPLATE: Final = "opcua/{line}/{equipment}/{sensor}"
NO_LINE: Final = "-"


def subscription() -> Subscription:
    """The synthetic subscription the ``opcua`` normalizer matches topics against."""
    return Subscription(topic=TOPIC_FILTER, template=TOPIC_TEMPLATE, format="json")


__all__ = ["NO_LINE", "SOURCE", "TOPIC_FILTER", "TOPIC_TEMPLATE", "subscription"]
