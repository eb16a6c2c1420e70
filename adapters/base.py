"""The small interfaces between the pipeline and its I/O edges.

Sources push `RawMessage`s into a callback; sinks take one line-protocol body
at a time and raise `SinkError` saying whether a retry makes sense; the broker
link publishes (raising `NotConnected` while the broker is away) and
acknowledges; the spool keeps batches durable until the sink has them. The
daemon (`gateway.daemon`) knows the adapters only through these; the
composition root (`gateway.app`) builds the concrete ones. The pure core
(`gateway.core`) never imports this package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.core.model import RawMessage

# Called by a source with a batch of raw messages; awaiting it applies backpressure.
Deliver = Callable[[list[RawMessage]], Awaitable[None]]
# Called by a source when its connection state changes.
OnState = Callable[[bool], None]
# Called by the broker link for a message on a command topic (alerts/ack, ...).
OnCommand = Callable[[str, bytes], None]


class NotConnected(Exception):
    """Publishing while the broker is away; retry after reconnect."""


class SinkError(Exception):
    """A write that failed. `retryable` says whether sending it again can work.

    `retry_after` is the server's own hint in seconds (HTTP 429/503), if any.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Sink(Protocol):
    """Where batches of line protocol go (InfluxDB, a file, ...)."""

    name: str

    async def write(self, body: bytes) -> None:
        """Write one batch; raise SinkError on failure."""

    async def close(self) -> None: ...


class Source(Protocol):
    """Something that produces raw messages until cancelled."""

    name: str

    async def run(self, deliver: Deliver) -> None:
        """Connect, reconnect with backoff, deliver messages; return only when cancelled."""


class BrokerLink(Protocol):
    """The MQTT side: a source of raw messages that also publishes and acknowledges."""

    max_batch: int  # messages handed to `deliver` at once, at most

    @property
    def connected(self) -> bool: ...

    async def wait_connected(self) -> None: ...

    async def run(self, deliver: Deliver, on_command: OnCommand | None = None) -> None:
        """Connect, subscribe, deliver; reconnect until cancelled."""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait for the broker's acknowledgement; NotConnected if away."""

    def ack(self, messages: list[RawMessage]) -> int:
        """Acknowledge messages now durable; returns how many were acknowledged."""

    async def goodbye(self) -> None:
        """Say offline before a clean disconnect."""

    def retire_filters(self, filters: list[str]) -> None:
        """Unsubscribe these filters (subscribed by an earlier run, no longer configured)
        on every connect, so a persistent session stops delivering a moved line."""


class SpoolRecord(Protocol):
    readings: int


class SpoolRecovery(Protocol):
    records: int
    readings: int
    quarantined: int
    inflight_readings: int  # the batch being written when the last run stopped


class DurableSpool(Protocol):
    """Batches on disk until the sink confirmed them (adapters.spool.Spool)."""

    pending_bytes: int
    pending_readings: int
    dropped_readings: int

    def open(self) -> SpoolRecovery: ...

    def close(self) -> None: ...

    def append(self, body: bytes, readings: int) -> None: ...

    def sync(self) -> None: ...

    def peek(self, n: int = 1) -> Sequence[SpoolRecord]: ...

    def take(self, max_readings: int) -> Sequence[tuple[SpoolRecord, bytes]]: ...

    def release_many(self, records: list[Any]) -> None:
        """Release records this spool's `take` returned (of its own record type)."""

    def recent_bodies(self, max_readings: int) -> list[bytes]: ...


# Builds the spool: (directory, max_bytes, segment_bytes) -> spool, not yet opened.
SpoolFactory = Callable[[Path, int, int], DurableSpool]
