"""One connection attempt to one server: `Session` (open, subscribe, watch, close).

`OpcuaSource.run` (source.py) makes a fresh asyncua `Client` and `Session` per attempt:

1. `open()`: security (`security.secure`), username/password, connect, all under
   ``connect_timeout_s``; every later request under ``request_timeout_s``;
2. `resolve()`: the items to monitor (browse.py);
3. `subscribe()`: one subscription, monitored items created in chunks of
   ``max_items_per_request``; `_on_publish` turns each publish response into
   `RawMessage`s and hands them to the pipeline (one ``deliver`` per response, at
   most `MAX_DELIVER` messages each);
4. `watch()`: a read of Server/ServerStatus/CurrentTime every
   ``watchdog_interval_s`` that must answer within ``watchdog_timeout_s``, a
   transport-loss hook, Bad subscription status changes, and publish silence
   (no data or keep-alive for 3 keep-alive periods) all end the session;
5. `close()`: CloseSession (subscriptions deleted) with a short timeout, then the
   client's tasks are cancelled and the socket closed whatever the server does, so
   a frozen server cannot hang the gateway and a reconnect never leaves a
   duplicate subscription behind. asyncua's own ``auto_reconnect`` is not used.

Importing this module also installs `_QuietDisconnects` on asyncua's loggers:
the failures it drops are reported by `OpcuaSource` once per state change.
"""

# asyncua annotates NodeId/DataValue fields with its own int/str/datetime aliases.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any, Protocol

from asyncua import Client, ua

from adapters.base import Deliver
from adapters.opcua import SOURCE, browse
from adapters.opcua.encoding import BAD, Item, chunks, encode
from adapters.opcua.errors import OpcuaFailure, classify
from adapters.opcua.security import secure
from gateway.config import OpcuaServer
from gateway.core.model import RawMessage

MAX_DELIVER = 5000  # notifications per deliver() call
FORCE_CLOSE_TIMEOUT_S = 2.0


class Owner(browse.Reporter, Protocol):
    """What a session needs from its `OpcuaSource`, which outlives it."""

    cfg: OpcuaServer
    keepalive_period_s: float  # as revised by the server; read by watch()


# ------------------------------------------------------------------ logging


