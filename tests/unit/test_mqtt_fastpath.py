"""The MQTT read fast path: PUBLISH packets decoded from the buffer, the rest left to paho."""

from __future__ import annotations

import logging
import socket
import struct
from typing import Any, NamedTuple

import paho.mqtt.client as paho_mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from adapters.mqtt import fastpath
from adapters.mqtt.fastpath import BufferedSocket, Inbox, Outbox
from adapters.mqtt.fastpath import varlen as mqtt_varlen
from adapters.mqtt.link import suback_problem


def publish(topic: str, payload: bytes, qos: int = 0, mid: int = 0) -> bytes:
    body = struct.pack("!H", len(topic.encode())) + topic.encode()
    if qos:
        body += struct.pack("!H", mid)
    body += payload
    return bytes([0x30 | (qos << 1)]) + mqtt_varlen(len(body)) + body


class FakeSocket:
    """recv_into hands out the given chunks, then would block."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    def recv_into(self, buf: bytearray) -> int:
        if not self.chunks:
            raise BlockingIOError
        data = self.chunks.pop(0)
        buf[: len(data)] = data
        return len(data)


def test_publishes_are_decoded_until_another_packet_type() -> None:
    big = b"x" * 300  # two-byte remaining length
    data = (
        publish("plant/a/b/t", b'{"value": 1}')
        + publish("plant/a/b/p", big, qos=1, mid=513)
        + bytes([0xD0, 0x00])  # PINGRESP: paho's
        + publish("plant/a/b/t", b"2")
    )
    sock = BufferedSocket(FakeSocket(data))
    got: list[tuple[str, bytes, int, int]] = []
    assert sock.take_publishes(lambda *a: got.append(a), 100) == 2
    assert got == [("plant/a/b/t", b'{"value": 1}', 0, 0), ("plant/a/b/p", big, 513, 1)]
    assert sock.recv(1) == bytes([0xD0])  # what paho reads next
    assert sock.recv(1) == b"\x00"
    assert sock.take_publishes(lambda *a: got.append(a), 100) == 1
    assert got[-1] == ("plant/a/b/t", b"2", 0, 0)


def test_a_packet_cut_by_the_buffer_end_is_left_to_paho() -> None:
    pkt = publish("plant/a/b/t", b"12345", qos=1, mid=7)
    sock = BufferedSocket(FakeSocket(pkt + pkt[:6], pkt[6:]))
    got: list[tuple[str, bytes, int, int]] = []
    assert sock.take_publishes(lambda *a: got.append(a), 100) == 1
    assert sock.pending() == 6
    # paho reads the rest with its own recv calls, across the refill
    assert sock.recv(1) + sock.recv(1) + sock.recv(100) == pkt[:6]
    assert sock.recv(100) == pkt[6:]


def test_qos2_and_limit_stop_the_parser() -> None:
    data = publish("a", b"1") + publish("a", b"2") + publish("a", b"3", qos=2, mid=1)
    sock = BufferedSocket(FakeSocket(data))
    got: list[tuple[str, bytes, int, int]] = []
    assert sock.take_publishes(lambda *a: got.append(a), 1) == 1
    assert sock.take_publishes(lambda *a: got.append(a), 100) == 1
    assert [g[1] for g in got] == [b"1", b"2"]
    assert sock.pending() == len(publish("a", b"3", qos=2, mid=1))


def test_paho_decodes_what_the_parser_builds() -> None:
    """The test's packet builder agrees with paho's own decoder (so the tests above mean it)."""
    from paho.mqtt import _packet

    pkt = publish("plant/x/y/z", b"payload", qos=1, mid=99)
    result = _packet.decode_publish(pkt[0], pkt[2:], paho_mqtt.MQTTv311)
    assert (result.topic, result.mid, result.qos, result.payload) == (
        b"plant/x/y/z",
        99,
        1,
        b"payload",
    )


def test_inbox_bounds_pause_reading_and_take_resumes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "INBOX_MAX_MESSAGES", 4)
    monkeypatch.setattr(fastpath, "INBOX_MAX_BYTES", 1 << 20)
    inbox = Inbox(conn=None, subscription_of=lambda t: 0, commands={"alerts/ack"})
    resumed: list[bool] = []
    for i in range(4):
        inbox.add(f"plant/a/b/s{i}", b"x" * 100, i + 1, 1)
    inbox.add("alerts/ack", b"{}", 9, 1)  # commands go apart and do not count
    assert inbox.full() and len(inbox.commands) == 1
    inbox.resume = lambda: resumed.append(True)  # what the reader leaves when it pauses
    batch = inbox.take(max_messages=10, max_bytes=250)  # cut by bytes: 3 x 100 >= 250
    assert [m.mid for m in batch] == [1, 2, 3] and inbox.nbytes == 100
    assert resumed == [True] and inbox.resume is None  # room again: reading resumes once
    assert [m.mid for m in inbox.take(10, 1 << 20)] == [4] and inbox.nbytes == 0


def test_inbox_messages_of_one_read_share_its_receive_time() -> None:
    inbox = Inbox(conn="c", subscription_of=lambda t: 2, commands=set())
    inbox.stamp()
    inbox.add("plant/a/b/x", b"1", 1, 1)
    inbox.add("plant/a/b/y", b"2", 2, 0)
    a, b = inbox.messages
    assert a.received == b.received and a.received_ns == b.received_ns
    assert (a.subscription, a.conn, b.qos) == (2, "c", 0)


def test_pubacks_are_taken_from_the_read_buffer_when_they_are_the_outboxs() -> None:
    """Its own PUBACKs are matched by packet id in the buffer; any other is left to paho."""
    mine: dict[int, str] = {5: "a", 6: "b"}
    taken: list[str] = []

    def puback(mid: int) -> bool:
        if mid in mine:
            taken.append(mine.pop(mid))
            return True
        return False

    sock = BufferedSocket(FakeSocket(bytes([0x40, 2, 0, 5, 0x40, 2, 0, 6, 0x40, 2, 0, 9, 0x40, 2])))
    sock.puback = puback
    assert sock.take_publishes(lambda *a: None, 100) == 2
    assert taken == ["a", "b"]
    assert sock.pending() == 6  # paho reads the PUBACK of id 9, and the cut one


class _Item(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: int


def test_outbox_refuses_topics_with_characters_the_broker_cannot_carry() -> None:
    """[mqtt] topic_forbidden_chars: NATS 2.9 drops the connection on a '.' or ' ' topic."""
    client = paho_mqtt.Client(paho_mqtt.CallbackAPIVersion.VERSION2, client_id="t")
    ours, broker = socket.socketpair()
    client._sock = ours
    items = [
        _Item("status/pump.1", b"a", 1, 1),
        _Item("status/pump 2", b"b", 1, 1),
        _Item("status/pump-3", b"c", 1, 1),
    ]
    try:
        box = Outbox(client, lambda it: None, ". ")
        bad = box.send(items)
        assert [(it.topic, why) for it, why in bad] == [
            ("status/pump.1", "topic has '.', which the broker cannot carry"),
            ("status/pump 2", "topic has ' ', which the broker cannot carry"),
        ]
        assert list(box.inflight.values()) == [items[2]]  # only what was sent awaits a PUBACK
        [mid] = box.inflight
        assert broker.recv(1024) == bytes([0x33]) + publish("status/pump-3", b"c", 1, mid)[1:]
        # without the setting every topic goes out (mosquitto carries them all)
        assert Outbox(client, lambda it: None).send(items) == []
        assert broker.recv(1024).count(b"status/pump") == 3
    finally:
        ours.close()
        broker.close()


@pytest.mark.parametrize(
    ("asked", "granted", "expected"),
    [
        (1, [ReasonCode(PacketTypes.SUBACK, identifier=1)], None),
        (2, [ReasonCode(PacketTypes.SUBACK, identifier=2)], None),
        (
            2,
            [ReasonCode(PacketTypes.SUBACK, identifier=1)],
            (logging.WARNING, "mqtt: broker granted QoS 1 for 'a/+' (asked 2)"),
        ),
        (
            1,
            [ReasonCode(PacketTypes.SUBACK, identifier=0x80)],
            (
                logging.ERROR,
                "mqtt: broker refused the subscription 'a/+' (SUBACK 0x80): "
                "nothing will arrive on it",
            ),
        ),
        (1, [1], None),  # a plain granted-QoS list
        (1, [], None),
    ],
)
def test_suback_problems_are_reported(
    asked: int, granted: list[Any], expected: tuple[int, str] | None
) -> None:
    assert suback_problem("a/+", asked, granted) == expected
