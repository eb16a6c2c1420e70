"""The publish stage against a real mosquitto: severe first, order per topic, coalescing,
pacing, at-least-once across a broker restart (gateway/daemon/publish.py, the batch path
in adapters/mqtt/fastpath.py). Functional, not timed: what arrives, in which order, what
the retained topics end on, and that a burst logs nothing per message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest

from adapters.base import BrokerLink
from adapters.mqtt import MqttLink
from gateway.config import MqttConfig
from gateway.daemon.publish import Publisher
from tests.harness import MqttProbe, uid
from tests.servers import HOST, Mosquitto


@contextlib.asynccontextmanager
async def linked(broker: Mosquitto) -> AsyncIterator[MqttLink]:
    cfg = MqttConfig(host=HOST, port=broker.port, client_id=uid("pub"), reconnect_max_s=0.5)
    link = MqttLink(cfg)

    async def deliver(batch: object) -> None:  # nothing is subscribed that matches
        return None

    task = asyncio.create_task(link.run(deliver))
    await asyncio.wait_for(link.wait_connected(), 10)
    try:
        yield link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def drain(pub: Publisher, timeout: float = 30.0) -> None:
    pub.close()
    await asyncio.wait_for(pub_task(pub), timeout)


_tasks: dict[int, asyncio.Task[None]] = {}


def start(pub: Publisher) -> None:
    _tasks[id(pub)] = asyncio.create_task(pub.run())


async def pub_task(pub: Publisher) -> None:
    await _tasks.pop(id(pub))


@pytest.mark.asyncio
async def test_a_severe_alert_goes_before_ten_thousand_queued_status_messages(
    mosquitto: Mosquitto,
) -> None:
    base = uid("storm")
    with MqttProbe(mosquitto.port, [f"{base}/#"]) as probe:
        async with linked(mosquitto) as link:
            pub = Publisher(link)
            for i in range(10_000):
                pub.put(f"{base}/status/eq-{i}", b'{"status":"offline"}', 1, True)
            pub.put(f"{base}/events/pump-1/flow", b"critical!", 1, False, urgent=True)
            start(pub)
            await drain(pub)
        got = probe.wait_for(f"{base}/#", count=10_001, timeout=30)
    topics = [m.topic for m in got]
    assert topics[0] == f"{base}/events/pump-1/flow"  # first, ahead of the whole storm
    assert len(set(topics)) == 10_001 and pub.published == 10_001


@pytest.mark.asyncio
async def test_order_per_topic_holds_when_a_severe_message_jumps_ahead(
    mosquitto: Mosquitto,
) -> None:
    base = uid("order")
    t = f"{base}/events/pump-1/flow"
    with MqttProbe(mosquitto.port, [f"{base}/#"]) as probe:
        async with linked(mosquitto) as link:
            pub = Publisher(link)
            for i in range(2_000):
                pub.put(f"{base}/status/eq-{i}", b"x", 1, False)
            pub.put(t, b"1 cleared (normal lane)", 1, False)
            pub.put(t, b"2 raised (urgent)", 1, False, urgent=True)
            pub.put(t, b"3 acknowledged (normal)", 1, False)
            start(pub)
            await drain(pub)
        probe.wait_for(f"{base}/#", count=2_003, timeout=30)
    mine = [m.payload for m in probe.messages(t)]
    assert mine == [b"1 cleared (normal lane)", b"2 raised (urgent)", b"3 acknowledged (normal)"]
    first_two = [m.topic for m in probe.messages(f"{base}/#")][:2]
    assert first_two == [t, t]  # the earlier one moved ahead with the urgent one


@pytest.mark.asyncio
async def test_a_retained_topic_changed_before_it_went_out_is_sent_once(
    mosquitto: Mosquitto,
) -> None:
    base = uid("coalesce")
    with MqttProbe(mosquitto.port, [f"{base}/#"]) as probe:
        async with linked(mosquitto) as link:
            pub = Publisher(link)
            for v in (b"online", b"offline", b"online", b"anomaly"):
                pub.put(f"{base}/status/eq-1", v, 1, True)
            pub.put(f"{base}/events/eq-1/x", b"e1", 1, False)  # not retained: all kept
            pub.put(f"{base}/events/eq-1/x", b"e2", 1, False)
            start(pub)
            await drain(pub)
            assert pub.coalesced == 3
        probe.wait_for(f"{base}/#", count=3)
        probe.publish(f"{base}/end", b"sentinel")  # anything more would be before this
        probe.wait_for(f"{base}/end")
    assert [m.payload for m in probe.messages(f"{base}/status/eq-1")] == [b"anomaly"]
    assert [m.payload for m in probe.messages(f"{base}/events/eq-1/x")] == [b"e1", b"e2"]


@pytest.mark.asyncio
async def test_retained_topics_end_on_their_last_value_across_a_broker_restart(
    fresh_mosquitto: Mosquitto,
) -> None:
    base = uid("restart")
    n_topics, rounds = 300, 20
    async with linked(fresh_mosquitto) as link:
        pub = Publisher(link, window=32)
        start(pub)
        for r in range(rounds):
            for i in range(n_topics):
                pub.put(f"{base}/status/eq-{i}", f"round {r}".encode(), 1, True)
            for _ in range(3):
                await asyncio.sleep(0)  # let publishing start between rounds
        # the last round queued, its first window written and awaiting PUBACKs: the
        # broker goes away under it (SIGTERM), and nothing new is put after the restart
        assert pub.backlog > n_topics // 2
        fresh_mosquitto.restart()
        await drain(pub, timeout=60)
        assert pub.published >= n_topics
    with MqttProbe(fresh_mosquitto.port, [f"{base}/status/#", f"{base}/end"]) as late:
        late.publish(f"{base}/end", b"sentinel")  # retained ones arrive before it
        late.wait_for(f"{base}/end")
        last = {m.topic: m.payload for m in late.messages(f"{base}/status/#")}
    assert len(last) == n_topics
    assert set(last.values()) == {f"round {rounds - 1}".encode()}


@pytest.mark.asyncio
async def test_order_per_topic_holds_under_a_burst(mosquitto: Mosquitto) -> None:
    """20,000 messages on 50 topics as fast as they go: each topic's messages in order."""
    base = uid("burst")
    n_topics, per_topic = 50, 400
    with MqttProbe(mosquitto.port, [f"{base}/#"]) as probe:
        async with linked(mosquitto) as link:
            pub = Publisher(link, pace=None)
            start(pub)
            for k in range(per_topic):
                for i in range(n_topics):
                    pub.put(f"{base}/events/eq-{i}/x", str(k).encode(), 1, False)
                if k % 50 == 0:
                    await asyncio.sleep(0)  # publishing goes on while more is put
            await drain(pub)
            assert pub.published == n_topics * per_topic
        probe.wait_for(f"{base}/#", count=n_topics * per_topic, timeout=60)
    for i in range(n_topics):
        got = [int(m.payload) for m in probe.messages(f"{base}/events/eq-{i}/x")]
        assert got == list(range(per_topic))


