"""One OPC UA server endpoint as a source: `OpcuaSource`, reconnects, errors, metrics.

`OpcuaSource(cfg, metrics).run(deliver)` runs until cancelled and never raises:
each connection attempt is a fresh `Session` (session.py: open, resolve,
subscribe, watch, close); a failed or lost session is classified (errors.py),
counted in ``edge_opcua_errors_total``, logged once per state change, and retried
with a backoff from ``reconnect_min_s`` to ``reconnect_max_s`` that resets once a
session is subscribed. `sources()` builds one per configured server (gateway/app.py).

The package's other modules, along the data path: security.py (endpoint and
certificates), browse.py (which variables), encoding.py (value → payload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from adapters.base import Deliver
from adapters.opcua import SOURCE
from adapters.opcua.errors import OpcuaFailure, classify
from adapters.opcua.session import Session
from gateway.config import OpcuaServer
from gateway.core.backoff import Backoff
from gateway.daemon.metrics import Metrics

log = logging.getLogger("edge.opcua")


class OpcuaSource:
    """One ``[[opcua.servers]]`` entry; `run(deliver)` until cancelled (never raises)."""

    name = SOURCE

    def __init__(self, cfg: OpcuaServer, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.endpoint = cfg.endpoint
        self.metrics = metrics
        self.connected = False
        self.sessions = 0  # sessions opened so far
        self.monitored = 0
        self.keepalive_period_s = cfg.keepalive_s
        self.browse_logged = False
        self._last_error = ""
        self._once: set[str] = set()
        if metrics is not None:
            metrics.opcua_connected.labels(self.endpoint).set(0)
            metrics.opcua_monitored_items.labels(self.endpoint).set(0)
        if cfg.username and cfg.security_policy == "None":
            log.warning(
                "opcua: %s: user name login with security_policy None: the server may "
                "receive the password in clear text",
                self.endpoint,
            )

    def _set_connected(self, up: bool, items: int = 0) -> None:
        self.connected = up
        self.monitored = items if up else 0
        if self.metrics is not None:
            self.metrics.opcua_connected.labels(self.endpoint).set(1 if up else 0)
            self.metrics.opcua_monitored_items.labels(self.endpoint).set(self.monitored)

    def _count(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.opcua_errors.labels(self.endpoint, kind).inc()

    def error_once(self, kind: str, message: str) -> None:
        """A problem that does not end the session: counted always, logged once."""
        self._count(kind)
        if message not in self._once:
            self._once.add(message)
            log.warning("opcua: %s: %s", self.endpoint, message)

    def _failed(self, f: OpcuaFailure, was_connected: bool) -> None:
        self._count(f.kind)
        text = f"{f.kind}: {f.message}"
        if was_connected or text != self._last_error:
            log.warning(
                "opcua: %s %s: %s (retrying with backoff)",
                self.endpoint,
                "lost" if was_connected else "unavailable",
                text,
            )
        self._last_error = text

    async def run(self, deliver: Deliver) -> None:
        cfg = self.cfg
        backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        while True:
            session = Session(self, deliver)
            was_connected = False
            graceful = True
            try:
                await session.open()
                self.sessions += 1
                items = await session.resolve()
                n = await session.subscribe(items)
                if n == 0:
                    raise OpcuaFailure("node", "no node could be monitored")
                self._set_connected(True, n)
                was_connected = True
                backoff.reset()
                self._last_error = ""
                log.info(
                    "opcua: connected to %s (%s/%s), %d monitored items",
                    self.endpoint,
                    cfg.security_policy,
                    cfg.security_mode,
                    n,
                )
                await session.watch()
            except asyncio.CancelledError:
                self._set_connected(False)
                with contextlib.suppress(Exception):
                    await session.close(graceful=True, wait_deliver=False)
                raise
            except Exception as e:  # never crash the gateway: classify, log, back off
                f = classify(e)
                graceful = f.kind not in ("watchdog", "timeout")
                self._set_connected(False)
                self._failed(f, was_connected)
            with contextlib.suppress(Exception):
                await session.close(graceful)
            await asyncio.sleep(backoff.next())


def sources(servers: Iterable[OpcuaServer], metrics: Metrics | None = None) -> list[OpcuaSource]:
    """One source per configured server."""
    return [OpcuaSource(cfg, metrics) for cfg in servers]
