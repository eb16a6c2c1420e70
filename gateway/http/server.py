"""HTTP endpoints on `[http] host:port`: /metrics, /healthz, /readyz (SPEC §8).

With ``[http_ingest] enabled`` also the ingest endpoints of `gateway.http.ingest`.

Status API (JSON, read-only, from the gateway's in-memory state):

- ``GET /api/equipment``: per equipment its status, last_seen and the latest
  value of each sensor.
- ``GET /api/alerts?state=active|all&equipment=&severity=&kind=&limit=``: active
  alerts, or (``all``) also those cleared among the last transitions kept.

The operator page, the alert commands, series, history and the event stream are in
`gateway.http.api`; who may call what in `gateway.http.auth`; the OpenAPI document
of all of it is ``GET /api/openapi.json`` (`gateway.http.openapi`). Every error is
JSON ``{"error": "<one line>"}``; a handler that fails answers 500 and is logged,
the gateway goes on.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter

from gateway.core.alerts import Alert, iso_ms
from gateway.http.auth import Auth, exposure_problem
from gateway.http.events_api import add_event_routes
from gateway.http.stream import alert_json
from gateway.http.view import IngestView, OperatorView, StatusView

log = logging.getLogger("edge.http")

GATEWAY_KEY = web.AppKey("gateway", object)
AUTH_KEY = web.AppKey("auth", Auth)
# open whatever [http] host is: scrapers, probes, the page's files, the API document
OPEN_GETS = frozenset({"/metrics", "/healthz", "/readyz", "/api/openapi.json"})
INGEST_POSTS = frozenset({"/api/v2/write", "/write", "/api/ingest", "/api/events"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _QuietBadRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a header with a NUL, ...) with a
    traceback; it answered 400 already: one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"http: bad request answered {exc.code}: %s"
            record.args = (str(exc.message).splitlines()[0][:200] if exc.message else "",)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("aiohttp.server").addFilter(_QuietBadRequests())


def build_app(gw: StatusView) -> web.Application:
    settings = getattr(gw, "settings", None)
    metrics = getattr(gw, "metrics", None)
    registry = getattr(metrics, "registry", None) or CollectorRegistry()
    http_cfg = settings.http if settings is not None else None
    auth = Auth(http_cfg, registry) if http_cfg is not None else None
    requests = Counter(
        "edge_http_api_requests_total",
        "HTTP requests answered (all but ingest, which has edge_http_requests_total), "
        "by route and status code",
        ["route", "code"],
        registry=registry,
    )
    app = web.Application(middlewares=[_middleware(auth, requests)])
    app[GATEWAY_KEY] = gw

    async def metrics_page(_: web.Request) -> web.Response:
        body, content_type = gw.metrics_text()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        # ready: broker connected, and the sink writable or the spool taking batches
        checks = {"mqtt": gw.broker_connected, "sink": gw.sink_ok, "spool": gw.spool_ok}
        ok = checks["mqtt"] and (checks["sink"] or checks["spool"])
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/equipment", api_equipment)
    app.router.add_get("/api/alerts", api_alerts)
    add_event_routes(app, gw.event_store)  # /api/stats, /api/stats/top-defect-lines
    if settings is not None and auth is not None:
        from gateway.http.api import add_operator_routes
        from gateway.http.openapi import document

        app[AUTH_KEY] = auth
        doc = document(settings)

        async def openapi(_: web.Request) -> web.Response:
            return web.json_response(doc)

        app.router.add_get("/api/openapi.json", openapi)
        # /, /static/*, alert commands, /api/series, /api/alerts/history, /api/stream
        add_operator_routes(app, cast(OperatorView, gw), auth)
    if settings is not None and settings.http_ingest.enabled:
        from gateway.http.ingest import add_ingest_routes

        # /api/v2/write, /write, /api/ingest, /api/events (the gateway is an IngestView)
        add_ingest_routes(app, cast(IngestView, gw), auth)
    return app


def _middleware(auth: Auth | None, requests: Counter) -> Any:
    """Read auth off loopback, JSON errors, a 500 (logged) for a handler that fails."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in INGEST_POSTS and request.method == "POST":
            return await handler(request)  # its own auth and counters
        info = request.match_info
        route = info.route.resource.canonical if info.route.resource is not None else "other"
        resp: web.StreamResponse
        try:
            if (
                auth is not None
                and auth.reads_need_token
                and request.method in ("GET", "HEAD")
                and path.startswith("/api/")
                and path not in OPEN_GETS
                and not auth.read_ok(request)
            ):
                resp = auth.reject(route)
            else:
                resp = await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            resp = web.json_response(
                {"error": f"{e.status}: {e.reason}"}, status=e.status, headers=_allow(e)
            )
        except Exception:
            log.exception("http: %s %s failed", request.method, route)
            resp = web.json_response({"error": "internal error (logged)"}, status=500)
        requests.labels(route, str(resp.status)).inc()
        return resp

    return middleware


