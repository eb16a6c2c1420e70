"""HTTP ingest endpoints (``[http_ingest]``, README "HTTP ingest").

- ``POST /api/v2/write?org=&bucket=&precision=``: the InfluxDB v2 write API
  (``Authorization: Token <t>``); ``org`` / ``bucket`` are accepted and ignored.
- ``POST /write?db=&precision=``: the InfluxDB 1.x write API (token as ``p`` or
  ``u``/``p`` query parameters, Basic auth password, or a ``Token`` header).
- ``POST /api/ingest[?format=json|fields]``: JSON as the MQTT ``json`` / ``fields``
  formats, equipment / sensor / line in the body.
- ``POST /api/events``: production events as a ``format = "event"`` subscription.

Every endpoint also takes ``Authorization: Bearer <t>`` or ``X-API-Key: <t>``; the
token is ``[http_ingest] token`` or the operator's ``[http] api_token`` (README
"Operator page and HTTP API": a 401 is also counted in edge_http_unauthorized_total). A
request is answered only after its readings are in the spool, fsynced: ``204`` (the
body's only rejects were duplicates: a retry of a stored batch succeeds), ``400``
with the first rejects (the good lines are stored all the same), ``401``, ``413``,
``429`` (more than ``max_inflight_bytes`` of bodies waiting) and ``503`` (not
durable within ``timeout_s``, the spool failing, the gateway stopping), both with
``Retry-After``. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram

from gateway.core.events import EventParser
from gateway.core.model import DUPLICATE, RawMessage, Reject
from gateway.core.normalize.http_format import (
    PRECISIONS,
    SOURCE,
    TOPIC_EVENTS,
    TOPIC_FIELDS,
    TOPIC_JSON,
    TOPIC_LINEPROTO,
    IngestTicket,
    http_event_subscription,
)
from gateway.core.normalize.lineproto_in import chunks
from gateway.http.auth import Auth
from gateway.http.view import IngestView

log = logging.getLogger("edge.http")

# line protocol bodies are delivered in pieces of about this size: one piece is
# normalized without a pause, like one MQTT intake batch (adapters/mqtt MAX_BATCH_BYTES)
CHUNK_BYTES = 256 << 10
REJECTS_LISTED = 100  # in the 400 body's "rejects"
REJECTS_IN_MESSAGE = 5  # in its one-line "message"
READ_BYTES = 64 << 10
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

ENDPOINTS = ("v2_write", "v1_write", "ingest", "events")


class TooLarge(Exception):
    pass


class IngestMetrics:
    """Per-endpoint request metrics, on the gateway's registry."""

    def __init__(self, registry: Any) -> None:
        self.requests = Counter(
            "edge_http_requests_total",
            "HTTP ingest requests answered, by endpoint and status code",
            ["endpoint", "code"],
            registry=registry,
        )
        self.rejected = Counter(
            "edge_http_rejected_total",
            "Inputs rejected in HTTP ingest requests, by endpoint and reason "
            "(also in edge_readings_rejected_total)",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.bytes = Counter(
            "edge_http_request_bytes_total",
            "Request body bytes taken by HTTP ingest (after decompression)",
            ["endpoint"],
            registry=registry,
        )
        self.seconds = Histogram(
            "edge_http_request_seconds",
            "HTTP ingest request to answer (for 204: until durable)",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        for e in ENDPOINTS:
            self.requests.labels(e, "204")
            self.bytes.labels(e)


def request_token(request: web.Request, query_ok: bool) -> str | None:
    """The token a request offers: Token / Bearer / Basic header, X-API-Key, or ``p``."""
    auth = request.headers.get("Authorization", "")
    scheme, _, cred = auth.strip().partition(" ")
    s = scheme.lower()
    if s in ("token", "bearer"):
        return cred.strip()
    if s == "basic":
        try:
            user_pass = base64.b64decode(cred.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user_pass.partition(":")[2]
    key = request.headers.get("X-API-Key")
    if key is not None:
        return key.strip()
    if query_ok:
        return request.query.get("p")
    return None


class Ingest:
    """The four endpoints over one gateway; `add_routes` registers them."""

    def __init__(self, gw: IngestView, auth: Auth | None = None) -> None:
        self.gw = gw
        s = gw.settings
        self.cfg = s.http_ingest
        self._token = self.cfg.token.get_secret_value().encode()
        self.auth = auth
        self._api_token = auth.token if auth is not None else b""
        self._json_max = s.validation.max_payload_bytes
        self._events = EventParser(
            [http_event_subscription()], s.validation, s.events.default_factory
        )
        self.metrics = IngestMetrics(gw.metrics.registry)
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v2/write", self._wrap("v2_write", self.v2_write))
        app.router.add_post("/write", self._wrap("v1_write", self.v1_write))
        app.router.add_post("/api/ingest", self._wrap("ingest", self.ingest))
        app.router.add_post("/api/events", self._wrap("events", self.events))

    def _wrap(
        self, endpoint: str, handler: Callable[[web.Request], Awaitable[web.Response]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        m = self.metrics

        async def run(request: web.Request) -> web.Response:
            t0 = time.monotonic()
            resp = await handler(request)
            m.requests.labels(endpoint, str(resp.status)).inc()
            if resp.status == 401 and self.auth is not None:
                self.auth.unauthorized.labels(endpoint).inc()
            m.seconds.labels(endpoint).observe(time.monotonic() - t0)
            return resp

        return run

    # ------------------------------------------------------------ answers
    def _error(
        self, status: int, message: str, v2: bool, headers: dict[str, str] | None = None
    ) -> web.Response:
        codes = {400: "invalid", 401: "unauthorized", 413: "request too large"}
        body: dict[str, Any] = {"error": message, "message": message}
        if v2:
            body["code"] = codes.get(status, "unavailable")
        return web.json_response(body, status=status, headers=headers)

    def _retry(self, status: int, message: str, v2: bool) -> web.Response:
        return self._error(status, message, v2, {"Retry-After": str(self.cfg.retry_after_s)})

    def _authorized(self, request: web.Request, query_ok: bool) -> bool:
        token = request_token(request, query_ok)
        if token is None:
            return False
        offered = token.encode()
        return hmac.compare_digest(offered, self._token) or (
            bool(self._api_token) and hmac.compare_digest(offered, self._api_token)
        )

    async def _body(self, request: web.Request, limit: int) -> bytes:
        """The request body (decompressed by aiohttp for gzip / deflate); TooLarge past `limit`."""
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge
        parts: list[bytes] = []
        total = 0
        while True:
            b = await request.content.read(READ_BYTES)
            if not b:
                break
            total += len(b)
            if total > limit:
                raise TooLarge
            parts.append(b)
        return b"".join(parts)

    # ----------------------------------------------------------- endpoints
    async def v2_write(self, request: web.Request) -> web.Response:
        return await self._lineproto(request, "v2_write", v2=True)

    async def v1_write(self, request: web.Request) -> web.Response:
        return await self._lineproto(request, "v1_write", v2=False)

    async def _lineproto(self, request: web.Request, endpoint: str, v2: bool) -> web.Response:
        if not self._authorized(request, query_ok=not v2):
            return self._error(401, "unauthorized access", v2)
        precision = request.query.get("precision") or "ns"
        mult = PRECISIONS.get(precision)
        if mult is None or (v2 and precision not in ("ns", "us", "ms", "s")):
            allowed = "ns, us, ms, s" if v2 else "n, ns, u, us, ms, s, m, h"
            return self._error(400, f"precision {precision[:16]!r} is not one of {allowed}", v2)
        limit = self.cfg.max_body_bytes
        try:
            body = await self._body(request, limit)
        except TooLarge:
            return self._error(413, f"body exceeds max_body_bytes ({limit})", v2)
        pieces = chunks(body, CHUNK_BYTES)
        return await self._submit(
            endpoint, v2, len(body), [(TOPIC_LINEPROTO, p, mult, first) for first, p in pieces]
        )

    async def ingest(self, request: web.Request) -> web.Response:
        if not self._authorized(request, query_ok=False):
            return self._error(401, "unauthorized access", False)
        fmt = request.query.get("format", "json")
        topics = {"json": TOPIC_JSON, "fields": TOPIC_FIELDS}
        if fmt not in topics:
            return self._error(400, f"format {fmt[:16]!r} is not json or fields", False)
        try:
            body = await self._body(request, self._json_max)
        except TooLarge:
            return self._error(413, f"body exceeds max_payload_bytes ({self._json_max})", False)
        return await self._submit("ingest", False, len(body), [(topics[fmt], body, 1, 0)])

    async def events(self, request: web.Request) -> web.Response:
        if not self._authorized(request, query_ok=False):
            return self._error(401, "unauthorized access", False)
        try:
            body = await self._body(request, self._json_max)
        except TooLarge:
            return self._error(413, f"body exceeds max_payload_bytes ({self._json_max})", False)
        # the events path reports its rejects to the metrics and dead letters only, so
        # the answer's come from the same (pure, stateless) parse done here first
        probe = RawMessage(TOPIC_EVENTS, body, time.monotonic(), time.time_ns(), SOURCE)
        _, rejects = self._events.parse(probe, {})
        return await self._submit(
            "events", False, len(body), [(TOPIC_EVENTS, body, 1, 0)], rejects, probe
        )

    # -------------------------------------------------------------- submit
    async def _submit(
        self,
        endpoint: str,
        v2: bool,
        size: int,
        pieces: list[tuple[str, bytes, int, int]],
        known_rejects: list[Reject] | None = None,
        probe: RawMessage | None = None,
    ) -> web.Response:
        """Deliver `pieces` (topic, payload, precision, first line), wait until durable."""
        cfg = self.cfg
        if self._inflight and self._inflight + size > cfg.max_inflight_bytes:
            return self._retry(429, "too many bodies waiting to be made durable; retry", v2)
        self.metrics.bytes.labels(endpoint).inc(size)
        loop = asyncio.get_running_loop()
        mono = probe.received if probe is not None else time.monotonic()
        now_ns = probe.received_ns if probe is not None else time.time_ns()
        futures: list[asyncio.Future[str | None]] = []
        tickets: list[IngestTicket] = []
        msgs: list[RawMessage] = []
        for topic, payload, mult, first in pieces:
            fut: asyncio.Future[str | None] = loop.create_future()
            t = IngestTicket(_resolver(fut), mult, first)
            msgs.append(RawMessage(topic, payload, mono, now_ns, SOURCE, conn=t))
            futures.append(fut)
            tickets.append(t)
        self._inflight += size
        try:
            task = asyncio.ensure_future(self._deliver_all(msgs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            try:
                async with asyncio.timeout(cfg.timeout_s):
                    # shielded: a timed-out request leaves its delivery running (cancelling
                    # a source parked by a stopping pipeline would cancel the others too)
                    await asyncio.shield(task)
                    failures = [w for w in await asyncio.gather(*futures) if w is not None]
            except TimeoutError:
                return self._retry(503, f"not durable within {cfg.timeout_s:g} s; retry", v2)
        finally:
            self._inflight -= size
        if failures:
            return self._retry(503, failures[0] + "; retry", v2)
        rejects = known_rejects if known_rejects is not None else []
        if known_rejects is None:
            for t in tickets:
                rejects.extend(t.rejects)
        accepted = sum(t.readings for t in tickets)
        return self._answer(endpoint, v2, accepted, rejects)

    async def _deliver_all(self, msgs: list[RawMessage]) -> None:
        deliver = self.gw.deliver
        for m in msgs:
            await deliver([m])  # one piece per intake batch: MQTT batches interleave

    def _answer(
        self, endpoint: str, v2: bool, accepted: int, rejects: list[Reject]
    ) -> web.Response:
        counter = self.metrics.rejected
        by_reason: dict[str, int] = {}
        for r in rejects:
            by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
        for reason, n in by_reason.items():
            counter.labels(endpoint, reason).inc(n)
        bad = [r for r in rejects if r.reason != DUPLICATE]
        if not bad:
            return web.Response(status=204)
        first = "; ".join(f"{r.reason}: {r.detail}" for r in bad[:REJECTS_IN_MESSAGE])
        more = (
            f" (and {len(bad) - REJECTS_IN_MESSAGE} more)" if len(bad) > REJECTS_IN_MESSAGE else ""
        )
        stored = f"{accepted} readings stored" if endpoint != "events" else "the others stored"
        message = f"partial write: {len(bad)} rejected, {stored}; {first}{more}"
        body: dict[str, Any] = {
            "error": message,
            "message": message,
            "accepted": accepted,
            "rejected": len(bad),
            "duplicates": len(rejects) - len(bad),
            "rejects": [{"reason": r.reason, "detail": r.detail} for r in bad[:REJECTS_LISTED]],
        }
        if v2:
            body["code"] = "invalid"
        return web.json_response(body, status=400)


def _resolver(fut: asyncio.Future[str | None]) -> Callable[[str | None], None]:
    def done(why: str | None) -> None:
        if not fut.done():
            fut.set_result(why)

    return done


def add_ingest_routes(app: web.Application, gw: IngestView, auth: Auth | None = None) -> Ingest:
    """Register the HTTP ingest endpoints of `gw` (its ``[http_ingest]`` is enabled)."""
    ingest = Ingest(gw, auth)
    ingest.add_routes(app)
    log.info("http: ingest endpoints /api/v2/write, /write, /api/ingest, /api/events enabled")
    return ingest
