"""The inbound hot path around paho, measured and kept in one place.

aiomqtt drives paho from the asyncio loop: one socket readiness callback reads
ONE packet (paho reads a packet header with single-byte ``recv`` calls), wraps it
in an aiomqtt ``Message``, matches its topic against per-topic callbacks, and
puts it on an ``asyncio.Queue``, whose consumer spawns a task per message. With
manual acknowledgement each PUBACK is one more ``send`` syscall. At one reading
per message that is most of the gateway's CPU (see docs/performance.md).

Outbound, paho's ``publish`` builds an ``MQTTMessage`` under locks and queues one
packet (one ``send``) per message, aiomqtt adds a future, a timeout and a scan of
its pending calls per message, and each PUBACK builds a ``ReasonCode`` and a
``Properties``: ~14,000 QoS 1 messages/s at most here.

Five small interventions at paho extension points and attributes, none changing
what goes over the wire:

* `BufferedSocket` wraps paho's socket: reads come from a 64 KiB buffer, and the
  socket's reader callback handles up to `BURST` buffered packets per wakeup, then
  yields to the other tasks (a reader that never yields would starve them).
* `Inbox` replaces paho's ``_handle_on_message`` for the client: each PUBLISH
  becomes a `RawMessage` in a list the link drains in batches, no ``Message``,
  no queue, no task per message.
* `BufferedSocket.take_publishes` decodes complete QoS 0/1 PUBLISH packets (MQTT
  3.1.1) straight from that buffer; everything else (CONNACK, SUBACK, PUBACK,
  PINGRESP, QoS 2, a packet cut by the buffer's end, MQTT 5) is left to paho.
* `puback_many` sends the PUBACKs of a whole group commit as one write (and the
  socket is ``TCP_NODELAY``: writes are batched here, Nagle would only delay alerts).
* `Outbox` writes a batch of QoS 0/1 PUBLISH packets as one buffer (packet ids from
  paho's counter) and matches the PUBACKs, taken from the same read buffer by
  `take_publishes` or from paho's ``_handle_pubackcomp``, to the publisher's items.

If paho's internals move, `install` fails loudly at connect time (tests cover it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import Any

import paho.mqtt.client as paho_mqtt

from gateway.core.model import RawMessage

READ_SIZE = 65536
BURST = 8  # rounds of (up to PARSE_BATCH PUBLISH + one other packet) per reader callback
PARSE_BATCH = 128
# The inbox holds at most this much; past it the socket is not read (TCP backpressure:
# the broker queues) until the pipeline took a batch. The broker's in-flight window
# would bound it too, but not every broker enforces one.
INBOX_MAX_MESSAGES = 2000
INBOX_MAX_BYTES = 4 << 20
PUBACK = 0x40
PUBLISH = 0x30
_PUBACK = struct.Struct("!BBH")
_U16 = struct.Struct("!H")
MAX_PAYLOAD = 268_435_455 - 65_540  # what a PUBLISH's remaining length can hold, about


class BufferedSocket:
    """paho's socket with buffered reads; everything else is the socket's own."""

    __slots__ = ("_buf", "_end", "_pos", "_sock", "_view", "puback", "received")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        # takes the packet id of a PUBACK; True if it was one of the `Outbox`'s
        self.puback: Any = None
        # one buffer for the connection's life: a fresh 64 KiB bytes object per read,
        # shrunk to what arrived, fragments the C heap (RSS grew by hundreds of MB)
        self._buf = bytearray(READ_SIZE)
        self._view = memoryview(self._buf)
        self._pos = self._end = 0
        self.received = False  # take_publishes read from the socket (paho's keepalive)

    def recv(self, n: int) -> bytes:
        pos = self._pos
        if pos >= self._end:
            got = self._sock.recv_into(self._buf)  # BlockingIOError etc.: paho handles
            if not got:
                return b""  # closed by the broker
            pos, self._end = 0, got
        end = min(pos + n, self._end)
        self._pos = end
        return self._view[pos:end].tobytes()

    def take_publishes(self, add: Any, limit: int) -> int:
        """Decode complete QoS 0/1 PUBLISH packets (MQTT 3.1.1) at the head of the buffer.

        Calls ``add(topic, payload, mid, qos)`` for each; returns how many. Stops at
        anything else (another packet type, QoS 2, a packet not complete yet): paho
        reads that, from the same buffer, as before.
        """
        buf, view = self._buf, self._view
        pos, end = self._pos, self._end
        n = 0
        while n < limit:
            if pos >= end:
                try:
                    got = self._sock.recv_into(buf)
                except OSError:  # would block (or worse): paho's next read sees it
                    break
                if not got:
                    break  # closed: paho's next read sees that too
                pos, end = 0, got
                self._pos, self._end = 0, got
                self.received = True
            b0 = buf[pos]
            if b0 == PUBACK:  # the publisher's acknowledgements come back the same way
                if (
                    pos + 4 > end
                    or buf[pos + 1] != 2
                    or self.puback is None
                    or not self.puback((buf[pos + 2] << 8) | buf[pos + 3])
                ):
                    break  # cut by the buffer's end, MQTT 5 reason code, or paho's own
                pos = self._pos = pos + 4
                n += 1
                continue
            if b0 & 0xF0 != 0x30 or b0 & 0x06 > 0x02:  # not a PUBLISH, or QoS 2
                break
            i = pos + 1
            rl = 0
            shift = 0
            while i < end and i - pos <= 4:
                b = buf[i]
                i += 1
                rl |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            else:
                break  # length not complete yet (or malformed: paho says so)
            stop = i + rl
            if stop > end or rl < 2:
                break
            t0 = i + 2
            t1 = t0 + ((buf[i] << 8) | buf[i + 1])
            if b0 & 0x06:
                if t1 + 2 > stop:
                    break
                mid = (buf[t1] << 8) | buf[t1 + 1]
                p0 = t1 + 2
                qos = 1
            else:
                mid = qos = 0
                p0 = t1
            if p0 > stop:
                break
            try:
                topic = view[t0:t1].tobytes().decode()
            except UnicodeDecodeError:
                topic = view[t0:t1].tobytes().decode("utf-8", "replace")
            add(topic, view[p0:stop].tobytes(), mid, qos)
            pos = self._pos = stop
            n += 1
        return n

    def pending(self) -> int:
        """Bytes readable without waiting for the socket (decrypted TLS included)."""
        inner = getattr(self._sock, "pending", None)
        return self._end - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Inbox:
    """Where paho puts inbound PUBLISH packets, as RawMessages, for the link to drain."""

    def __init__(self, conn: object, subscription_of: Any, commands: set[str]) -> None:
        self.messages: list[RawMessage] = []
        self.nbytes = 0  # payload bytes in `messages`
        self.commands: list[tuple[str, bytes, int, int]] = []
        self.resume: Any = None  # set while the reader is paused because the inbox is full
        self._conn = conn
        self._sub_of = subscription_of
        self._command_topics = commands
        self._waiter: asyncio.Future[None] | None = None
        self.stamp()

    def stamp(self) -> float:
        """Take the receive time once per socket read, not once per message."""
        self._mono = now = time.monotonic()
        self._wall = time.time_ns()
        return now

    def on_publish(self, message: paho_mqtt.MQTTMessage) -> None:
        """paho's path (packets the parser left to it): one PUBLISH."""
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "replace")
        payload = message.payload
        if type(payload) is not bytes:
            payload = bytes(payload)
        self.stamp()  # paho's path is per packet anyway
        self.add(topic, payload, message.mid, message.qos)

    def add(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        if topic in self._command_topics:
            self.commands.append((topic, payload, mid, qos))
        else:
            self.nbytes += len(payload)
            self.messages.append(
                RawMessage(
                    topic,
                    payload,
                    self._mono,
                    self._wall,
                    "mqtt",
                    self._sub_of(topic),
                    mid,
                    qos,
                    self._conn,
                )
            )
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def full(self) -> bool:
        return len(self.messages) >= INBOX_MAX_MESSAGES or self.nbytes >= INBOX_MAX_BYTES

    def take(self, max_messages: int, max_bytes: int) -> list[RawMessage]:
        """The oldest messages, up to `max_messages` and about `max_bytes` of payload."""
        msgs = self.messages
        if len(msgs) <= max_messages and self.nbytes <= max_bytes:
            batch, self.messages, self.nbytes = msgs, [], 0
        else:
            size = n = 0
            for m in msgs:
                n += 1
                size += len(m.payload)
                if n >= max_messages or size >= max_bytes:
                    break
            batch = msgs[:n]
            del msgs[:n]
            self.nbytes -= size
        if self.resume is not None and not self.full():
            resume, self.resume = self.resume, None
            resume()
        return batch

    async def wait(self, disconnected: asyncio.Future[Any]) -> None:
        """Until something arrived or `disconnected` is done."""
        while not self.messages and not self.commands and not disconnected.done():
            self._waiter = w = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait((w, disconnected), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._waiter = None


class Outbox:
    """Outbound QoS 0/1 PUBLISH packets, many per write, their PUBACKs matched by id.

    Replaces paho's per-message ``publish`` (an ``MQTTMessage``, locks, one packet-queue
    entry and one ``send`` per message, a ``ReasonCode`` and a ``Properties`` per PUBACK)
    and aiomqtt's future and timeout per message. `send` encodes a batch into one
    buffer and writes it at once (what the socket does not take waits in paho's
    packet queue, in order, behind anything queued before it); PUBACKs are taken
    straight from the read buffer (`BufferedSocket.take_publishes`) or, when paho
    reads one, by its ``_handle_pubackcomp``. Packet ids come from paho's counter, so
    they never collide with paho's own publishes and subscriptions.

    `acked(item)` is called once per acknowledged QoS 1 item. `inflight` keeps the
    items not acknowledged yet, in the order written: when the connection ends,
    `lost()` returns them (the link hands them back to the publisher for a retry).
    """

    def __init__(self, paho: paho_mqtt.Client, acked: Any, forbidden: str = "") -> None:
        self.inflight: dict[int, Any] = {}  # packet id -> item, in send order
        self.acked = acked
        self._paho = paho
        self._v5 = paho._protocol == paho_mqtt.MQTTv5
        # topic characters the broker cannot carry ([mqtt] topic_forbidden_chars)
        self._forbidden = tuple((c, c.encode()) for c in dict.fromkeys(forbidden))

    def take_ack(self, mid: int) -> bool:
        it = self.inflight.pop(mid, None)
        if it is None:
            return False
        self.acked(it)
        return True

    def lost(self) -> list[Any]:
        items = list(self.inflight.values())
        self.inflight.clear()
        return items

    def send(self, items: Any) -> list[tuple[Any, str]]:
        """Write PUBLISH packets for `items` (``.topic .payload .qos .retain``).

        Returns the items that cannot be published at all, with the reason (a wildcard
        in the topic, a character the broker cannot carry, ...); everything else is
        written or queued for writing.
        """
        paho = self._paho
        inflight = self.inflight
        mid = paho._last_mid
        props = b"\x00" if self._v5 else b""
        pack = _U16.pack
        parts: list[bytes] = []
        add = parts.append
        bad: list[tuple[Any, str]] = []
        for it in items:
            t = it.topic.encode()
            payload = it.payload
            if type(payload) is not bytes:
                payload = payload.encode() if isinstance(payload, str) else bytes(payload)
            if not t or b"+" in t or b"#" in t or len(t) > 65535 or len(payload) > MAX_PAYLOAD:
                bad.append((it, "invalid topic or payload too large"))
                continue
            if self._forbidden:
                hit = next((c for c, b in self._forbidden if b in t), None)
                if hit is not None:
                    bad.append((it, f"topic has {hit!r}, which the broker cannot carry"))
                    continue
            qos = it.qos
            if qos:
                mid = mid + 1 if mid < 65535 else 1
                while mid in inflight:  # a packet id still unacknowledged: skip it
                    mid = mid + 1 if mid < 65535 else 1
                inflight[mid] = it
                head = pack(len(t)) + t + pack(mid) + props
            else:
                head = pack(len(t)) + t + props
            rl = len(head) + len(payload)
            cmd = PUBLISH | 0x02 | it.retain if qos else PUBLISH | it.retain
            if rl < 128:
                add(bytes((cmd, rl)))
            else:
                add(bytes((cmd,)) + varlen(rl))
            add(head)
            add(payload)
        paho._last_mid = mid
        if parts:
            self.write(b"".join(parts))
        return bad

    def write(self, data: bytes) -> None:
        """Send now if nothing is queued before it; queue what the socket did not take."""
        paho = self._paho
        sent = 0
        if not paho._out_packet:
            try:
                sent = paho._sock_send(data)
                paho._last_msg_out = time.monotonic()  # paho's keepalive clock
            except (BlockingIOError, ConnectionError, OSError, AttributeError):
                sent = 0  # paho's writer retries it; a broken socket is seen there too
        if sent < len(data):
            # qos 1: paho's writer must not report it as a QoS 0 message sent
            paho._packet_queue(PUBLISH, data[sent:] if sent else data, 0, 1)


def varlen(n: int) -> bytes:
    """MQTT's variable-length integer (the remaining length of a packet)."""
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        if n:
            out.append(b | 128)
        else:
            out.append(b)
            return bytes(out)


def install(client: Any, inbox: Inbox, outbox: Outbox | None = None) -> None:
    """Route an aiomqtt client's inbound messages to `inbox`; buffer and burst its reads."""
    paho: paho_mqtt.Client = client._client
    loop: asyncio.AbstractEventLoop = client._loop
    needed = ("_handle_on_message", "_sock", "_packet_queue", "_in_packet", "_protocol")
    out = ("_handle_pubackcomp", "_last_mid", "_out_packet", "_sock_send", "_last_msg_out")
    for attr in (*needed, *out, "_last_bytes_received", "loop_read"):
        if not hasattr(paho, attr):
            raise RuntimeError(f"mqtt: this paho-mqtt has no Client.{attr}; paho-mqtt 2.x has it")
    paho._handle_on_message = inbox.on_publish  # type: ignore[method-assign]
    if outbox is not None:
        handle_pubackcomp = paho._handle_pubackcomp

        def on_pubackcomp(cmd: Any) -> Any:
            """A PUBACK paho read itself (cut by the buffer's end, MQTT 5, ...)."""
            if cmd == "PUBACK" and outbox.inflight:
                pkt = paho._in_packet["packet"]
                if len(pkt) >= 2 and outbox.take_ack((pkt[0] << 8) | pkt[1]):
                    return paho_mqtt.MQTT_ERR_SUCCESS
            return handle_pubackcomp(cmd)

        paho._handle_pubackcomp = on_pubackcomp  # type: ignore[method-assign]
    opened = paho.on_socket_open  # aiomqtt's: registers its own reader callback

    def on_socket_open(c: paho_mqtt.Client, userdata: Any, sock: Any) -> None:
        # Writes are batched here already (PUBACKs of a group commit, PUBLISH batches);
        # with Nagle's algorithm a fresh alert written while an earlier small write waits
        # for its TCP ACK would wait too (paho leaves it on)
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffered = BufferedSocket(sock)
        if outbox is not None:
            buffered.puback = outbox.take_ack
        c._sock = buffered
        if opened is not None:
            opened(c, userdata, buffered)

        fd = sock.fileno()

        def resume() -> None:
            if c._sock is buffered:
                loop.add_reader(fd, on_readable)
                loop.call_soon(on_readable)  # what is buffered already

        fast = c._protocol != paho_mqtt.MQTTv5  # v5 PUBLISH has properties: paho's path

        def on_readable() -> None:
            if c._sock is not buffered:  # a stale call after this connection closed (its
                return  # fd number may belong to the next connection by now)
            try:
                for _ in range(BURST):
                    if inbox.full():
                        loop.remove_reader(fd)
                        inbox.resume = resume
                        return
                    if fast and c._in_packet["command"] == 0:  # paho is between packets
                        now = inbox.stamp()
                        buffered.take_publishes(inbox.add, PARSE_BATCH)
                        if buffered.received:
                            buffered.received = False
                            c._last_bytes_received = now
                        if inbox.full():
                            continue
                    if c.loop_read() or c._sock is not buffered or not buffered.pending():
                        return
                loop.call_soon(on_readable)  # more buffered: after the others had a turn
            except Exception as exc:  # as aiomqtt's own callback: the connection is gone
                if not client._disconnected.done():
                    client._disconnected.set_exception(exc)

        # scheduled after aiomqtt's add_reader, so this callback replaces its one
        loop.call_soon_threadsafe(loop.add_reader, fd, on_readable)

    paho.on_socket_open = on_socket_open


def puback_many(paho: paho_mqtt.Client, mids: list[int]) -> None:
    """PUBACK (QoS 1) these message ids in one write."""
    if len(mids) == 1:
        paho.ack(mids[0], 1)
        return
    pack = _PUBACK.pack
    data = b"".join([pack(PUBACK, 2, mid) for mid in mids])
    paho._packet_queue(PUBACK, data, 0, 0)
