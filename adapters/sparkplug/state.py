"""The primary host's STATE on its own MQTT connection (README.md beside this file).

``spBv1.0/STATE/{host_id}``, QoS 1, retained, JSON ``{"online": bool, "timestamp": T}``:
the CONNECT carries the Will ``online: false``; once connected it subscribes to its own
STATE topic and says ``online: true`` with the Will's timestamp T — but only while the
gateway's data link (`MqttLink`, which carries the ``spBv1.0/...`` subscriptions) is up:
`link_state(up)` follows that link, so edge nodes never publish into a gateway that cannot
hear them. It republishes ``online`` when it sees its own topic say offline, and says
``offline`` before a clean disconnect (cancellation). Clean session, as the specification
requires of a host application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiomqtt
import orjson

from adapters.base import Deliver
from adapters.mqtt.link import _tls_context
from gateway.config import MqttConfig
from gateway.core.backoff import Backoff

log = logging.getLogger("edge.sparkplug")


def state_body(online: bool, timestamp_ms: int) -> bytes:
    return orjson.dumps({"online": online, "timestamp": timestamp_ms})


class PrimaryHostState:
    """A `Source` that delivers nothing: it keeps the STATE connection."""

    def __init__(self, cfg: MqttConfig, host_id: str, on_online: Any = None) -> None:
        self.cfg = cfg
        self.host_id = host_id
        self.topic = f"spBv1.0/STATE/{host_id}"
        self.name = f"sparkplug-state {host_id}"
        self.link_up = False
        self.online = False  # what we last said on this connection
        self._on_online = on_online or (lambda up: None)
        self._wake = asyncio.Event()
        self.published = 0  # STATE messages published (tests)
        self._node = 0  # index into cfg.nodes()

    def link_state(self, up: bool) -> None:
        """The data link went up (subscribed) or down."""
        self.link_up = up
        self._wake.set()

    def _client(self, ts: int) -> aiomqtt.Client:
        cfg = self.cfg
        nodes = cfg.nodes()  # [mqtt] servers: the next node after each failure
        host, port = nodes[self._node % len(nodes)]
        return aiomqtt.Client(
            host,
            port,
            identifier=f"{cfg.client_id}-spb-state",
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            clean_session=True,  # tck-id-message-flow-phid-sparkplug-clean-session-311
            keepalive=cfg.keepalive,
            will=aiomqtt.Will(self.topic, state_body(False, ts), qos=1, retain=True),
            tls_context=_tls_context(cfg),
            tls_insecure=cfg.tls_insecure if cfg.tls else None,
            timeout=10,
        )

    async def _say(self, client: aiomqtt.Client, online: bool, ts: int) -> None:
        await client.publish(self.topic, state_body(online, ts), qos=1, retain=True, timeout=10)
        self.online = online
        self.published += 1
        self._on_online(online)

    async def run(self, deliver: Deliver) -> None:
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        while True:
            ts = int(time.time() * 1000)  # the Will's timestamp, repeated by the birth
            client = self._client(ts)
            try:
                async with client:
                    await client.subscribe(self.topic, qos=1)
                    backoff.reset()
                    try:
                        await self._session(client, ts)
                    except asyncio.CancelledError:
                        await self._goodbye(client, ts)
                        raise
            except aiomqtt.MqttError as e:
                log.warning("sparkplug: STATE connection lost: %s (retrying)", e)
                self._node += 1
            finally:
                if self.online:
                    self.online = False
                    self._on_online(False)
            await asyncio.sleep(backoff.next())

    async def _session(self, client: aiomqtt.Client, ts: int) -> None:
        messages = client.messages.__aiter__()
        next_msg: asyncio.Task[Any] | None = None
        try:
            while True:
                want = self.link_up
                if want != self.online:
                    await self._say(client, want, ts)
                    log.info("sparkplug: STATE %s %s", self.topic, "online" if want else "offline")
                self._wake.clear()
                if next_msg is None:
                    next_msg = asyncio.ensure_future(messages.__anext__())
                wake = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait({next_msg, wake}, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                if next_msg in done:
                    msg = next_msg.result()
                    next_msg = None
                    if self._says_offline(msg.payload) and self.online:
                        # tck-id-message-flow-hid-sparkplug-state-message-delivered
                        await self._say(client, True, ts)
        finally:
            if next_msg is not None:
                next_msg.cancel()

    @staticmethod
    def _says_offline(payload: Any) -> bool:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        return isinstance(doc, dict) and doc.get("online") is False

    async def _goodbye(self, client: aiomqtt.Client, ts: int) -> None:
        """offline before a clean disconnect (tck-id-operational-behavior-host-application-
        disconnect-intentional)."""
        if not self.online:
            return
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(
                client.publish(self.topic, state_body(False, ts), qos=1, retain=True), 2
            )
            self.online = False
