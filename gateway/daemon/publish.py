"""Publish stage: alerts, status and dead letters to the broker, in order.

One queue, unbounded (alert transitions are few and must not be lost while the
broker is away); up to `PUBLISH_WINDOW` publishes await their PUBACK at once.
"""

from __future__ import annotations

import asyncio
import logging

from adapters.base import BrokerLink, NotConnected

log = logging.getLogger("edge.pipeline")

PUBLISH_WINDOW = 128  # MQTT publishes awaiting their PUBACK at once

PublishItem = tuple[str, bytes, int, bool]  # topic, payload, qos, retain


class Publisher:
    """The outbound queue and the task that empties it (`run`); `close()` ends it."""

    def __init__(self, link: BrokerLink) -> None:
        self.link = link
        self._queue: asyncio.Queue[PublishItem | None] = asyncio.Queue()

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self._queue.put_nowait((topic, payload, qos, retain))

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """`run` returns once everything queued before this was published."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        """Publish in order, up to PUBLISH_WINDOW at once.

        One awaited PUBACK per message would cap this at one broker round trip per
        message; a storm of offline/online transitions (a switch reboots, 10,000
        equipment go quiet) would then delay the next spike's alert by seconds.
        What is not acknowledged is published again after a reconnect, from the
        first failure on and in order, so the last retained message stays right.
        """
        queue = self._queue
        link = self.link
        stopping = False
        while not stopping:
            item = await queue.get()
            window: list[PublishItem] = []
            while item is not None:
                window.append(item)
                if len(window) >= PUBLISH_WINDOW:
                    break
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            else:
                stopping = True
            while window:
                await link.wait_connected()
                results = await asyncio.gather(
                    *(link.publish(t, b, qos=q, retain=r) for t, b, q, r in window),
                    return_exceptions=True,
                )
                failed = next((i for i, e in enumerate(results) if e is not None), None)
                if failed is None:
                    break
                err = results[failed]
                if not isinstance(err, NotConnected):  # cannot succeed on a retry
                    log.error("mqtt: cannot publish to %s: %s", window[failed][0], err)
                    window = window[failed + 1 :]
                    continue
                window = window[failed:]
                await asyncio.sleep(0.2)