def _allow(e: web.HTTPException) -> dict[str, str] | None:
    allow = e.headers.get("Allow")
    return {"Allow": allow} if allow else None


async def start_http(gw: StatusView, host: str, port: int) -> web.AppRunner:
    settings = getattr(gw, "settings", None)
    if settings is not None:
        problem = exposure_problem(settings.http)
        if problem is not None:
            raise PermissionError(errno.EACCES, problem)
    runner = web.AppRunner(build_app(gw), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


# ----------------------------------------------------------------- status API

ALERT_STATES = ("active", "all")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def equipment_view(gw: StatusView) -> list[dict[str, Any]]:
    """Every known equipment, sorted by name, with its sensors' latest values."""
    sensors: dict[str, dict[str, dict[str, Any]]] = {}
    lines: dict[str, str] = {}
    newest: dict[str, int] = {}
    for (eq, sensor), (r, sc) in list(gw.latest.items()):
        sensors.setdefault(eq, {})[sensor] = {
            "value": r.value,
            "ts": iso_ms(r.ts),
            "unit": r.unit,
            "z": sc.z if sc.z is not None and math.isfinite(sc.z) else None,
            "anomaly": bool(sc.findings),
        }
        if r.line:
            lines[eq] = r.line
        if r.ts > newest.get(eq, -1):
            newest[eq] = r.ts
    active: dict[str, int] = {}
    for a in gw.alerts.active():
        active[a.equipment] = active.get(a.equipment, 0) + 1
        if a.line:
            lines.setdefault(a.equipment, a.line)
    out: list[dict[str, Any]] = []
    for eq in sorted(sensors.keys() | active.keys()):
        last = gw.alerts.last_seen(eq) or newest.get(eq)
        out.append(
            {
                "equipment": eq,
                "line": lines.get(eq, ""),
                "status": gw.alerts.status(eq),
                "last_seen": iso_ms(last) if last else None,
                "active_alerts": active.get(eq, 0),
                "sensors": dict(sorted(sensors.get(eq, {}).items())),
            }
        )
    return out


def _shelved(gw: StatusView) -> Callable[[str, str, str], bool]:
    fn = getattr(gw, "is_shelved", None)
    return cast(Callable[[str, str, str], bool], fn) if fn is not None else (lambda *_: False)


def alerts_view(
    gw: StatusView,
    *,
    state: str = "active",
    equipment: str | None = None,
    severity: str | None = None,
    kind: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[dict[str, Any]]:
    """Alerts newest first (by last update). ``all`` adds recently cleared ones."""
    chosen: dict[str, Alert] = {a.id: a for a in gw.alerts.active()}
    if state == "all":
        for a in reversed(gw.recent_alerts):  # newest transition first
            chosen.setdefault(a.id, a)
    severities = set(severity.split(",")) if severity else None
    picked = [
        a
        for a in chosen.values()
        if (equipment is None or a.equipment == equipment)
        and (severities is None or a.severity in severities)
        and (kind is None or a.kind == kind)
    ]
    picked.sort(key=lambda a: a.updated_at, reverse=True)
    shelved = _shelved(gw)
    return [alert_json(a, shelved(a.equipment, a.sensor, a.kind)) for a in picked[:limit]]


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def api_equipment(request: web.Request) -> web.Response:
    gw = cast(StatusView, request.app[GATEWAY_KEY])
    return web.json_response(equipment_view(gw))


async def api_alerts(request: web.Request) -> web.Response:
    gw = cast(StatusView, request.app[GATEWAY_KEY])
    q = request.query
    state = q.get("state", "active")
    if state not in ALERT_STATES:
        return _bad_request(f"state must be one of {', '.join(ALERT_STATES)}, got {state!r}")
    raw_limit = q.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return _bad_request(f"limit must be a whole number 1-{MAX_LIMIT}, got {raw_limit!r}")
    body = alerts_view(
        gw,
        state=state,
        equipment=q.get("equipment") or None,
        severity=q.get("severity") or None,
        kind=q.get("kind") or None,
        limit=limit,
    )
    return web.json_response(body)
