"""The gateway end to end over MQTT: readings reach the store exactly, garbage is
counted and dead-lettered without disturbing valid data.

Every test runs its own `edge-gateway run` subprocess against the session broker, with
equipment names unique to the test. The exactness tests run once per real store
(`store` fixture): VictoriaMetrics over the v2 write API, and InfluxDB 1.x over v1
``/write``, which keeps one point per series and timestamp (tests/stores.py).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from tests.harness import GatewayProcess, Gateways, MqttProbe, uid
from tests.stores import Store, by_sensor, wait_count

SUBSCRIPTIONS = (
    GatewayProcess.DEFAULT_SUBSCRIPTION
    + """
[[mqtt.subscriptions]]
topic = "fields/+/+"
template = "fields/{line}/{equipment}"
format = "fields"

[[mqtt.subscriptions]]
topic = "batch/+"
template = "batch/{line}"
"""
)


def exported(store: Store, field: str = "value", **tags: str) -> dict[str, list[tuple[int, float]]]:
    """{sensor: sorted [(ts_ms, value)]} of every point of `field` matching `tags`."""
    return by_sensor(store.points(field, **tags))


def wait_stored(
    store: Store, gw: GatewayProcess, n: int, total: int | None = None, **tags: str
) -> None:
    """Wait until the store keeps `n` points for `tags`, then demand exactly n, and that
    the gateway counts exactly `total` (default n) readings received and written."""
    total = n if total is None else total
    wait_count(store, n, 15.0, **tags)
    gw.wait_metric("edge_readings_written_total", lambda v: v >= total)
    assert store.count(**tags) == n
    assert gw.metric("edge_readings_received_total", source="mqtt") == total
    assert gw.metric("edge_readings_written_total") == total


# ------------------------------------------------------------------ timestamps


def iso(ms: int, offset_h: int = 0) -> str:
    tz = UTC if offset_h == 0 else timezone(timedelta(hours=offset_h))
    dt = datetime.fromtimestamp(ms // 1000, tz)
    suffix = "Z" if offset_h == 0 else f"{offset_h:+03d}:00"
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}{suffix}"


def test_json_readings_stored_exactly_for_every_timestamp_form(
    spawn_store: Gateways, probe: MqttProbe, store: Store
) -> None:
    gw = spawn_store()
    eq = uid("ts-eq")
    base_s = int(time.time()) - 120  # current: VM drops points outside retention
    per_case = 3
    # sensor -> [(payload, expected ts ms, value)]
    cases: dict[str, list[tuple[Any, int, float]]] = {}
    for i in range(per_case):
        ms = (base_s + i) * 1000 + 123 + i
        v = 10.0 + i / 4
        cases.setdefault("iso_ms", []).append(({"value": v, "ts": iso(ms)}, ms, v))
        cases.setdefault("iso_offset", []).append(({"value": v + 1, "ts": iso(ms, 2)}, ms, v + 1))
        s = base_s + 10 + i
        cases.setdefault("epoch_s", []).append(({"value": v + 2, "ts": s}, s * 1000, v + 2))
        cases.setdefault("epoch_s_float", []).append(
            ({"value": v + 3, "ts": s + 0.25}, s * 1000 + 250, v + 3)
        )
        cases.setdefault("epoch_ms", []).append(({"value": v + 4, "ts": ms}, ms, v + 4))
        us = ms * 1000 + 456
        cases.setdefault("epoch_us", []).append(({"value": v + 5, "ts": us}, ms, v + 5))
        ns = ms * 1_000_000 + 999_999  # compared in ms: VM floors ns to ms
        cases.setdefault("epoch_ns", []).append(({"value": v + 6, "ts": ns}, ms, v + 6))
        cases.setdefault("iso_string_epoch", []).append(
            ({"value": v + 7, "ts": str(ms)}, ms, v + 7)
        )
    for sensor, items in cases.items():
        for payload, _, _ in items:
            payload["unit"] = "celsius"
            probe.publish(f"plant/line-1/{eq}/{sensor}", payload)
    # no ts: the receive time, within the publish window
    t0_ms = time.time_ns() // 1_000_000
    probe.publish(f"plant/line-1/{eq}/no_ts", {"value": 1.5, "unit": "bar"})
    probe.publish(f"plant/line-1/{eq}/no_ts", 2.5)  # bare number: no unit tag either
    total = len(cases) * per_case + 2
    wait_stored(store, gw, total, equipment=eq)
    t1_ms = time.time_ns() // 1_000_000

    got = exported(store, equipment=eq)
    for sensor, items in cases.items():
        assert got[sensor] == [(ms, v) for _, ms, v in items], sensor
    no_ts = got.pop("no_ts")
    assert sorted(v for _, v in no_ts) == [1.5, 2.5]
    assert all(t0_ms <= ts <= t1_ms for ts, _ in no_ts), (t0_ms, no_ts, t1_ms)

    if store.kind == "influxdb1":  # keeps ns: exactly what was sent
        ns_pts = {p.ts_ns for p in store.points(equipment=eq, sensor="epoch_ns")}
        assert ns_pts == {ms * 1_000_000 + 999_999 for _, ms, _ in cases["epoch_ns"]}
    labels = {(p.tags["sensor"], p.tags.get("unit")): p.tags for p in store.points(equipment=eq)}
    common = {"equipment": eq, "line": "line-1", "source": "mqtt"}
    assert labels[("epoch_ns", "celsius")] == {**common, "sensor": "epoch_ns", "unit": "celsius"}
    assert labels[("no_ts", "bar")] == {**common, "sensor": "no_ts", "unit": "bar"}
    assert labels[("no_ts", None)] == {**common, "sensor": "no_ts"}
    assert len(labels) == len(cases) + 2  # one series per sensor (and unit), no strays
    # before warm-up there is no z, and nothing is anomalous
    assert store.points("z", equipment=eq) == []
    anomaly = exported(store, "anomaly", equipment=eq)
    assert sum(len(v) for v in anomaly.values()) == total
    assert {v for pts in anomaly.values() for _, v in pts} == {0.0}


def test_batch_array_with_per_item_overrides(
    spawn_store: Gateways, probe: MqttProbe, store: Store
) -> None:
    gw = spawn_store()
    eq, other = uid("batch-eq"), uid("batch-other")
    base_ms = (int(time.time()) - 60) * 1000
    expected: dict[tuple[str, str, str, str], list[tuple[int, float]]] = {}
    t0_ms = time.time_ns() // 1_000_000
    n_msgs = 4
    for i in range(n_msgs):
        ms = base_ms + i * 1000
        batch = [
            {"value": 1.0 + i, "ts": ms},
            {"value": 2.0 + i, "ts": ms, "sensor": "pressure", "unit": "bar"},
            {"value": 3.0 + i, "ts": ms, "equipment": other, "line": "line-9"},
            4.0 + i,  # bare number: topic names, receive time
        ]
        probe.publish(f"plant/line-2/{eq}/temperature", batch)
        expected.setdefault((eq, "temperature", "line-2", ""), []).append((ms, 1.0 + i))
        expected.setdefault((eq, "pressure", "line-2", "bar"), []).append((ms, 2.0 + i))
        expected.setdefault((other, "temperature", "line-9", ""), []).append((ms, 3.0 + i))
    wait_stored(store, gw, 3 * n_msgs, total=4 * n_msgs, equipment=eq)
    assert wait_count(store, n_msgs, equipment=other) == n_msgs
    t1_ms = time.time_ns() // 1_000_000

    got: dict[tuple[str, str, str, str], list[tuple[int, float]]] = {}
    for e in (eq, other):
        for p in store.points(equipment=e):
            m = p.tags
            assert m["source"] == "mqtt"
            key = (m["equipment"], m["sensor"], m["line"], m.get("unit", ""))
            got.setdefault(key, []).append((p.ts_ms, p.value))
    got = {k: sorted(v) for k, v in got.items()}
    bare = sorted(got[(eq, "temperature", "line-2", "")])
    received = [p for p in bare if p not in expected[(eq, "temperature", "line-2", "")]]
    assert sorted(v for _, v in received) == [4.0 + i for i in range(n_msgs)]
    assert all(t0_ms <= ts <= t1_ms for ts, _ in received)
    got[(eq, "temperature", "line-2", "")] = [p for p in bare if p not in received]
    assert got == expected
    assert gw.metric("edge_messages_received_total", source="mqtt") == n_msgs


def test_fields_format_one_reading_per_field(
    spawn_store: Gateways, probe: MqttProbe, store: Store
) -> None:
    gw = spawn_store(SUBSCRIPTIONS)
    eq = uid("fields-eq")
    base_ms = (int(time.time()) - 60) * 1000
    expected: dict[str, list[tuple[int, float]]] = {}
    for i in range(5):
        ms = base_ms + i * 1000
        doc = {
            "ts": iso(ms),
            "temperature": 71.0 + i,
            "vibration": 3.0 + i / 8,
            "rpm": 1500 + i,
            "unit": {"temperature": "celsius", "vibration": "mm_s"},
        }
        probe.publish(f"fields/line-3/{eq}", doc)
        expected.setdefault("temperature", []).append((ms, 71.0 + i))
        expected.setdefault("vibration", []).append((ms, 3.0 + i / 8))
        expected.setdefault("rpm", []).append((ms, 1500.0 + i))
    # an array of field objects, one unit for all
    ms = base_ms + 10_000
    probe.publish(
        f"fields/line-3/{eq}",
        [{"ts": ms, "temperature": 80.5, "unit": "celsius"}, {"ts": ms + 1, "rpm": 1600}],
    )
    expected["temperature"].append((ms, 80.5))
    expected["rpm"].append((ms + 1, 1600.0))
    units = {"temperature": "celsius", "vibration": "mm_s"}  # rpm has none
    wait_stored(store, gw, 17, equipment=eq)
    assert exported(store, equipment=eq) == expected
    for p in store.points(equipment=eq):
        m = p.tags
        want = {"equipment": eq, "sensor": m["sensor"]}
        want |= {"line": "line-3", "source": "mqtt"}
        if m["sensor"] in units:
            want["unit"] = units[m["sensor"]]
        assert m == want


def test_burst_without_timestamps_keeps_every_reading_in_order(
    spawn_store: Gateways, probe: MqttProbe, store: Store
) -> None:
    """Bare values with no ts, sent back to back, share a receive time per socket read;
    each must still be its own point (InfluxDB overwrote all but 7 of 200 once)."""
    gw = spawn_store(SUBSCRIPTIONS)
    line = uid("burst-line")
    burst, arr, fields = uid("burst"), uid("burst-arr"), uid("burst-fields")
    infos = [
        probe.client.publish(f"plant/{line}/{burst}/temperature", str(21 + i), qos=1)
        for i in range(200)
    ]
    infos.append(
        probe.client.publish(
            f"plant/{line}/{arr}/temperature",
            json.dumps([{"value": i} for i in range(50)]),
            qos=1,
        )
    )
    for i in range(30):
        doc = {"temperature": 70 + i, "vibration": i / 10, "rpm": 1500 + i}
        infos.append(probe.client.publish(f"fields/{line}/{fields}", json.dumps(doc), qos=1))
    for info in infos:
        info.wait_for_publish(5)
    wait_stored(store, gw, 340, line=line)
    assert store.count(equipment=burst) == 200
    assert store.count(equipment=arr) == 50
    assert store.count(equipment=fields) == 90
    # in arrival order: sorted by time, the values come out as they were sent
    assert [v for _, v in exported(store, equipment=burst)["temperature"]] == [
        float(21 + i) for i in range(200)
    ]
    assert [v for _, v in exported(store, equipment=arr)["temperature"]] == [
        float(i) for i in range(50)
    ]
    got = exported(store, equipment=fields)
    assert [v for _, v in got["rpm"]] == [float(1500 + i) for i in range(30)]
    assert [v for _, v in got["vibration"]] == [i / 10 for i in range(30)]


# --------------------------------------------------------------------- garbage


def test_garbage_is_counted_dead_lettered_and_valid_data_survives(
    spawn_store: Gateways, probe: MqttProbe, store: Store
) -> None:
    eq, eq_batch, eq_flood = uid("junk-eq"), uid("junk-batch"), uid("junk-flood")
    gw = spawn_store(
        SUBSCRIPTIONS
        + f"""
