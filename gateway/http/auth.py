"""Who may do what over HTTP (README "Operator page and HTTP API").

- Writes (``POST /api/alerts/{id}/ack|shelve|unshelve``, and HTTP ingest) take
  ``Authorization: Bearer <[http] api_token>``. Ingest also takes its own
  ``[http_ingest] token`` (for a data source that must not acknowledge alarms).
  No api_token set: the alert commands answer 403, ingest keeps its own token.
- Reads (``/api/...``) are open while `[http] host` is a loopback address; on any
  other address they need the token too (header, or ``?token=`` for the page's
  EventSource, which cannot send headers), and a gateway with no token set refuses
  to start there (`exposure_problem`). /metrics, /healthz, /readyz, the page's
  static files and /api/openapi.json stay open (scrapers, probes, the login form).

Tokens are compared in constant time and never logged; a wrong or missing one is
a 401, counted in ``edge_http_unauthorized_total{endpoint}``.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from gateway.config import HttpConfig


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, ``localhost``; not 0.0.0.0 or ``::`` (every address)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def exposure_problem(cfg: HttpConfig) -> str | None:
    """Why the HTTP server must not start with `cfg`, in one line; None if it may."""
    if cfg.enabled and not is_loopback(cfg.host) and not cfg.api_token.get_secret_value():
        return (
            f"refusing to serve HTTP on {cfg.host} (not a loopback address) without "
            "[http] api_token or api_token_file; set one, or bind 127.0.0.1"
        )
    return None


def bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <t>`` header, if any."""
    scheme, _, cred = request.headers.get("Authorization", "").strip().partition(" ")
    return cred.strip() if scheme.lower() == "bearer" else None


def same(offered: str | None, token: bytes) -> bool:
    return bool(token) and offered is not None and hmac.compare_digest(offered.encode(), token)


class Auth:
    """The `[http]` token checks, and the 401 counter (shared with HTTP ingest)."""

    def __init__(self, cfg: HttpConfig, registry: Any = None) -> None:
        self.token = cfg.api_token.get_secret_value().encode()
        self.reads_need_token = not is_loopback(cfg.host)
        self.unauthorized = Counter(
            "edge_http_unauthorized_total",
            "HTTP requests answered 401 (no or a wrong token), by endpoint",
            ["endpoint"],
            registry=registry,
        )

    @property
    def writes_enabled(self) -> bool:
        return bool(self.token)

    def write_ok(self, request: web.Request) -> bool:
        return same(bearer(request), self.token)

    def read_ok(self, request: web.Request) -> bool:
        if not self.reads_need_token:
            return True
        offered = bearer(request)
        if offered is None:
            offered = request.query.get("token")
        return same(offered, self.token)

    def reject(self, endpoint: str) -> web.Response:
        """The 401 answer, counted."""
        self.unauthorized.labels(endpoint).inc()
        return web.json_response(
            {"error": "unauthorized: missing or wrong bearer token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="edge-gateway"'},
        )