class _QuietDisconnects(logging.Filter):
    """Drop asyncua's tracebacks for connection failures this module reports itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(
            exc, ConnectionError | TimeoutError | OSError | asyncio.CancelledError
        ):
            return False
        msg = str(record.msg)
        # ServiceFault warnings and fatal ErrorMessages come back to us as exceptions,
        # which run() reports as one line per state change; the plain-text password
        # warning is logged once by OpcuaSource instead of once per connection attempt.
        return not msg.startswith(
            ("ServiceFault", "Received an error", "Sending plain-text password")
        )


_FILTER = _QuietDisconnects()
for _name in (
    "asyncua.client.client",
    "asyncua.client.ua_client.UaClient",
    "asyncua.client.ua_client.UASocketProtocol",
    "asyncua.client.ua_session.UaSession",
):
    logging.getLogger(_name).addFilter(_FILTER)


# ------------------------------------------------------------------ session


class Session:
    """One connection attempt: client, subscription, watchdog; `close()` always."""

    def __init__(self, src: Owner, deliver: Deliver) -> None:
        self.src = src
        self.cfg = src.cfg
        self.deliver = deliver
        self.client: Client | None = None
        self.items: dict[int, Item] = {}
        self.lost = asyncio.Event()
        self.lost_reason: OpcuaFailure | None = None
        self.last_publish = time.monotonic()
        self.in_deliver = False
        self.closing = False
        self.subscription_id = 0

    def fail(self, kind: str, message: str) -> None:
        if self.lost_reason is None and not self.closing:
            self.lost_reason = OpcuaFailure(kind, message)
        self.lost.set()

    # -- connect -------------------------------------------------------------
    async def open(self) -> None:
        cfg = self.cfg
        client = self.client = Client(
            cfg.endpoint,
            timeout=cfg.request_timeout_s,
            watchdog_intervall=3600.0,  # ours is watch(); asyncua's only notices state changes
        )
        client.name = client.description = "edge-gateway"
        client.application_uri = "urn:edge-gateway:client"
        client.session_timeout = int(cfg.session_timeout_s * 1000)
        if cfg.username:
            client.set_user(cfg.username)
            if cfg.password is not None:
                client.set_password(cfg.password.get_secret_value())
        async with asyncio.timeout(cfg.connect_timeout_s):
            if cfg.security_policy != "None":
                await secure(client, cfg)
            await client.connect()
        uac = client.uaclient
        add_listener = getattr(uac, "_add_state_listener", None)
        if add_listener is not None:
            add_listener(self._on_state)

    def _on_state(self, state: Any) -> None:
        """asyncua state listener (sync): a dropped socket ends the session at once."""
        if getattr(state, "name", "") == "DISCONNECTED" and not self.closing:
            if not self.in_deliver:  # a batch being handed over may finish (close() waits)
                self._cancel_publish()  # before asyncua's publish loop logs the loss
            self.fail("connect", "connection lost")

    def _cancel_publish(self) -> None:
        if self.client is None:
            return
        task = getattr(self.client.uaclient.session, "_publish_task", None)
        if task is not None and not task.done():
            task.cancel()

    # -- nodes ---------------------------------------------------------------
    async def resolve(self) -> list[Item]:
        assert self.client is not None
        return await browse.resolve(self.client, self.cfg, self.src)

    # -- subscription --------------------------------------------------------
    async def subscribe(self, items: list[Item]) -> int:
        """Create the subscription and its monitored items; return how many were accepted."""
        assert self.client is not None
        cfg = self.cfg
        session = self.client.uaclient.session
        pi = float(cfg.publishing_interval_ms)
        keepalive = max(1, math.ceil(cfg.keepalive_s * 1000 / pi))
        lifetime = max(3 * keepalive, math.ceil(max(cfg.session_timeout_s, 60.0) * 1000 / pi))
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = pi
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = min(lifetime, 15_000)
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        result = await session.create_subscription(params, callback=self._on_publish)
        self.subscription_id = int(result.SubscriptionId)
        revised = float(result.RevisedPublishingInterval or pi)
        self.src.keepalive_period_s = revised * int(result.RevisedMaxKeepAliveCount or 1) / 1000
        self.last_publish = time.monotonic()
        flt: ua.DataChangeFilter | None = None
        if cfg.deadband_type != "none":
            flt = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=(
                    ua.DeadbandType.Absolute
                    if cfg.deadband_type == "absolute"
                    else ua.DeadbandType.Percent
                ),
                DeadbandValue=float(cfg.deadband_value),
            )
        sampling = float(cfg.sampling_interval_ms) if cfg.sampling_interval_ms > 0 else -1.0
        refused: list[str] = []
        handle = 0
        for chunk in chunks(items, cfg.max_items_per_request):
            reqs = []
            handles = []
            for it in chunk:
                handle += 1
                handles.append(handle)
                mp = ua.MonitoringParameters()
                mp.ClientHandle = handle
                mp.SamplingInterval = sampling
                mp.QueueSize = cfg.queue_size
                mp.DiscardOldest = True
                mp.Filter = flt
                reqs.append(
                    ua.MonitoredItemCreateRequest(
                        ItemToMonitor=ua.ReadValueId(
                            NodeId=it.node, AttributeId=ua.AttributeIds.Value
                        ),
                        MonitoringMode=ua.MonitoringMode.Reporting,
                        RequestedParameters=mp,
                    )
                )
            # Register the handles first: the first notifications can arrive before
            # CreateMonitoredItems answers.
            for h, it in zip(handles, chunk, strict=True):
                self.items[h] = it
            mparams = ua.CreateMonitoredItemsParameters()
            mparams.SubscriptionId = self.subscription_id
            mparams.TimestampsToReturn = ua.TimestampsToReturn.Both
            mparams.ItemsToCreate = reqs
            results = await session.create_monitored_items(mparams)
            for h, it, res in zip(handles, chunk, results, strict=True):
                if not res.StatusCode.is_good():
                    self.items.pop(h, None)
                    refused.append(f"{it.node.to_string()} ({res.StatusCode.name})")
        if refused:
            shown = ", ".join(refused[:5]) + (
                f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            )
            self.src.error_once("node", f"{len(refused)} node(s) refused: {shown}")
        return len(self.items)

    async def _on_publish(self, result: ua.PublishResult) -> None:
        """Called by asyncua's publish loop for every publish response (data or keep-alive)."""
        self.last_publish = time.monotonic()
        if self.closing:
            return
        try:
            batch = self._messages(result)
        except Exception as e:  # a decoding surprise must not kill the publish loop silently
            self.fail("error", f"cannot handle a publish response: {e!r}")
            return
        if not batch:
            return
        self.in_deliver = True
        try:
            for chunk in chunks(batch, MAX_DELIVER):
                await self.deliver(list(chunk))
        finally:
            self.in_deliver = False
            self.last_publish = time.monotonic()

    def _messages(self, result: ua.PublishResult) -> list[RawMessage]:
        data = result.NotificationMessage.NotificationData
        if not data:
            return []
        mono = time.monotonic()
        now_ns = time.time_ns()
        items = self.items
        out: list[RawMessage] = []
        append = out.append
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                for mi in notif.MonitoredItems:
                    item = items.get(mi.ClientHandle)
                    if item is not None:
                        append(
                            RawMessage(item.topic, encode(item, mi.Value), mono, now_ns, SOURCE, 0)
                        )
            elif isinstance(notif, ua.StatusChangeNotification):
                status = notif.Status
                if status is not None and status.value & BAD:
                    self.fail("subscription", f"subscription status {status.name}")
        return out

    # -- watch ---------------------------------------------------------------
    async def watch(self) -> None:
        """Return never; raise OpcuaFailure when the server stops answering."""
        assert self.client is not None
        cfg = self.cfg
        params = ua.ReadParameters()
        params.NodesToRead = [
            ua.ReadValueId(
                NodeId=ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime),
                AttributeId=ua.AttributeIds.Value,
            )
        ]
        session = self.client.uaclient.session
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), cfg.watchdog_interval_s)
            if self.lost.is_set():
                raise self.lost_reason or OpcuaFailure("connect", "connection lost")
            try:
                async with asyncio.timeout(cfg.watchdog_timeout_s):
                    await session.read(params)
            except TimeoutError:
                raise OpcuaFailure(
                    "watchdog",
                    f"server did not answer the watchdog read within {cfg.watchdog_timeout_s:g} s",
                ) from None
            except Exception as e:
                if self.lost.is_set():
                    continue
                f = classify(e)
                raise OpcuaFailure(f.kind, f"watchdog read failed: {f.message}") from None
            silent = time.monotonic() - self.last_publish
            limit = 3 * self.src.keepalive_period_s + cfg.request_timeout_s
            if not self.in_deliver and silent > limit:
                raise OpcuaFailure(
                    "subscription", f"no publish response (data or keep-alive) for {silent:.0f} s"
                )

    # -- close ---------------------------------------------------------------
    async def close(self, graceful: bool, wait_deliver: bool = True) -> None:
        """CloseSession (deleting subscriptions) if the server answers; then drop everything.

        A batch the pipeline is still taking (backpressure) gets a moment to go in
        first, unless the gateway is stopping (`wait_deliver` False).
        """
        client = self.client
        if client is None:
            return
        self.closing = True
        if wait_deliver and self.in_deliver:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FORCE_CLOSE_TIMEOUT_S):
                    while self.in_deliver:
                        await asyncio.sleep(0.02)
        self.items = {}
        proto = client.uaclient.protocol
        alive = proto is not None and not proto.is_closed
        if alive:
            timeout = min(self.cfg.request_timeout_s, FORCE_CLOSE_TIMEOUT_S if graceful else 1.0)
            with contextlib.suppress(Exception, TimeoutError):
                async with asyncio.timeout(timeout):
                    await client.disconnect()
        await _force_close(client)
        self.client = None


async def _force_close(client: Client) -> None:
    """Cancel every task the client started and close its socket, without asking the server."""
    uac = client.uaclient
    uac.request_disconnect()
    tasks = [
        getattr(client, "_supervisor_task", None),
        getattr(client, "_stale_watchdog_task", None),
        getattr(client, "_renew_channel_task", None),
        getattr(uac.session, "_publish_task", None),
    ]
    live = [t for t in tasks if t is not None and not t.done()]
    for t in live:
        t.cancel()
    if live:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FORCE_CLOSE_TIMEOUT_S):
                await asyncio.gather(*live, return_exceptions=True)
    proto = uac.protocol
    transport = getattr(proto, "transport", None)
    if transport is not None:
        if transport.get_write_buffer_size():
            transport.abort()  # the peer is not reading: do not wait for a flush
        else:
            transport.close()  # FIN after what was written (e.g. CloseSession) is sent
    with contextlib.suppress(Exception):
        uac.disconnect_socket()
