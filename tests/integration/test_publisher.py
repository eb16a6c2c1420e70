"""The publish stage against a real mosquitto: severe first, order per topic, coalescing,
at-least-once across a broker restart (gateway/daemon/publish.py). Functional, not timed:
what arrives, in which order, and what the retained topics end on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

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
