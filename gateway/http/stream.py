"""``GET /api/stream``: server-sent events for the operator page.

Events (``event:`` name, ``data:`` one JSON object):

- ``hello``: on connect, ``{"series": [...]}`` (what this client follows);
- ``alert``: an alert transition, as ``/api/alerts`` shows an alert;
- ``status``: an equipment status change ``{"equipment", "status", "last_seen"}``;
- ``reading``: new points of a followed series ``{"equipment", "sensor", "points":
  [[ts_ms, value, anomaly], ...]}`` (``?series=eq/sensor,eq/sensor``, at most
  `MAX_SERIES`), looked up in the series rings every `READINGS_EVERY_S`;
- ``resync``: more happened at once than is worth sending one by one (an alert storm:
  more than `RESYNC_OVER` transitions in one step), or this client fell behind:
  re-read ``/api/alerts`` and ``/api/equipment``.

The pipeline's emit only appends the transitions to a list (and only while someone
listens); the hub's own task encodes and fans them out, so a slow or absent page
never holds up alert publishing. A client with more than `CLIENT_BACKLOG` events
unsent gets a ``resync`` instead of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.core.alerts import Alert, iso_ms
from gateway.core.rings import Ring
from gateway.http.view import OperatorView

MAX_SERIES = 64
READINGS_EVERY_S = 0.25
KEEPALIVE_S = 15.0
RESYNC_OVER = 500
CLIENT_BACKLOG = 2000


def _iso_s(epoch_s: float) -> str:
    return iso_ms(round(epoch_s * 1000) * 1_000_000)


def alert_json(a: Alert, shelved: bool = False) -> dict[str, Any]:
    """An alert as the API shows it: the SPEC §6 event, ``updated_at``, ``shelved``."""
    doc = a.to_event()
    doc["updated_at"] = _iso_s(a.updated_at)
    doc["shelved"] = shelved
    return doc


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


RESYNC = sse("resync", {})


class Client:
    def __init__(self, series: list[tuple[str, str]]) -> None:
        self.series = series
        self.seen: dict[tuple[str, str], int] = {}
        self.out: list[bytes] = []
        self.wake = asyncio.Event()
        self.resync = False

    def push(self, chunk: bytes) -> None:
        if self.resync:
            return
        if len(self.out) >= CLIENT_BACKLOG:
            self.out = []
            self.resync = True
        else:
            self.out.append(chunk)
        self.wake.set()


class StreamHub:
    """The SSE clients of one app, fed from the gateway's emits and series rings."""

    def __init__(self, gw: OperatorView, max_clients: int) -> None:
        self.gw = gw
        self.max_clients = max_clients
        self.clients: set[Client] = set()
        self._pending: list[Alert] = []
        self._changes: list[tuple[str, str, int]] = []
        self._unwatch: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._kick: asyncio.Event | None = None
        self.closing = False

    # ------------------------------------------------------------ pipeline
    def on_emit(self, transitions: list[Alert], changes: list[tuple[str, str, int]]) -> None:
        """The gateway's watcher: keep references, wake the hub's task."""
        if not self.clients:
            return
        self._pending.extend(transitions)
        self._changes.extend(changes)
        if self._kick is not None:
            self._kick.set()

    def broadcast(self, event: str, data: Any) -> None:
        chunk = sse(event, data)
        for c in self.clients:
            c.push(chunk)

    # ----------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._kick = asyncio.Event()
        self._unwatch = self.gw.watch(self.on_emit)
        self._task = asyncio.create_task(self._run(), name="sse")

    async def stop(self) -> None:
        self.closing = True
        for c in self.clients:
            c.wake.set()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        assert self._kick is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), READINGS_EVERY_S)
            self._kick.clear()
            if self.clients:
                await self._fan_out()
                self._readings()

    async def _fan_out(self) -> None:
        pending, self._pending = self._pending, []
        changes, self._changes = self._changes, []
        if len(pending) + len(changes) > RESYNC_OVER:
            for c in self.clients:
                c.out = []
                c.resync = True
                c.wake.set()
            return
        shelved = self.gw.is_shelved
        for i, a in enumerate(pending):
            self.broadcast("alert", alert_json(a, shelved(a.equipment, a.sensor, a.kind)))
            if i % 100 == 99:
                await asyncio.sleep(0)
        for equipment, status, last_seen in changes:
            self.broadcast(
                "status",
                {"equipment": equipment, "status": status, "last_seen": iso_ms(last_seen)},
            )

    def _readings(self) -> None:
        rings = self.gw.rings
        for c in self.clients:
            for key in c.series:
                ring = rings.get(*key)
                if ring is None:
                    continue
                seen = c.seen.get(key, 0)
                if ring.count > seen:
                    c.seen[key] = ring.count
                    c.push(sse("reading", reading_doc(key, ring, seen)))

    # -------------------------------------------------------------- handler
    async def handle(
        self, request: web.Request, series: list[tuple[str, str]]
    ) -> web.StreamResponse:
        if len(self.clients) >= self.max_clients:
            return web.json_response(
                {"error": f"too many stream clients (max_stream_clients {self.max_clients})"},
                status=429,
                headers={"Retry-After": "5"},
            )
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        c = Client(series)
        rings = self.gw.rings
        for key in series:  # only what arrives from now on: the page read the ring
            ring = rings.get(*key)
            c.seen[key] = ring.count if ring is not None else 0
        self.clients.add(c)
        try:
            await resp.write(
                b"retry: 2000\n\n" + sse("hello", {"series": [list(k) for k in series]})
            )
            last = time.monotonic()
            while not self.closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(c.wake.wait(), KEEPALIVE_S)
                c.wake.clear()
                if self.closing:
                    break
                if c.resync:
                    c.resync = False
                    await resp.write(RESYNC)
                elif c.out:
                    out, c.out = c.out, []
                    await resp.write(b"".join(out))
                elif time.monotonic() - last >= KEEPALIVE_S:
                    await resp.write(b": keepalive\n\n")
                last = time.monotonic()
        except ConnectionError:  # the page went away
            pass
        finally:
            self.clients.discard(c)
        return resp


def reading_doc(key: tuple[str, str], ring: Ring, since: int = 0) -> dict[str, Any]:
    return {
        "equipment": key[0],
        "sensor": key[1],
        "count": ring.count,
        "points": [[ts // 1_000_000, v, a] for ts, v, a in ring.since(since)],
    }
