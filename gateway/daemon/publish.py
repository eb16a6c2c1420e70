"""Publish stage: alerts, status and dead letters to the broker, streaming, severe first.

- **Streaming**: up to `PUBLISH_WINDOW` publishes await their PUBACK at any moment; as
  one is acknowledged the next starts (a sliding window, not stop-and-wait), so a
  fresh alert never waits for a whole window to drain.
- **Severe first**: two lanes. A `raised`/`escalated` alert of severity `high` or
  `critical` goes to the urgent lane and is published before the normal lane's
  backlog (status changes, offline storms, cleared events, dead letters). Order per
  topic still holds: whatever is queued for the same topic moves ahead with it.
- **Coalescing**: a retained topic (``status/...``, ``alerts/active/...``) changed
  again before its last value went out is sent once, with the latest value
  (`coalesced` counts them).
- **At-least-once**: a publish that fails because the broker went away is sent again
  after the reconnect, before anything newer and in the order first queued, so each
  retained topic ends on its last value.

The queues are unbounded: alert transitions are few and must not be lost while the
broker is away; a storm is bounded by the number of equipment and series.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque

from adapters.base import BrokerLink, NotConnected

log = logging.getLogger("edge.pipeline")

PUBLISH_WINDOW = 256  # MQTT publishes awaiting their PUBACK at once
URGENT, NORMAL = 0, 1


class _Item:
    __slots__ = ("alive", "lane", "payload", "qos", "retain", "seq", "topic")

    def __init__(
        self, seq: int, topic: str, payload: bytes, qos: int, retain: bool, lane: int
    ) -> None:
        self.seq = seq
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.lane = lane
        self.alive = True  # False once moved to the urgent lane (a stale queue entry)

    def __lt__(self, other: _Item) -> bool:  # the retry heap: first queued first
        return self.seq < other.seq


class Publisher:
    """The outbound queues and the task that empties them (`run`); `close()` ends it."""

    def __init__(self, link: BrokerLink, window: int = PUBLISH_WINDOW) -> None:
        self.link = link
        self.window = window
        self._lanes: tuple[deque[_Item], deque[_Item]] = (deque(), deque())
        self._queued: dict[str, list[_Item]] = {}  # topic -> its queued (unsent) items
        self._retry: list[_Item] = []  # failed while the broker was away: a heap by seq
        self._seq = 0
        self._size = 0  # queued items still to send (alive ones)
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()  # also keeps the tasks alive
        self._closing = False
        self.coalesced = 0
        self.published = 0

    def put(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, urgent: bool = False
    ) -> None:
        lane = URGENT if urgent else NORMAL
        queued = self._queued.get(topic)
        if queued:
            if retain and queued[-1].retain:
                last = queued[-1]  # not sent yet: send the newest value instead, once
                last.payload = payload
                self.coalesced += 1
                if lane == URGENT and last.lane == NORMAL:
                    self._promote(queued)
                self._wake.set()
                return
            if lane == URGENT:
                self._promote(queued)  # what came first for this topic goes first
        self._seq += 1
        item = _Item(self._seq, topic, payload, qos, retain, lane)
        self._lanes[lane].append(item)
        if queued is None:
            self._queued[topic] = [item]
        else:
            queued.append(item)
        self._size += 1
        self._wake.set()

    def _promote(self, queued: list[_Item]) -> None:
        """Move a topic's queued normal-lane items to the urgent lane, in order."""
        urgent = self._lanes[URGENT]
        for i, it in enumerate(queued):
            if it.lane == NORMAL:
                it.alive = False  # its normal-lane entry is skipped
                moved = _Item(it.seq, it.topic, it.payload, it.qos, it.retain, URGENT)
                queued[i] = moved
                urgent.append(moved)

    @property
    def backlog(self) -> int:
        """Messages not yet acknowledged: queued, waiting for a retry, or in flight."""
        return self._size + len(self._retry) + len(self._inflight)

    def close(self) -> None:
        """`run` returns once everything queued before this was published."""
        self._closing = True
        self._wake.set()

    def _next(self) -> _Item | None:
        if self._retry:
            return heapq.heappop(self._retry)
        for lane in self._lanes:
            while lane:
                it = lane.popleft()
                if not it.alive:
                    continue
                self._size -= 1
                queued = self._queued.get(it.topic)
                if queued:
                    if queued[0] is it:
                        queued.pop(0)
                    else:
                        queued.remove(it)
                    if not queued:
                        del self._queued[it.topic]
                return it
        return None

    async def run(self) -> None:
        link = self.link
        inflight = self._inflight
        wake = self._wake
        barrier = False  # after a reconnect: let the old connection's publishes finish
        while True:
            if not link.connected:
                barrier = True
                await link.wait_connected()
                continue
            if barrier and inflight:
                wake.clear()
                await wake.wait()  # one of them finished (sent, or queued for a retry)
                continue
            barrier = False
            while len(inflight) < self.window:
                it = self._next()
                if it is None:
                    break
                inflight.add(asyncio.create_task(self._send(it)))
            if self._closing and not self.backlog:
                return
            wake.clear()
            await wake.wait()  # a put, or a publish finished

    async def _send(self, it: _Item) -> None:
        try:
            await self.link.publish(it.topic, it.payload, qos=it.qos, retain=it.retain)
            self.published += 1
        except NotConnected:
            heapq.heappush(self._retry, it)  # again after the reconnect, in order
        except Exception as e:  # cannot succeed on a retry
            log.error("mqtt: cannot publish to %s: %s", it.topic, e)
        finally:
            # out of the in-flight set before the loop wakes, so it sees the room
            task = asyncio.current_task()
            if task is not None:
                self._inflight.discard(task)
            self._wake.set()
