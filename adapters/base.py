"""The small interfaces between the pipeline and its I/O edges.

Sources push `RawMessage`s into a callback; sinks take one line-protocol body
at a time and raise `SinkError` saying whether a retry makes sense. The pure
core (normalize, detect, alerts) never imports this package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.model import RawMessage

# Called by a source with a batch of raw messages; awaiting it applies backpressure.
Deliver = Callable[[list[RawMessage]], Awaitable[None]]
# Called by a source when its connection state changes.
OnState = Callable[[bool], None]


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
