"""HTTP endpoints on `[http] host:port`: /metrics, /healthz, /readyz (SPEC §8).

Status API (JSON, read-only, from the gateway's in-memory state):

- ``GET /api/equipment``: per equipment its status, last_seen and the latest
  value of each sensor.
- ``GET /api/alerts?state=active|all&equipment=&severity=&kind=&limit=``: active
  alerts, or (``all``) also those cleared among the last transitions kept.
"""

from __future__ import annotations

import math
from typing import Any, cast

from aiohttp import web

from gateway.core.alerts import Alert, iso_ms
from gateway.http.events_api import add_event_routes
from gateway.http.view import StatusView

GATEWAY_KEY = web.AppKey("gateway", object)


def build_app(gw: StatusView) -> web.Application:
    app = web.Application()
    app[GATEWAY_KEY] = gw

    async def metrics(_: web.Request) -> web.Response:
        body, content_type = gw.metrics_text()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        # ready: broker connected, and the sink writable or the spool taking batches
        checks = {"mqtt": gw.broker_connected, "sink": gw.sink_ok, "spool": gw.spool_ok}
        ok = checks["mqtt"] and (checks["sink"] or checks["spool"])
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/equipment", api_equipment)
    app.router.add_get("/api/alerts", api_alerts)
    add_event_routes(app, gw.event_store)  # /api/stats, /api/stats/top-defect-lines
    return app


async def start_http(gw: StatusView, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(gw), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


# ----------------------------------------------------------------- status API

ALERT_STATES = ("active", "all")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _iso_s(epoch_s: float) -> str:
    return iso_ms(round(epoch_s * 1000) * 1_000_000)


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


def _alert_json(a: Alert) -> dict[str, Any]:
    doc = a.to_event()
    doc["updated_at"] = _iso_s(a.updated_at)
    return doc


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
    return [_alert_json(a) for a in picked[:limit]]


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
