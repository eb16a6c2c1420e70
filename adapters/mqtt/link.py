"""One MQTT broker connection, used both ways.

Inbound it is the MQTT source: it subscribes to the configured filters and
hands raw messages to the pipeline in batches. Outbound it publishes alerts,
status and dead letters for the pipeline's publisher task. It reconnects
with capped exponential backoff and resubscribes; the gateway's own status
topic is retained `online`, with a retained Last Will `offline`.

With `[mqtt] servers` (the nodes of one broker cluster) the nodes are tried in
order at start, and a failed connect or a lost connection moves on to the next
node, round-robin, with the same backoff, client id and persistent session
(docs/scale-out.md). `on_server("host:port")` is called on every connect to a
node other than the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import aiomqtt

from adapters.base import Deliver, NotConnected, OnState
from adapters.mqtt.fastpath import Inbox, Outbox, install, puback_many
from gateway.config import MqttConfig
from gateway.core.backoff import Backoff
from gateway.core.model import RawMessage
from gateway.core.topics import filter_matches

log = logging.getLogger("edge.mqtt")

MAX_BATCH = 1000  # messages handed to the pipeline at once ...
SUBSCRIPTION_CACHE_MAX = 65_536  # topics whose subscription index is remembered
MAX_BATCH_BYTES = 256 << 10  # ... or this much payload: a batch is processed without a pause
PENDING_CALLS_LOG_THRESHOLD = 1_000_000  # see _make_client: no per-publish warnings


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    if cfg.tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def suback_problem(topic: str, asked: int, granted: Sequence[Any]) -> tuple[int, str] | None:
    """(log level, message) when a SUBACK refused `topic` or granted less than `asked`.

    Brokers differ here (docs/brokers.md): NATS 2.9 and RabbitMQ 3.10 grant QoS 1 for a
    QoS 2 subscription, NATS refuses a filter with '.' or ' ' (0x80).
    """
    if not granted:
        return None
    code = int(getattr(granted[0], "value", granted[0]))
    if code >= 0x80:
        return logging.ERROR, (
            f"mqtt: broker refused the subscription {topic!r} (SUBACK 0x{code:02x}): "
            "nothing will arrive on it"
        )
    if code < asked:
        return logging.WARNING, f"mqtt: broker granted QoS {code} for {topic!r} (asked {asked})"
    return None


class MqttLink:
    """The broker link (`adapters.base.BrokerLink`) on aiomqtt, with the fast read path."""

    name = "mqtt"
    max_batch = MAX_BATCH

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        command_topics: tuple[str, ...] = (),
        on_state: OnState | None = None,
        on_server: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.status_topic = f"gateway/{cfg.client_id}/status"
        self.command_topics = command_topics
        self._on_state = on_state or (lambda up: None)
        self._on_server = on_server or (lambda server: None)
        self._addrs = cfg.nodes()
        # "host:port" ("[v6]:port"), tried in order
        self.nodes = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self._addrs]
        self._node = 0  # index of the node tried next / connected to
        self.server: str | None = None  # the node of the last connection
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._filters = [s.topic for s in cfg.subscriptions]
        self._inbox: Inbox | None = None
        self._outbox: Outbox | None = None
        self._acked: Callable[[Any], None] = lambda item: None
        self._lost: Callable[[list[Any]], None] = lambda items: None
        self._sub_of: dict[str, int] = {}  # topic -> subscription index
        self._suback_logged: dict[str, str] = {}  # filter -> problem last logged
        self._retired: list[str] = []  # filters of an earlier run, no longer configured

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def _subscription_of(self, topic: str) -> int:
        """Index of the first subscription whose filter matches; cached per topic."""
        if len(self._filters) == 1:
            return 0
        i = self._sub_of.get(topic)
        if i is None:
            i = next((j for j, f in enumerate(self._filters) if filter_matches(f, topic)), 0)
            if len(self._sub_of) >= SUBSCRIPTION_CACHE_MAX:
                self._sub_of.clear()
            self._sub_of[topic] = i
        return i

    def _make_client(self) -> aiomqtt.Client:
        cfg = self.cfg
        password = cfg.password.get_secret_value() if cfg.password else None
        host, port = self._addrs[self._node]
        client = aiomqtt.Client(
            host,
            port,
            identifier=cfg.client_id,
            username=cfg.username,
            password=password,
            clean_session=cfg.clean_session,
            keepalive=cfg.keepalive,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            tls_context=_tls_context(cfg),
            tls_insecure=cfg.tls_insecure if cfg.tls else None,
            timeout=cfg.connect_timeout_s,
        )
        # At-least-once: paho must not PUBACK a QoS 1 message on receipt (its
        # default); the pipeline acks once the message's readings are durable.
        client._client.manual_ack_set(True)
        # aiomqtt logs a WARNING per publish call once more than 10 await their PUBACK:
        # one line per message under an alert burst. The pipeline bounds what it has in
        # flight itself and exports the backlog as edge_queue_depth{queue="publish"}.
        client.pending_calls_threshold = PENDING_CALLS_LOG_THRESHOLD
        self._inbox = Inbox(client, self._subscription_of, set(self.command_topics))
        self._outbox = Outbox(client._client, self._acked, cfg.topic_forbidden_chars)
        install(client, self._inbox, self._outbox)
        return client

    def ack(self, messages: list[RawMessage]) -> int:
        """PUBACK messages that arrived on the current connection; returns how many.

        Messages from an earlier connection are skipped: the broker redelivers
        them on the new one (persistent session) and they are de-duplicated.
        """
        client = self._client
        if client is None:
            return 0
        paho = client._client
        mids = []
        n = 0
        for m in messages:
            if m.qos and m.conn is client:
                n += 1
                if m.qos == 1:
                    mids.append(m.mid)
                else:
                    paho.ack(m.mid, m.qos)
        if mids:
            puback_many(paho, mids)  # one write for the whole group commit
        return n

    async def run(
        self, deliver: Deliver, on_command: Callable[[str, bytes], None] | None = None
    ) -> None:
        """Connect, subscribe, deliver; reconnect forever until cancelled."""
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        last_error: dict[str, str] = {}  # per node: repeated failures are logged once
        while True:
            node = self.nodes[self._node]
            try:
                async with self._make_client() as client:
                    await self._session(client, deliver, on_command, backoff)
            except aiomqtt.MqttError as e:
                err = str(e)
                if len(self.nodes) > 1:
                    self._node = (self._node + 1) % len(self.nodes)
                if self.connected or err != last_error.get(node):
                    nxt = f", next {self.nodes[self._node]}" if len(self.nodes) > 1 else ""
                    log.warning(
                        "mqtt: broker %s unavailable: %s (retrying with backoff%s)",
                        node,
                        err,
                        nxt,
                    )
                last_error[node] = err
            finally:
                self._client = None
                outbox, self._outbox = self._outbox, None
                if outbox is not None and outbox.inflight:
                    # before anything is sent on the next connection: sent again first
                    self._lost(outbox.lost())
                if self.connected:
                    self._connected.clear()
                    self._on_state(False)
            await asyncio.sleep(backoff.next())

    async def _session(
        self,
        client: aiomqtt.Client,
        deliver: Deliver,
        on_command: Callable[[str, bytes], None] | None,
        backoff: Backoff,
    ) -> None:
        for f in self._retired:  # the persistent session still has them
            await client.unsubscribe(f)
        subs: list[tuple[str, int]] = [(sub.topic, sub.qos) for sub in self.cfg.subscriptions]
        subs += [(topic, 1) for topic in self.command_topics]
        for topic, qos in subs:
            problem = suback_problem(topic, qos, await client.subscribe(topic, qos=qos))
            # logged once, not on every reconnect
            if problem is not None and self._suback_logged.get(topic) != problem[1]:
                log.log(*problem)
            self._suback_logged[topic] = problem[1] if problem else ""
        await client.publish(self.status_topic, b"online", qos=1, retain=True)
        self._client = client
        node = self.nodes[self._node]
        if node != self.server:
            if self.server is not None:
                log.warning("mqtt: broker node changed from %s to %s", self.server, node)
            self.server = node
            self._on_server(node)
        self._connected.set()
        self._on_state(True)
        backoff.reset()
        log.info(
            "mqtt: connected to %s as %s, subscribed to %s",
            node,
            self.cfg.client_id,
            ", ".join(s.topic for s in self.cfg.subscriptions),
        )
        inbox = self._inbox
        assert inbox is not None
        paho = client._client
        disconnected = client._disconnected
        while True:
            await inbox.wait(disconnected)
            if inbox.commands:
                commands, inbox.commands = inbox.commands, []
                for topic, payload, mid, qos in commands:
                    if on_command is not None:
                        on_command(topic, payload)
                    if qos:
                        paho.ack(mid, qos)
            if inbox.messages:
                await deliver(inbox.take(MAX_BATCH, MAX_BATCH_BYTES))
            elif disconnected.done():
                disconnected.result()  # raises the reason (an MqttError)
                raise aiomqtt.MqttError("disconnected")

    def stream(
        self, acked: Callable[[Any], None], lost: Callable[[list[Any]], None]
    ) -> Callable[[Sequence[Any]], list[tuple[Any, str]]]:
        """The publisher's batch path; returns `send_many`.

        `acked(item)` is called as each QoS 1 item's PUBACK arrives; `lost(items)` with
        the items still unacknowledged, in the order sent, when a connection ends
        (before the next one is up).
        """
        self._acked = acked
        self._lost = lost
        if self._outbox is not None:
            self._outbox.acked = acked
        return self.send_many

    def send_many(self, items: Sequence[Any]) -> list[tuple[Any, str]]:
        """Write PUBLISH packets (QoS 0/1) for `items` (``.topic .payload .qos .retain``).

        No await and no future per message: one buffer, one write (see
        `fastpath.Outbox`). Returns the items that cannot be published, with why;
        raises `NotConnected` while the broker is away.
        """
        outbox = self._outbox
        if outbox is None or self._client is None or not self.connected:
            raise NotConnected(items[0].topic if items else "")
        return outbox.send(items)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        client = self._client
        if client is None or not self.connected:
            raise NotConnected(topic)
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=10)
        except aiomqtt.MqttError as e:
            raise NotConnected(f"{topic}: {e}") from None

    def retire_filters(self, filters: list[str]) -> None:
        if filters:
            log.info("mqtt: unsubscribing %s (no longer configured)", ", ".join(filters))
        live = [s.topic for s in self.cfg.subscriptions]
        self._retired = [f for f in filters if f not in live]
        # numbered after the configured ones, as the normalizer numbers them
        self._filters = live + self._retired
        self._sub_of.clear()

    async def goodbye(self) -> None:
        """Say `offline` on the status topic before a clean disconnect."""
        client = self._client
        if client is not None and self.connected:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(self.status_topic, b"offline", qos=1, retain=True, timeout=2)