@pytest.mark.asyncio
async def test_retained_topics_end_on_their_last_value_after_a_reconnect_mid_burst(
    fresh_mosquitto: Mosquitto,
) -> None:
    """The broker stops acknowledging with a full window in flight, then crashes: what was
    unacknowledged is sent again on the next connection, before anything newer."""
    base = uid("midburst")
    n_topics = 600
    broker = fresh_mosquitto
    assert broker.proc is not None
    async with linked(broker) as link:
        pub = Publisher(link, window=128)
        start(pub)
        for r in range(5):
            for i in range(n_topics):
                pub.put(f"{base}/status/eq-{i}", f"round {r}".encode(), 1, True)
            await asyncio.sleep(0.05)
        os.kill(broker.proc.pid, signal.SIGSTOP)  # no more PUBACKs
        try:
            for r in range(5, 8):
                for i in range(n_topics):
                    pub.put(f"{base}/status/eq-{i}", f"round {r}".encode(), 1, True)
                    pub.put(f"{base}/events/eq-{i}", f"round {r}".encode(), 1, False)
                await asyncio.sleep(0.05)
            assert pub.backlog > pub.window  # a full window in flight, more queued
        finally:
            broker.kill()  # SIGKILL ends a stopped process too: no chance to flush
        broker.start()
        await drain(pub, timeout=60)
        assert pub.resent >= pub.window  # the window in flight went out again
    with MqttProbe(broker.port, [f"{base}/status/#", f"{base}/end"]) as late:
        late.publish(f"{base}/end", b"sentinel")  # retained ones arrive before it
        late.wait_for(f"{base}/end")
        last = {m.topic: m.payload for m in late.messages(f"{base}/status/#")}
    assert len(last) == n_topics
    assert set(last.values()) == {b"round 7"}


