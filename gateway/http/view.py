"""What the HTTP side may read of a running gateway: a small read-only view.

`gateway.daemon.pipeline.Gateway` provides it; the HTTP modules import this protocol,
never the daemon, so the two do not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from gateway.core.alerts import Alert, AlertManager
from gateway.core.events import EventStore
from gateway.core.model import Reading, Score


class StatusView(Protocol):
    @property
    def latest(self) -> Mapping[tuple[str, str], tuple[Reading, Score]]: ...

    @property
    def alerts(self) -> AlertManager: ...

    @property
    def recent_alerts(self) -> Sequence[Alert]: ...

    @property
    def event_store(self) -> EventStore: ...

    @property
    def broker_connected(self) -> bool: ...

    @property
    def sink_ok(self) -> bool: ...

    @property
    def spool_ok(self) -> bool: ...

    def metrics_text(self) -> tuple[bytes, str]: ...
