"""Publish stage: alerts, status and dead letters to the broker, streaming, severe first.

- **Streaming, in batches**: up to `PUBLISH_WINDOW` QoS 1 publishes await their PUBACK
  at any moment; as acknowledgements arrive the room is refilled (a sliding window,
  not stop-and-wait). With a link that has a batch path (`MqttLink.stream`), what is
  taken at once goes out as one write of many PUBLISH packets, and PUBACKs come back
  as callbacks: no task, future, await or log line per message.
- **Severe first**: two lanes. A `raised`/`escalated` alert of severity `high` or
  `critical` goes to the urgent lane and is published before the normal lane's
  backlog (status changes, offline storms, cleared events, dead letters). Order per
  topic still holds: whatever is queued for the same topic moves ahead with it.
- **Paced normal lane**: past a burst of `PACE_BURST`, the normal lane goes out at
  `PACE_PER_S`. A broker acknowledges on receipt and queues, in order, whatever a
  subscriber cannot take yet; unpaced, a storm would sit in that queue ahead of the
  next critical alert, where no lane of ours can reorder it.
- **Coalescing**: a retained topic (``status/...``, ``alerts/active/...``) changed
  again before its last value went out is sent once, with the latest value
  (`coalesced` counts them).
- **At-least-once**: what was written but not acknowledged when the connection ended
  (the link hands it back in the order sent), and a publish that failed because the
  broker was away, is sent again after the reconnect, before anything newer and in
  the order first queued, so each retained topic ends on its last value (`resent`
  counts them).

The queues are unbounded: alert transitions are few and must not be lost while the
broker is away; a storm is bounded by the number of equipment and series.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from collections.abc import Callable, Sequence

from adapters.base import BrokerLink, NotConnected

log = logging.getLogger("edge.pipeline")

PUBLISH_WINDOW = 256  # MQTT publishes awaiting their PUBACK at once
# The normal lane is paced once a burst of this many went out: a broker acknowledges on
# receipt, so what a subscriber cannot take yet queues in the broker, in order, and a
# fresh critical alert would queue behind it there. At this rate a subscriber that keeps
# up sees the urgent lane's messages at once; 10,000 equipment going offline (30,000
# messages) take 1.4 s. None: not paced.
PACE_PER_S = 20_000.0
PACE_BURST = 2_000
PACE_STEP = 64  # messages per paced wakeup, at least
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


# the link's batch path: write these, return those that cannot be published (and why)
SendMany = Callable[[Sequence[_Item]], list[tuple[_Item, str]]]


class Publisher:
    """The outbound queues and the task that empties them (`run`); `close()` ends it."""

    def __init__(
        self,
        link: BrokerLink,
        window: int = PUBLISH_WINDOW,
        pace: float | None = PACE_PER_S,
        burst: int = PACE_BURST,
    ) -> None:
        self.link = link
        self.window = window
        self.pace = pace
        self.burst = burst
        self._lanes: tuple[deque[_Item], deque[_Item]] = (deque(), deque())
        self._queued: dict[str, list[_Item]] = {}  # topic -> its queued (unsent) items
        self._retry: list[_Item] = []  # failed while the broker was away: a heap by seq
        self._seq = 0
        self._size = 0  # queued items still to send (alive ones)
        self._wake = asyncio.Event()
        self._flying = 0  # written, PUBACK not yet received
        self._batch: SendMany | None = None
        self._closing = False
        self.coalesced = 0
        self.published = 0
        self.resent = 0  # unacknowledged when a connection ended: sent again
        self.failed = 0  # could not be published and never will (e.g. a bad topic)
        self._last_failure = ""

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
                if lane == URGENT and self._batch is not None:
                    self._send_urgent()
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
        if lane == URGENT and self._batch is not None:
            self._send_urgent()
        self._wake.set()

    def _send_urgent(self) -> None:
        """The urgent lane out now, from the caller: no wait for the publisher task's turn
        (the rest of the batch being processed, the writes). Not while retries wait:
        they go first."""
        send = self._batch
        if send is None or self._retry or not self.link.connected:
            return
        room = self.window - self._flying
        batch: list[_Item] = []
        while len(batch) < room:
            it = self._next(False)  # the urgent lane only (no retries: checked above)
            if it is None:
                break
            batch.append(it)
        if not batch:
            return
        try:
            bad = send(batch)
        except NotConnected:
            for it in batch:
                heapq.heappush(self._retry, it)
            return
        self._count_sent(batch, bad)

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
        return self._size + len(self._retry) + self._flying

    def close(self) -> None:
        """`run` returns once everything queued before this was published."""
        self._closing = True
        self._wake.set()

    def _next(self, normal: bool = True) -> _Item | None:
        """The next item to send: a retry, else the urgent lane, else (if `normal`) the
        normal lane."""
        if self._retry:
            return heapq.heappop(self._retry)
        for lane in self._lanes if normal else self._lanes[:1]:
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

    # ------------------------------------------------------------ callbacks
    def _acked(self, it: _Item) -> None:
        """The link: this item's PUBACK arrived."""
        self._flying -= 1
        self.published += 1
        self._wake.set()

    def _lost(self, items: list[_Item]) -> None:
        """The link: its connection ended with these unacknowledged (in send order)."""
        self._flying -= len(items)
        self.resent += len(items)
        for it in items:
            heapq.heappush(self._retry, it)  # again after the reconnect, first queued first
        self._wake.set()

    # ------------------------------------------------------------------ run
    async def run(self) -> None:
        stream = getattr(self.link, "stream", None)
        if stream is None:
            await self._run_awaiting()
            return
        send = self._batch = stream(self._acked, self._lost)
        try:
            await self._run_stream(send)
        finally:
            self._batch = None

    async def _run_stream(self, send: SendMany) -> None:
        link = self.link
        wake = self._wake
        loop = asyncio.get_running_loop()
        pace = self.pace
        tokens = float(self.burst)  # normal-lane messages that may go now
        t_tokens = loop.time()
        timer: asyncio.TimerHandle | None = None
        normal = self._lanes[NORMAL]
        while True:
            if not link.connected:
                await link.wait_connected()
                continue
            room = self.window - self._flying
            if room > 0 and (self._size or self._retry):
                if pace:
                    now = loop.time()
                    tokens = min(float(self.burst), tokens + (now - t_tokens) * pace)
                    t_tokens = now
                batch: list[_Item] = []
                take = self._next
                while len(batch) < room:
                    it = take(not pace or tokens >= 1.0)
                    if it is None:
                        break
                    if it.lane == NORMAL and pace:
                        tokens -= 1.0
                    batch.append(it)
                if batch:
                    try:
                        bad = send(batch)
                    except NotConnected:  # the link is between connections
                        for it in batch:
                            heapq.heappush(self._retry, it)
                        await asyncio.sleep(0.01)
                        continue
                    self._count_sent(batch, bad)
                if pace and normal and tokens < 1.0 and timer is None:
                    # the normal lane waits for its tokens: wake when some are back
                    delay = (min(PACE_STEP, self.burst) - tokens) / pace

                    def refill() -> None:
                        nonlocal timer
                        timer = None
                        wake.set()

                    timer = loop.call_later(delay, refill)
            if self._closing and not self.backlog:
                if timer is not None:
                    timer.cancel()
                return
            wake.clear()
            await wake.wait()  # a put, an acknowledgement, tokens, or a lost connection

    def _count_sent(self, batch: list[_Item], bad: list[tuple[_Item, str]]) -> None:
        for it in batch:
            if it.qos:
                self._flying += 1
            else:
                self.published += 1  # QoS 0: done once written
        for it, why in bad:  # cannot succeed on a retry
            if it.qos:
                self._flying -= 1
            else:
                self.published -= 1
            self._cannot(it.topic, why)

    def _cannot(self, topic: str, why: str) -> None:
        """A publish that cannot succeed on a retry: counted (`failed`); logged once per
        reason, so a burst of them is one line, not one per message."""
        self.failed += 1
        if why != self._last_failure:
            self._last_failure = why
            log.error(
                "mqtt: cannot publish to %s: %s (more of these are counted in "
                "edge_publish_failed_total, not logged)",
                topic,
                why,
            )

    async def _run_awaiting(self) -> None:
        """For a link without a batch path: one awaited `publish` task per message."""
        link = self.link
        inflight: set[asyncio.Task[None]] = set()
        wake = self._wake
        barrier = False  # after a reconnect: let the old connection's publishes finish
        while True:
            if not link.connected:
                barrier = True
                await link.wait_connected()
                continue
            if barrier and self._flying:
                wake.clear()
                await wake.wait()  # one of them finished (sent, or queued for a retry)
                continue
            barrier = False
            while self._flying < self.window:
                it = self._next()
                if it is None:
                    break
                self._flying += 1
                task = asyncio.create_task(self._send(it))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
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
            self._cannot(it.topic, str(e))
        finally:
            self._flying -= 1  # before the loop wakes, so it sees the room
            self._wake.set()
