"""The operator's HTTP API and page (README "Operator page and HTTP API").

- ``POST /api/alerts/{id}/ack`` ``{"by"}``, ``/shelve`` ``{"by", "reason",
  "duration_s"}``, ``/unshelve`` ``{"by"}``: the MQTT commands (`AlarmCommands.apply`:
  same checks, audit points, counters). 200 ``{"applied", "id"}``; 400 a bad body,
  404 no such (active / shelved) alert, 401 no or a wrong token, 403 no token set.
- ``GET /api/series/{equipment}/{sensor}?since=N``: the series' recent points from
  its ring (``[http] series_points``), ``[ts_ms, value, anomaly]`` oldest first.
- ``GET /api/alerts/history?from=&to=&equipment=&kind=&limit=``: transitions from
  the SQLite history (`gateway.daemon.history`), newest first.
- ``GET /api/stream``: server-sent events (`gateway.http.stream`).
- ``GET /api/openapi.json``: the OpenAPI 3 document of all of it (`gateway.http.openapi`).
- ``GET /``: the page (``gateway/http/static``: plain HTML/CSS/JS, nothing fetched
  from elsewhere).

Every parameter is checked; a problem is a 400 ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import importlib.resources
import logging
import math
from typing import Any

import orjson
from aiohttp import web

from gateway.core.alarms import CommandRejected
from gateway.core.timestamps import parse_ts
from gateway.http.auth import Auth
from gateway.http.stream import MAX_SERIES, StreamHub, reading_doc
from gateway.http.view import OperatorView

log = logging.getLogger("edge.http")

MAX_BODY = 16 << 10  # a command body
MAX_TEXT = 256  # by, reason
MAX_NAME = 256  # equipment, sensor, kind, alert id
HISTORY_DEFAULT = 100
HISTORY_MAX = 10_000
STATIC = ("index.html", "app.js", "style.css")
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
COMMANDS = ("ack", "shelve", "unshelve")


class BadRequest(ValueError):
    """A parameter problem, worded for the caller."""


def bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _name(v: str, what: str) -> str:
    if not v or len(v) > MAX_NAME:
        raise BadRequest(f"{what} must be 1-{MAX_NAME} characters")
    return v


def _opt_name(q: Any, key: str) -> str | None:
    v = q.get(key)
    if v is None or v == "":
        return None
    return _name(str(v), key)


def _int(q: Any, key: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(key)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"{key} must be a whole number {lo}-{hi}, got {raw[:32]!r}") from None
    if not lo <= v <= hi:
        raise BadRequest(f"{key} must be a whole number {lo}-{hi}, got {v}")
    return v


def _time_s(q: Any, key: str) -> float | None:
    raw = q.get(key)
    if raw is None or not raw.strip():
        return None
    v = raw.strip()
    if " " in v and "T" in v.upper():  # an unescaped '+' of a UTC offset became a space
        v = v.replace(" ", "+")
    try:
        return parse_ts(v) / 1e9
    except (ValueError, OverflowError):
        raise BadRequest(f"{key} {v[:64]!r} is not an ISO 8601 time or epoch number") from None


def _text(body: dict[str, Any], key: str, required: bool) -> None:
    v = body.get(key)
    if v is None and not required:
        return
    if not isinstance(v, str) or not v.strip():
        raise BadRequest(f"{key} is required (a non-empty string)")
    if len(v) > MAX_TEXT:
        raise BadRequest(f"{key} must be at most {MAX_TEXT} characters")
    if any(c < " " or c == "\x7f" for c in v):  # one audit point, one log line
        raise BadRequest(f"{key} must not contain control characters")


def command_body(command: str, raw: bytes) -> dict[str, Any]:
    """The JSON object of a command request, its fields checked; raises BadRequest."""
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    _text(body, "by", required=command != "ack")
    if command == "shelve":
        _text(body, "reason", required=True)
        d = body.get("duration_s")
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d):
            raise BadRequest("duration_s is required (a number of seconds)")
    return body


class OperatorApi:
    """The routes above, over one gateway."""

    def __init__(self, gw: OperatorView, auth: Auth, hub: StreamHub) -> None:
        self.gw = gw
        self.auth = auth
        self.hub = hub
        self.static: dict[str, bytes] = {}
        root = importlib.resources.files("gateway.http") / "static"
        for name in STATIC:
            self.static[name] = (root / name).read_bytes()

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/static/{name}", self.static_file)
        for c in COMMANDS:
            r.add_post(f"/api/alerts/{{id}}/{c}", self._command(c))
        r.add_get("/api/alerts/history", self.history)
        r.add_get("/api/series/{equipment}/{sensor}", self.series)
        r.add_get("/api/stream", self.stream)

    # ---------------------------------------------------------------- page
    async def page(self, _: web.Request) -> web.Response:
        return self._file("index.html")

    async def static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.static:
            return bad(f"no static file {name[:64]!r}", 404)
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        ext = name[name.rindex(".") :]
        return web.Response(
            body=self.static[name],
            content_type=TYPES[ext],
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            },
        )

    # ------------------------------------------------------------ commands
    def _command(self, command: str) -> Any:
        endpoint = command

        async def handler(request: web.Request) -> web.Response:
            if not self.auth.writes_enabled:
                return bad("alert commands over HTTP need [http] api_token (none is set)", 403)
            if not self.auth.write_ok(request):
                return self.auth.reject(endpoint)
            try:
                alert_id = _name(request.match_info["id"], "id")
                if request.content_length is not None and request.content_length > MAX_BODY:
                    raise BadRequest(f"body exceeds {MAX_BODY} bytes")
                raw = await request.content.read(MAX_BODY + 1)
                if len(raw) > MAX_BODY:
                    raise BadRequest(f"body exceeds {MAX_BODY} bytes")
                body = command_body(command, raw)
            except BadRequest as e:
                return bad(str(e))
            cmd = {**body, "id": alert_id}
            rejected = self.gw.command(command, cmd)
            if rejected is not None:
                return _rejected(rejected)
            self.hub.broadcast("command", {"command": command, "id": alert_id})
            return web.json_response({"applied": command, "id": alert_id})

        return handler

    # --------------------------------------------------------------- reads
    async def series(self, request: web.Request) -> web.Response:
        try:
            equipment = _name(request.match_info["equipment"], "equipment")
            sensor = _name(request.match_info["sensor"], "sensor")
            since = _int(request.query, "since", 0, 0, 2**62)
        except BadRequest as e:
            return bad(str(e))
        key = (equipment, sensor)
        ring = self.gw.rings.get(*key)
        latest = self.gw.latest.get(key)
        if ring is None and latest is None:
            return bad(f"no series {equipment}/{sensor}", 404)
        doc: dict[str, Any] = {"equipment": equipment, "sensor": sensor, "count": 0, "points": []}
        if ring is not None:
            doc = reading_doc(key, ring, since)
        doc["unit"] = latest[0].unit if latest is not None else ""
        doc["size"] = self.gw.rings.size
        return web.json_response(doc, dumps=_dumps)

    async def history(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            start, end = _time_s(q, "from"), _time_s(q, "to")
            if start is not None and end is not None and not start < end:
                raise BadRequest("from must be before to")
            equipment, kind = _opt_name(q, "equipment"), _opt_name(q, "kind")
            limit = _int(q, "limit", HISTORY_DEFAULT, 1, HISTORY_MAX)
        except BadRequest as e:
            return bad(str(e))
        h = self.gw.history
        if h is None:
            return bad("the alert history is off ([history] enabled = false, or it failed)", 404)
        rows = await h.query(start=start, end=end, equipment=equipment, kind=kind, limit=limit)
        return web.json_response(rows, dumps=_dumps)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("series", "")
        series: list[tuple[str, str]] = []
        try:
            for part in filter(None, raw.split(",")):
                eq, sep, sensor = part.partition("/")
                if not sep or "/" in sensor:
                    raise BadRequest(f"series items are equipment/sensor, got {part[:64]!r}")
                key = (_name(eq, "equipment"), _name(sensor, "sensor"))
                if key not in series:
                    series.append(key)
            if len(series) > MAX_SERIES:
                raise BadRequest(f"at most {MAX_SERIES} series, got {len(series)}")
        except BadRequest as e:
            return bad(str(e))
        return await self.hub.handle(request, series)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _rejected(e: CommandRejected) -> web.Response:
    status = 404 if e.reason == "unknown_id" else 400
    return web.json_response({"error": str(e), "reason": e.reason}, status=status)


def add_operator_routes(app: web.Application, gw: OperatorView, auth: Auth) -> StreamHub:
    """The page, the alert commands, series, history and the stream on `app`."""
    hub = StreamHub(gw, gw.settings.http.max_stream_clients)
    OperatorApi(gw, auth, hub).add_routes(app)

    async def start(_: web.Application) -> None:
        await hub.start()

    async def stop(_: web.Application) -> None:
        await hub.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return hub