@pytest.mark.asyncio
async def test_no_log_line_per_publish_during_a_burst(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    base = uid("quiet")
    caplog.set_level(logging.DEBUG)  # every logger, paho's and aiomqtt's included
    async with linked(mosquitto) as link:
        caplog.clear()
        pub = Publisher(link, pace=None, window=64)  # a small window: it refills often
        for i in range(5_000):
            pub.put(f"{base}/events/eq-{i % 100}/x", b"{}", 1, False)
        start(pub)
        await drain(pub)
        assert pub.published == 5_000
    assert len(caplog.records) < 10, [r.getMessage() for r in caplog.records[:10]]


@pytest.mark.asyncio
async def test_the_normal_lane_is_paced_and_the_urgent_lane_is_not(
    mosquitto: Mosquitto,
) -> None:
    """Past its burst the normal lane goes at `pace`; a severe alert put behind it goes
    at once (a broker queues what a subscriber cannot take yet, in order)."""
    base = uid("pace")
    with MqttProbe(mosquitto.port, [f"{base}/#"]) as probe:
        async with linked(mosquitto) as link:
            pub = Publisher(link, pace=2_000, burst=200)
            for i in range(1_200):
                pub.put(f"{base}/status/eq-{i}", b"offline", 1, True)
            t0 = time.monotonic()
            start(pub)
            await asyncio.sleep(0.1)
            written = 1_200 - pub.backlog + pub._flying  # taken from the queue so far
            assert written <= 200 + 2_000 * (time.monotonic() - t0) + 64  # burst, then pace
            pub.put(f"{base}/events/pump-1/flow", b"critical!", 1, False, urgent=True)
            await drain(pub)
            elapsed = time.monotonic() - t0
        got = probe.wait_for(f"{base}/#", count=1_201, timeout=30)
    assert elapsed >= 0.45  # (1,200 - 200) / 2,000 s
    topics = [m.topic for m in got]
    # written at once, right after what had been written before it
    assert topics.index(f"{base}/events/pump-1/flow") <= written


class _AwaitingLink:
    """A link with only the awaited `publish` (no batch path): the fallback loop."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def wait_connected(self) -> None:
        return None

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        await asyncio.sleep(0)
        self.sent.append((topic, payload))


@pytest.mark.asyncio
async def test_a_link_without_a_batch_path_gets_one_awaited_publish_each() -> None:
    link = _AwaitingLink()
    pub = Publisher(cast(BrokerLink, link), window=4)
    for i in range(10):
        pub.put("t/a", str(i).encode(), 1, False)
    pub.put("t/urgent", b"!", 1, False, urgent=True)
    start(pub)
    await drain(pub, timeout=5)
    assert link.sent[0] == ("t/urgent", b"!")
    assert [p for t, p in link.sent if t == "t/a"] == [str(i).encode() for i in range(10)]
    assert pub.published == 11 and pub.backlog == 0


class _RefusingLink(_AwaitingLink):
    """Refuses every topic under ``bad/`` for good (as paho does an invalid topic)."""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        if topic.startswith("bad/"):
            raise ValueError("Invalid topic")
        await super().publish(topic, payload, qos=qos, retain=retain)


@pytest.mark.asyncio
async def test_publishes_refused_for_good_are_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = _RefusingLink()
    pub = Publisher(cast(BrokerLink, link), window=8)
    for i in range(500):
        pub.put(f"bad/{i}", b"x", 1, False)
    pub.put("good/1", b"y", 1, False)
    with caplog.at_level(logging.DEBUG, logger="edge.pipeline"):
        start(pub)
        await drain(pub, timeout=5)
    assert pub.failed == 500 and link.sent == [("good/1", b"y")]
    refused = [r for r in caplog.records if "cannot publish" in r.getMessage()]
    assert len(refused) == 1  # one line for the burst, not 500
