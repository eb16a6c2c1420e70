"""Sparkplug B (Eclipse Sparkplug 3.0.0) as a host application: the payload schema
(`schema`) and the per-edge-node state machine (`host`). Pure: no I/O, no clock.

README "Sparkplug B" says how metrics map to readings and what the host does.
"""

from gateway.core.sparkplug.host import SparkplugHost, rebirth_request

__all__ = ["SparkplugHost", "rebirth_request"]
