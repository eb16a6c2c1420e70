"""HTTP endpoints for production-event stats (SPEC §4 "Production events").

- ``GET /api/stats?machine=M&start=T&end=T``
- ``GET /api/stats/top-defect-lines?factory=F&from=T&to=T&limit=N`` (limit 1..1000, default 10)

Times are ISO 8601 or epoch numbers (as `gateway.core.timestamps.parse_ts`); windows are
half-open [start, end). A missing or bad parameter is a 400 with ``{"error": "..."}``.
Answers come from the gateway's in-memory event state (the last ``[events]
dedup_window`` event ids); InfluxDB keeps the full history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.core.timestamps import parse_ts

if TYPE_CHECKING:
    from gateway.core.events import EventStore

MAX_LIMIT = 1000


class BadRequest(ValueError):
    """A query parameter problem, worded for the caller."""


def _param(q: Any, name: str) -> str:
    v = q.get(name)
    if v is None or not v.strip():
        raise BadRequest(f"missing query parameter {name!r}")
    return str(v)


def _time(q: Any, name: str) -> int:
    v = _param(q, name).strip()
    if " " in v and "T" in v.upper():  # an unescaped '+' of a UTC offset became a space
        v = v.replace(" ", "+")
    try:
        return parse_ts(v)
    except ValueError:
        raise BadRequest(f"{name} {v[:64]!r} is not an ISO 8601 time or epoch number") from None


def stats_query(store: EventStore, q: Any) -> dict[str, Any]:
    """The ``/api/stats`` answer for query parameters `q`; raises BadRequest."""
    machine = _param(q, "machine")
    start, end = _time(q, "start"), _time(q, "end")
    if not start < end:
        raise BadRequest("start must be before end")
    return store.stats(machine, start, end)


def top_lines_query(store: EventStore, q: Any) -> list[dict[str, Any]]:
    """The ``/api/stats/top-defect-lines`` answer for query parameters `q`; raises BadRequest."""
    factory = _param(q, "factory")
    start, end = _time(q, "from"), _time(q, "to")
    if not start < end:
        raise BadRequest("from must be before to")
    raw = q.get("limit")
    limit = 10
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            raise BadRequest(f"limit {raw[:32]!r} is not a whole number") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be 1..{MAX_LIMIT}, got {limit}")
    return store.top_defect_lines(factory, start, end, limit)


def add_event_routes(app: web.Application, store: EventStore) -> None:
    """Register the two stats routes on `app`, answering from `store`."""

    async def stats(request: web.Request) -> web.Response:
        try:
            return web.json_response(stats_query(store, request.query))
        except BadRequest as e:
            return web.json_response({"error": str(e)}, status=400)

    async def top_lines(request: web.Request) -> web.Response:
        try:
            return web.json_response(top_lines_query(store, request.query))
        except BadRequest as e:
            return web.json_response({"error": str(e)}, status=400)

    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/stats/top-defect-lines", top_lines)
