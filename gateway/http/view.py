"""What the HTTP side may read of a running gateway: a small read-only view.

`gateway.daemon.pipeline.Gateway` provides it; the HTTP modules import this protocol,
never the daemon, so the two do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.core.alarms import CommandRejected
from gateway.core.alerts import Alert, AlertManager
from gateway.core.events import EventStore
from gateway.core.model import RawMessage, Reading, Score
from gateway.core.rings import SeriesRings


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


class HasRegistry(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class IngestView(StatusView, Protocol):
    """What HTTP ingest (`gateway.http.ingest`) also needs: settings, metrics, `deliver`."""

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> HasRegistry: ...

    async def deliver(self, batch: list[RawMessage]) -> None:
        """Hand a batch to the pipeline; waits while it is full."""


# (alert transitions, status changes (equipment, status, last_seen ns)) of one emit
Watcher = Callable[[list[Alert], list[tuple[str, str, int]]], None]


class HistoryView(Protocol):
    """The alert history (`gateway.daemon.history.AlertHistory`)."""

    async def query(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        equipment: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...


class OperatorView(StatusView, Protocol):
    """What the operator page and its API (`gateway.http.api`) also need."""

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> HasRegistry: ...

    @property
    def rings(self) -> SeriesRings: ...

    @property
    def history(self) -> HistoryView | None: ...

    def command(self, name: str, cmd: dict[str, Any]) -> CommandRejected | None:
        """Apply an operator command as MQTT does (`AlarmCommands.apply`)."""

    def is_shelved(self, equipment: str, sensor: str, kind: str) -> bool: ...

    def watch(self, fn: Watcher) -> Callable[[], None]:
        """Call `fn` after every emit with transitions or status changes; returns unwatch."""
