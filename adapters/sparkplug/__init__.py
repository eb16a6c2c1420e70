"""Sparkplug B primary host STATE (adapters/sparkplug/README.md)."""

from adapters.sparkplug.state import PrimaryHostState

__all__ = ["PrimaryHostState"]
