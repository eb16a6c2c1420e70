"""HTTP endpoints on `[http] host:port`: /metrics, /healthz, /readyz (SPEC §8)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.pipeline import Gateway

GATEWAY_KEY = web.AppKey("gateway", object)


def build_app(gw: Gateway) -> web.Application:
    app = web.Application()
    app[GATEWAY_KEY] = gw

    async def metrics(_: web.Request) -> web.Response:
        body = gw.metrics.render()
        return web.Response(body=body, headers={"Content-Type": gw.metrics.content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        checks = {"mqtt": gw.mqtt.connected, "sink": gw.sink_ok}
        ok = all(checks.values())
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_http(gw: Gateway, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(gw), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