[mqtt]
deadletter_per_s = 1000

[validation]
max_payload_bytes = 4096
max_series = 50

[[rules]]
equipment = "{eq}"
sensor = "pressure"
min = 0.0
max = 100.0
"""
    )
    probe.subscribe(gw.deadletter_topic)
    line = uid("junk-line")
    topic = f"plant/{line}/{eq}/temperature"
    now_s = int(time.time())
    dup_ms = (now_s - 30) * 1000
    garbage: list[tuple[str, bytes, str]] = [
        (topic, b"not json", "malformed"),
        (topic, b"NaN", "malformed"),
        (topic, b'{"value": NaN}', "malformed"),
        (topic, b'{"value": 1.0, "ts": "yesterday"}', "malformed"),
        (topic, b'"23.5"', "invalid_value"),
        (topic, b'{"value": "23.5"}', "invalid_value"),
        (topic, b"true", "invalid_value"),
        (topic, b'{"value": false}', "invalid_value"),
        (topic, b'{"value": null}', "invalid_value"),
        (topic, json.dumps({"value": 1.0, "pad": "x" * 5000}).encode(), "too_large"),
        (topic, json.dumps({"ts": now_s}).encode(), "missing_field"),
        (topic, json.dumps({"value": 1.0, "ts": now_s + 3600}).encode(), "future_timestamp"),
        (topic, json.dumps({"value": 1.0, "ts": now_s - 30 * 86400}).encode(), "stale_timestamp"),
        (topic, b'{"value": 1.0, "quality": "bad"}', "bad_quality"),
        (f"plant/{line}/{eq}/pressure", b'{"value": 150.0}', "out_of_range"),
    ]
    valid_values: list[float] = []

    def valid() -> None:
        v = 100.0 + len(valid_values)
        valid_values.append(v)
        probe.publish(topic, {"value": v})

    valid()
    for t, payload, _ in garbage:
        probe.publish(t, payload)
        valid()
    # one good and one bad item in one batch (the topic names no equipment)
    probe.publish(
        f"batch/{line}",
        [
            {"equipment": eq_batch, "sensor": "temperature", "value": 1.0},
            {"sensor": "temperature", "value": 2.0},
        ],
    )
    valid()
    probe.publish(f"plant/{line}/{eq}/pressure", {"value": 50.0})  # in range: stored
    # the same reading twice (explicit ts): the second is a duplicate
    probe.publish(topic, {"value": 7.0, "ts": dup_ms})
    probe.publish(topic, {"value": 7.0, "ts": dup_ms})
    valid()
    # series so far: eq/temperature, eq/pressure, eq_batch/temperature -> 47 more fit
    flood = 60
    for i in range(flood):
        probe.publish(f"plant/{line}/{eq_flood}/s{i:02d}", float(i))
    valid()  # known series keep flowing past the cap
    valid()

    expected = Counter(reason for _, _, reason in garbage)
    expected["missing_field"] += 1  # the batch item
    expected["duplicate"] += 1
    admitted = 50 - 3
    expected["series_limit"] += flood - admitted
    n_valid = len(valid_values) + 1 + 1 + 1 + admitted  # + batch, pressure, dup original

    wait_stored(store, gw, n_valid, line=line)  # every equipment of this test
    assert store.count(equipment=eq_flood) == admitted
    got = exported(store, equipment=eq)
    assert sorted(v for _, v in got["temperature"]) == sorted([*valid_values, 7.0])
    assert got["pressure"][0][1] == 50.0 and len(got["pressure"]) == 1
    assert (dup_ms, 7.0) in got["temperature"]
    assert store.count(equipment=eq_batch) == 1

    # a last malformed message marks the end: dead letters go out in order, so once
    # its own arrived nothing more of the above may follow
    marker = uid("marker")
    probe.publish(f"plant/{line}/{marker}/x", b"marker")
    expected["malformed"] += 1
    n_rejects = sum(expected.values())
    probe.wait_for(
        lambda m: m.topic == gw.deadletter_topic and marker.encode() in m.payload, timeout=15
    )
    dead = probe.messages(gw.deadletter_topic)
    assert json.loads(dead[-1].payload)["topic"] == f"plant/{line}/{marker}/x"
    docs = [m.json() for m in dead]
    assert Counter(d["reason"] for d in docs) == expected
    for reason in (
        "malformed",
        "missing_field",
        "invalid_value",
        "out_of_range",
        "future_timestamp",
        "stale_timestamp",
        "too_large",
        "series_limit",
        "bad_quality",
        "duplicate",
    ):
        assert gw.metric("edge_readings_rejected_total", reason=reason) == expected[reason], reason
    assert gw.metric("edge_readings_rejected_total") == n_rejects
    assert gw.metric("edge_deadletter_published_total") == n_rejects
    assert gw.metric("edge_deadletter_suppressed_total") == 0
    by_payload = {d["payload"]: d for d in docs}
    assert by_payload["not json"]["reason"] == "malformed"
    assert by_payload["not json"]["topic"] == topic
    big = next(d for d in docs if d["reason"] == "too_large")
    assert len(big["payload"]) == 1024 and big["payload"].startswith('{"value": 1.0')
    assert all(not m.retain for m in dead)
    # the detectors saw exactly the admitted series
    gw.wait_metric("edge_series_active", lambda v: v == 50, timeout=5)
    assert gw.running
    status, body = gw.readyz()
    assert status == 200 and body["ready"] is True


def test_deadletters_are_rate_limited(spawn: Gateways, probe: MqttProbe) -> None:
    gw = spawn("[mqtt]\ndeadletter_per_s = 2\n")
    probe.subscribe(gw.deadletter_topic)
    topic = f"plant/line-1/{uid('rl-eq')}/temperature"
    t0 = time.monotonic()
    for i in range(30):
        probe.publish(topic, f"junk {i}")
    gw.wait_metric("edge_readings_rejected_total", lambda v: v == 30, reason="malformed")
    elapsed = time.monotonic() - t0
    published = gw.metric("edge_deadletter_published_total")
    assert published + gw.metric("edge_deadletter_suppressed_total") == 30
    # a burst of 2, refilled at 2/s for as long as it took (measured, not assumed)
    assert 2 <= published <= 2 + 2 * elapsed + 1
    dead = [m.json() for m in probe.wait_for(gw.deadletter_topic, count=int(published))]
    assert len(dead) == published
    assert [d["payload"] for d in dead[:2]] == ["junk 0", "junk 1"]  # the initial burst
