"""Normalization and validation: gateway.core.normalize, .timestamps and .series."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from gateway.config import Subscription, ValidationConfig
from gateway.core import model
from gateway.core.model import RawMessage, Reading, Reject
from gateway.core.normalize import Normalizer
from gateway.core.series import RecentKeys, SeriesRegistry
from gateway.core.timestamps import TimestampRangeError, parse_ts

NOW = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
NOW_S = NOW // 10**9
TOPIC = "plant/line-1/press-1/temperature"

# -- helpers -----------------------------------------------------------------


def make(subs: list[Subscription] | None = None, bounds: Any = None, **cfg: Any) -> Normalizer:
    return Normalizer(subs or [Subscription()], ValidationConfig(**cfg), bounds=bounds)


def raw(payload: Any, topic: str = TOPIC, sub: int = 0, received_ns: int = NOW) -> RawMessage:
    if not isinstance(payload, bytes):
        payload = orjson.dumps(payload)
    return RawMessage(topic, payload, 12.5, received_ns, "mqtt", sub)


def run(n: Normalizer, payload: Any, **kw: Any) -> tuple[list[Reading], list[Reject]]:
    readings, rejects = n.normalize(raw(payload, **kw))
    assert n.internal_errors == 0
    for r in readings:
        assert type(r.value) is float
        assert type(r.ts) is int
    for j in rejects:
        assert j.reason in model.REJECT_REASONS
        assert isinstance(j.detail, str) and j.detail
        assert len(j.payload) <= 1024 and len(j.topic) <= 1024
    return readings, rejects


def reasons(rejects: list[Reject]) -> list[str]:
    return [j.reason for j in rejects]


def one_reject(n: Normalizer, payload: Any, **kw: Any) -> Reject:
    readings, rejects = run(n, payload, **kw)
    assert readings == []
    assert len(rejects) == 1, rejects
    return rejects[0]


# -- timestamps ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (NOW_S, NOW),  # s
        (NOW_S * 1000 + 123, NOW + 123_000_000),  # ms
        (NOW_S * 1_000_000 + 123_456, NOW + 123_456_000),  # µs
        (NOW + 123_456_789, NOW + 123_456_789),  # ns
        (0, 0),
        (-86_400, -86_400 * 10**9),
        (99_999_999_999, 99_999_999_999 * 10**9),  # last value read as seconds
        (100_000_000_000, 100_000_000_000 * 10**6),  # first value read as ms
        (99_999_999_999_999, 99_999_999_999_999 * 10**6),
        (100_000_000_000_000, 100_000_000_000_000 * 10**3),  # first µs
        (99_999_999_999_999_999, 99_999_999_999_999_999 * 10**3),
        (100_000_000_000_000_000, 100_000_000_000_000_000),  # first ns
        (float(NOW_S), NOW),
        (NOW_S + 0.25, NOW + 250_000_000),
        (1700000000.123456, NOW + 123_456_000),  # decimal digits, not binary noise
        (1700000000123.5, NOW + 123_500_000),  # float ms
        (-1.5, -1_500_000_000),
        (str(NOW_S), NOW),
        (" 1700000000.123456789 ", NOW + 123_456_789),
        ("1.7e9", NOW),
        (str(NOW), NOW),
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14t22:13:20z", NOW),
        ("2023-11-14T22:13:20", NOW),  # naive is UTC
        ("2023-11-14 22:13:20", NOW),
        ("2023-11-14T23:13:20+01:00", NOW),
        ("2023-11-14T17:13:20-05:00", NOW),
        ("2023-11-14T22:13:20.5Z", NOW + 500_000_000),
        ("2023-11-14T22:13:20,25Z", NOW + 250_000_000),
        ("2023-11-14T22:13:20.123456789Z", NOW + 123_456_789),
        ("2023-11-14T23:13:20.000000001+01:00", NOW + 1),
        ("2023-11-14T22:13:20.1234567891234Z", NOW + 123_456_789),  # past ns dropped
        ("20231114T221320.123456789Z", NOW + 123_456_789),  # basic format
        ("2023-11-14", NOW - (22 * 3600 + 13 * 60 + 20) * 10**9),
    ],
)
def test_parse_ts(value: Any, expected: int) -> None:
    assert parse_ts(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "   ", "yesterday", "12:00", "2023-13-01T00:00:00Z", "0x10", "1_000", "\uff11\uff12",
     "nan", "inf", float("nan"), float("inf"), True, False, [], {}, b"1700000000", "9" * 100],
)  # fmt: skip
def test_parse_ts_rejects_garbage(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_ts(value)


@pytest.mark.parametrize(
    ("value", "future"),
    [
        ("9999-12-31T23:59:59Z", True),
        ("1000-01-01T00:00:00Z", False),
        (10**19, True),
        (-(10**19), False),
        (1e300, True),
        ("1e30", True),
        ("-1e30", False),
    ],
)
def test_parse_ts_out_of_int64_range(value: Any, future: bool) -> None:
    with pytest.raises(TimestampRangeError) as e:
        parse_ts(value)
    assert e.value.future is future


def test_parse_ts_missing_means_now() -> None:
    assert parse_ts(None, NOW) == NOW
    with pytest.raises(ValueError):
        parse_ts(None)


# -- series bookkeeping ----------------------------------------------------------


def test_series_registry_caps_new_series_only() -> None:
    reg = SeriesRegistry(2)
    assert reg.admit("a", "x") and reg.admit("a", "y")
    assert not reg.admit("b", "x")
    assert reg.admit("a", "x") and reg.admit("a", "y")
    assert reg.count == 2 and len(reg) == 2
    assert ("a", "x") in reg and ("b", "x") not in reg


def test_recent_keys_evicts_oldest() -> None:
    rk = RecentKeys(3)
    assert [rk.seen_before(k) for k in (1, 2, 3)] == [False, False, False]
    assert rk.seen_before(1) and rk.seen_before(3)
    assert not rk.seen_before(4)  # evicts 1
    assert not rk.seen_before(1)  # evicts 2
    assert rk.seen_before(3) and rk.seen_before(4)
    assert len(rk) == 3
    off = RecentKeys(0)
    assert not off.seen_before("k") and not off.seen_before("k")


def test_recent_keys_long_run_stays_bounded() -> None:
    rk = RecentKeys(100)
    for i in range(10_000):
        assert not rk.seen_before(("e", "s", i))
    assert len(rk) == 100
    assert rk.seen_before(("e", "s", 9_999)) and not rk.seen_before(("e", "s", 9_899))


# -- json format -------------------------------------------------------------------


def test_bare_number_uses_topic_and_receive_time() -> None:
    n = Normalizer([Subscription(unit="celsius")], ValidationConfig(), source="opcua")
    (r,), rej = n.normalize(raw(b"23.5"))
    assert rej == []
    assert (r.equipment, r.sensor, r.value, r.ts) == ("press-1", "temperature", 23.5, NOW)
    assert r.tags == {"line": "line-1"} and r.line == "line-1"
    assert (r.unit, r.source, r.received) == ("celsius", "opcua", 12.5)


def test_integer_value_becomes_float() -> None:
    (r,), _ = run(make(), 42)
    assert r.value == 42.0 and type(r.value) is float


def test_object_with_ts_unit_quality() -> None:
    (r,), rej = run(
        make(), {"value": 71.2, "ts": NOW_S * 1000 + 5, "unit": "celsius", "quality": "good"}
    )
    assert rej == []
    assert (r.value, r.ts, r.unit) == (71.2, NOW + 5_000_000, "celsius")


def test_unit_precedence_payload_then_subscription_then_empty() -> None:
    sub = make([Subscription(unit="bar")])
    assert run(sub, {"value": 1, "unit": "psi"})[0][0].unit == "psi"
    assert run(sub, {"value": 1})[0][0].unit == "bar"
    assert run(make(), {"value": 1})[0][0].unit == ""


def test_iso_timestamp_keeps_nanoseconds() -> None:
    (r,), _ = run(make(), {"value": 1, "ts": "2023-11-14T23:13:20.123456789+01:00"})
    assert r.ts == NOW + 123_456_789


@pytest.mark.parametrize("quality", ["good", "Good", "GOOD", None])
def test_good_quality_passes(quality: Any) -> None:
    assert len(run(make(), {"value": 1, "quality": quality})[0]) == 1


@pytest.mark.parametrize("quality", ["bad", "uncertain", 0, 192, False, {"q": 1}])
def test_bad_quality(quality: Any) -> None:
    assert one_reject(make(), {"value": None, "quality": quality}).reason == model.BAD_QUALITY


def test_batch_with_overrides() -> None:
    payload = [
        {"value": 1, "ts": NOW_S},
        2.5,
        {"value": 3, "ts": NOW_S, "equipment": "press-2"},
        {"value": 4, "ts": NOW_S, "sensor": "pressure", "line": "line-9"},
        {"value": 5, "ts": NOW_S + 1, "line": ""},
    ]
    readings, rej = run(make(), payload)
    assert rej == []
    got = [(r.equipment, r.sensor, r.value, r.line) for r in readings]
    assert got == [
        ("press-1", "temperature", 1.0, "line-1"),
        ("press-1", "temperature", 2.5, "line-1"),
        ("press-2", "temperature", 3.0, "line-1"),
        ("press-1", "pressure", 4.0, "line-9"),
        ("press-1", "temperature", 5.0, ""),
    ]
    assert readings[1].ts == NOW  # bare numbers take receive time
    assert readings[4].tags == {}
    assert readings[0].tags == {"line": "line-1"}  # the override did not leak


def test_batch_mixed_good_and_bad_items() -> None:
    payload = [
        {"value": 1, "ts": NOW_S},
        {"value": "2"},
        {"ts": NOW_S},
        True,
        {"value": 3, "ts": NOW_S + 1, "quality": "bad"},
        {"value": 4, "ts": "not a time"},
        [1, 2],
        {"value": 5, "ts": NOW_S + 2},
    ]
    readings, rej = run(make(), payload)
    assert [r.value for r in readings] == [1.0, 5.0]
    assert reasons(rej) == [
        model.INVALID_VALUE,
        model.MISSING_FIELD,
        model.INVALID_VALUE,
        model.BAD_QUALITY,
        model.MALFORMED,
        model.MALFORMED,
    ]
    assert [j.detail.split(":")[0] for j in rej] == [
        "item 1",
        "item 2",
        "item 3",
        "item 4",
        "item 5",
        "item 6",
    ]


def test_empty_batch_is_nothing() -> None:
    assert run(make(), []) == ([], [])


def test_batch_too_long() -> None:
    n = make(max_batch_items=3)
    assert len(run(n, [1, 2, 3])[0]) == 3
    assert one_reject(n, [1, 2, 3, 4]).reason == model.TOO_LARGE


@pytest.mark.parametrize(
    "value", ["23.5", "NaN", True, False, None, {}, {"v": 1}, [1], ""]
)  # fmt: skip
def test_invalid_values(value: Any) -> None:
    rj = one_reject(make(), {"value": value})
    assert rj.reason == model.INVALID_VALUE
    assert "value" in rj.detail


@pytest.mark.parametrize("payload", [b'"23.5"', b"true", b"null"])
def test_top_level_non_numbers_are_invalid_value(payload: bytes) -> None:
    assert one_reject(make(), payload).reason == model.INVALID_VALUE


@pytest.mark.parametrize("payload", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"{", b"abc"])
def test_not_json_is_malformed(payload: bytes) -> None:
    rj = one_reject(make(), payload)
    assert rj.reason == model.MALFORMED
    assert rj.payload == payload and rj.topic == TOPIC


def test_missing_fields() -> None:
    assert one_reject(make(), {"ts": NOW_S}).reason == model.MISSING_FIELD
    n = make([Subscription(topic="dev/+", template="dev/{equipment}")])
    rj = one_reject(n, 5, topic="dev/press-1")
    assert rj.reason == model.MISSING_FIELD and "sensor" in rj.detail
    (r,), _ = run(n, {"value": 5, "sensor": "temp"}, topic="dev/press-1")
    assert (r.equipment, r.sensor, r.tags) == ("press-1", "temp", {})
    n = make([Subscription(topic="gw/batch", template="gw/batch")])
    rj = one_reject(n, {"value": 1, "sensor": "x"}, topic="gw/batch")
    assert rj.reason == model.MISSING_FIELD and "equipment" in rj.detail
    (r,), _ = run(n, [{"value": 1, "sensor": "x", "equipment": "e"}], topic="gw/batch")
    assert (r.equipment, r.sensor, r.line) == ("e", "x", "")


def test_empty_topic_level_is_missing() -> None:
    rj = one_reject(make(), 1, topic="plant/line-1//temperature")
    assert rj.reason == model.MISSING_FIELD


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", model.MISSING_FIELD),
        ("   ", model.MISSING_FIELD),
        ("a/b", model.INVALID_VALUE),
        ("a+b", model.INVALID_VALUE),
        ("a#", model.INVALID_VALUE),
        ("bad\nname", model.INVALID_VALUE),
        ("bad\x00name", model.INVALID_VALUE),
        ("x" * 257, model.INVALID_VALUE),
        (5, model.INVALID_VALUE),
        (["a"], model.INVALID_VALUE),
    ],
)
def test_bad_names(name: Any, reason: str) -> None:
    for key in ("equipment", "sensor"):
        assert one_reject(make(), {"value": 1, key: name}).reason == reason


def test_bad_line_and_unit_overrides() -> None:
    assert one_reject(make(), {"value": 1, "line": "l/1"}).reason == model.INVALID_VALUE
    assert one_reject(make(), {"value": 1, "line": 3}).reason == model.INVALID_VALUE
    assert one_reject(make(), {"value": 1, "unit": 3}).reason == model.INVALID_VALUE
    assert one_reject(make(), {"value": 1, "unit": "a\nb"}).reason == model.INVALID_VALUE
    assert run(make(), {"value": 1, "unit": "m/s"})[0][0].unit == "m/s"


def test_control_characters_in_topic_level() -> None:
    rj = one_reject(make(), 1, topic="plant/line\t1/press-1/temperature")
    assert rj.reason == model.INVALID_VALUE and "line" in rj.detail


# -- fields format -------------------------------------------------------------------

FIELDS = Subscription(topic="plant/+/+", template="plant/{line}/{equipment}", format="fields")


def test_fields_one_reading_per_numeric_field() -> None:
    payload = {
        "ts": NOW_S,
        "temperature": 71.2,
        "vibration": 3,
        "unit": "si",
        "quality": "good",
    }
    readings, rej = run(make([FIELDS]), payload, topic="plant/line-1/press-1")
    assert rej == []
    assert [(r.equipment, r.sensor, r.value, r.ts, r.unit) for r in readings] == [
        ("press-1", "temperature", 71.2, NOW, "si"),
        ("press-1", "vibration", 3.0, NOW, "si"),
    ]
    assert all(r.tags == {"line": "line-1"} for r in readings)


def test_fields_unit_map_and_overrides_and_batch() -> None:
    payload = [
        {"ts": NOW_S, "temperature": 1, "rpm": 2, "unit": {"temperature": "celsius"}},
        {"equipment": "press-2", "line": "line-2", "temperature": 3},
    ]
    sub = FIELDS.model_copy(update={"unit": "x"})
    readings, rej = run(make([sub]), payload, topic="plant/line-1/press-1")
    assert rej == []
    assert [(r.equipment, r.sensor, r.unit, r.line) for r in readings] == [
        ("press-1", "temperature", "celsius", "line-1"),
        ("press-1", "rpm", "x", "line-1"),
        ("press-2", "temperature", "x", "line-2"),
    ]


def test_fields_topic_sensor_level_is_ignored() -> None:
    sub = Subscription(format="fields")  # template has {sensor}
    (r,), _ = run(make([sub]), {"pressure": 2.0})
    assert (r.equipment, r.sensor) == ("press-1", "pressure")


def test_fields_bad_field_rejects_only_that_field() -> None:
    payload = {"ts": NOW_S, "temperature": 1, "status": "running", "bad/name": 2, "x": None}
    readings, rej = run(make([FIELDS]), payload, topic="plant/line-1/press-1")
    assert [r.sensor for r in readings] == ["temperature"]
    assert reasons(rej) == [model.INVALID_VALUE] * 3
    assert "'status'" in rej[0].detail


def test_fields_object_level_problem_rejects_every_field() -> None:
    n = make([FIELDS])
    _, rej = run(n, {"ts": "garbage", "a": 1, "b": 2}, topic="plant/line-1/press-1")
    assert reasons(rej) == [model.MALFORMED] * 2
    _, rej = run(n, {"quality": "bad", "a": 1, "b": 2}, topic="plant/line-1/press-1")
    assert reasons(rej) == [model.BAD_QUALITY] * 2
    _, rej = run(n, {"equipment": "", "a": 1}, topic="plant/line-1/press-1")
    assert reasons(rej) == [model.MISSING_FIELD]


def test_fields_shapes_rejected() -> None:
    n = make([FIELDS], max_batch_items=2)
    t = "plant/line-1/press-1"
    assert one_reject(n, {"ts": NOW_S, "unit": "x"}, topic=t).reason == model.MISSING_FIELD
    assert one_reject(n, 5, topic=t).reason == model.MALFORMED
    assert one_reject(n, {"a": 1, "b": 2, "c": 3}, topic=t).reason == model.TOO_LARGE
    assert one_reject(n, [{}, {}, {}], topic=t).reason == model.TOO_LARGE
    readings, rej = run(n, [{"a": 1}, 7], topic=t)
    assert len(readings) == 1 and reasons(rej) == [model.MALFORMED]


# -- subscriptions & topics ----------------------------------------------------------


def test_event_subscription_not_handled_here() -> None:
    n = make([Subscription(topic="events/+", template="events/{equipment}", format="event")])
    rj = one_reject(n, {"event_id": "1"}, topic="events/m1")
    assert rj.reason == model.MALFORMED and "event" in rj.detail


def test_topic_falls_back_to_other_subscriptions() -> None:
    subs = [
        Subscription(topic="a/+/+", template="a/{equipment}/{sensor}"),
        Subscription(topic="b/+/+/+", template="b/{site}/{equipment}/{sensor}", unit="u"),
    ]
    n = make(subs)
    (r,), _ = run(n, 1, topic="b/s1/e1/t", sub=0)  # adapter pointed at the wrong one
    assert (r.equipment, r.tags, r.unit) == ("e1", {"site": "s1"}, "u")
    (r,), _ = run(n, 1, topic="a/e2/t", sub=99)  # out of range index
    assert r.equipment == "e2"
    assert one_reject(n, 1, topic="c/x").reason == model.MALFORMED


# -- validation limits ---------------------------------------------------------------


def test_too_large_checked_before_parsing() -> None:
    n = make(max_payload_bytes=64)
    rj = one_reject(n, b"\xff" * 65)
    assert rj.reason == model.TOO_LARGE
    assert len(run(n, b" " * 60 + b"1.5")[0]) == 1


def test_reject_payload_and_topic_truncated() -> None:
    topic = "plant/line-1/press-1/" + "t" * 3000
    rj = one_reject(make(), b"x" * 5000, topic=topic)
    assert len(rj.payload) == 1024 and rj.payload == b"x" * 1024
    assert len(rj.topic) == 1024 and topic.startswith(rj.topic)


def test_out_of_range_with_bounds() -> None:
    calls: list[tuple[str, str, str]] = []

    def bounds(e: str, s: str, line: str) -> tuple[float | None, float | None]:
        calls.append((e, s, line))
        return (0.0, 100.0) if s == "temperature" else (None, None)

    n = make(bounds=bounds)
    assert one_reject(n, 100.5).reason == model.OUT_OF_RANGE
    assert one_reject(n, -0.1).reason == model.OUT_OF_RANGE
    assert len(run(n, 100)[0]) == 1 and len(run(n, 0)[0]) == 1
    assert len(run(n, {"value": 1e9, "sensor": "other"})[0]) == 1
    assert calls == [("press-1", "temperature", "line-1"), ("press-1", "other", "line-1")]
    n.invalidate_bounds()
    run(n, 5)
    assert len(calls) == 3


def test_bounds_with_one_side() -> None:
    n = make(bounds=lambda e, s, line: (None, 10.0))
    assert one_reject(n, 11).reason == model.OUT_OF_RANGE
    assert len(run(n, -1e300)[0]) == 1


def test_broken_bounds_callable_does_not_reject() -> None:
    def bounds(e: str, s: str, line: str) -> tuple[float | None, float | None]:
        raise RuntimeError("boom")

    n = make(bounds=bounds)
    readings, rejects = n.normalize(raw(5))
    assert len(readings) == 1 and rejects == []
    assert n.internal_errors == 1


def test_future_and_stale_timestamps() -> None:
    n = make(max_future_s=900, max_age_s=3600)
    assert len(run(n, {"value": 1, "ts": NOW_S + 900})[0]) == 1
    assert one_reject(n, {"value": 1, "ts": NOW_S + 901}).reason == model.FUTURE_TIMESTAMP
    assert len(run(n, {"value": 1, "ts": NOW_S - 3600})[0]) == 1
    assert one_reject(n, {"value": 1, "ts": NOW_S - 3601}).reason == model.STALE_TIMESTAMP
    rj = one_reject(n, {"value": 1, "ts": "9999-12-31T00:00:00Z"})
    assert rj.reason == model.FUTURE_TIMESTAMP
    assert one_reject(n, {"value": 1, "ts": 0}).reason == model.STALE_TIMESTAMP
    assert (
        one_reject(n, b'{"value": 1, "ts": -1000000000000000000000000000000}').reason
        == model.STALE_TIMESTAMP
    )


@pytest.mark.parametrize("ts", ["soon", True, [1], {"t": 1}, "", "nan"])
def test_unparseable_ts_is_malformed(ts: Any) -> None:
    assert one_reject(make(), {"value": 1, "ts": ts}).reason == model.MALFORMED


def test_null_ts_means_receive_time() -> None:
    (r,), _ = run(make(), {"value": 1, "ts": None})
    assert r.ts == NOW


def test_series_limit() -> None:
    n = make(max_series=2)
    assert len(run(n, 1, topic="plant/l/e1/s")[0]) == 1
    assert len(run(n, 1, topic="plant/l/e2/s")[0]) == 1
    rj = one_reject(n, 1, topic="plant/l/e3/s")
    assert rj.reason == model.SERIES_LIMIT
    assert len(run(n, 2, topic="plant/l/e1/s")[0]) == 1  # known series still pass
    assert n.series.count == 2


def test_rejected_readings_do_not_take_series_slots() -> None:
    n = make(max_series=1)
    assert one_reject(n, {"value": "x"}, topic="plant/l/e1/s").reason == model.INVALID_VALUE
    assert len(run(n, 1, topic="plant/l/e2/s")[0]) == 1
    assert n.series.count == 1


def test_duplicates() -> None:
    n = make()
    p = {"value": 1, "ts": NOW_S}
    assert len(run(n, p)[0]) == 1
    rj = one_reject(n, p)  # QoS 1 redelivery
    assert rj.reason == model.DUPLICATE
    assert len(run(n, {"value": 2, "ts": NOW_S})[0]) == 0  # same series + ts, other value
    assert len(run(n, {"value": 1, "ts": NOW_S, "sensor": "other"})[0]) == 1
    assert len(run(n, {"value": 1, "ts": NOW_S + 1})[0]) == 1
    # receive-time readings are never duplicates
    assert len(run(n, 1)[0]) == 1 and len(run(n, 1)[0]) == 1
    readings, rej = run(n, [{"value": 1, "ts": NOW_S + 5}, {"value": 1, "ts": NOW_S + 5}])
    assert len(readings) == 1 and reasons(rej) == [model.DUPLICATE]


def test_dedup_window_bounds_memory_and_zero_disables() -> None:
    n = make(dedup_window=2)
    for k in range(3):
        run(n, {"value": 1, "ts": NOW_S + k})
    assert len(run(n, {"value": 1, "ts": NOW_S})[0]) == 1  # forgotten
    n = make(dedup_window=0)
    assert len(run(n, {"value": 1, "ts": NOW_S})[0]) == 1
    assert len(run(n, {"value": 1, "ts": NOW_S})[0]) == 1


def test_rejected_reading_does_not_poison_dedup() -> None:
    n = make(bounds=lambda e, s, line: (0.0, 10.0))
    assert one_reject(n, {"value": 11, "ts": NOW_S}).reason == model.OUT_OF_RANGE
    assert len(run(n, {"value": 5, "ts": NOW_S})[0]) == 1


# -- hostile input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[" * 100_000,
        b"[" * 1000 + b"]" * 1000,
        b'{"value":' * 2000,
        b"1e400",
        b"-1e400",
        b"123456789012345678901234567890",
        b"18446744073709551615",
        b"\x00\xff\xfe\x80garbage",
        b'"\\ud800"',
        b'{"value": 1, "equipment": "\\ud800"}',
        b"\xef\xbb\xbf1.5",
        b'{"value": 1, "ts": "' + b"9" * 5000 + b'"}',
        b'{"value": 1, "ts": 1e308}',
        b'{"value": 1, "ts": "1e999999999"}',
        b'{"value": 1, "ts": "2023-11-14T22:13:20.' + b"9" * 50 + b'Z"}',
        b'{"value": 1e308, "ts": -1e308}',
        b'{"a": {"b": {"c": []}}}',
        orjson.dumps({f"k{i}": i for i in range(5000)}),
        orjson.dumps([{"value": i, "equipment": "e" * 300} for i in range(100)]),
    ],
)
def test_hostile_payloads_never_raise(payload: bytes) -> None:
    for sub, topic in ((Subscription(), TOPIC), (FIELDS, "plant/line-1/press-1")):
        readings, _ = run(make([sub]), payload, topic=topic)
        assert all(r.value == r.value for r in readings)


def test_hostile_topics_never_raise() -> None:
    n = make()
    long_level = "plant/l/" + "e" * 70_000 + "/s"
    for topic in ["", "/", "plant", "plant/+/#/x", "plant/l/e/s/extra", "x" * 100_000,
                  long_level, "plant/l/\udcff/s", "plant/l/e\x00/s"]:  # fmt: skip
        readings, rejects = run(n, 1, topic=topic)
        assert readings == [] and len(rejects) == 1


def test_big_ints_as_values() -> None:
    (r,), _ = run(make(), 18446744073709551615)
    assert r.value == float(18446744073709551615)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(20240501)
    n = make([Subscription(), FIELDS])
    seeds = [
        b'{"value": 1.5, "ts": 1700000000}',
        b'[{"value": 1, "ts": "2023-11-14T22:13:20Z"}, 2, {"sensor": "x", "value": 3}]',
        b'{"ts": 1700000000123, "temperature": 71.2, "vibration": 3.1, "unit": "si"}',
    ]
    alphabet = b'{}[]",:0123456789.eE+-tfnaluNIT Z/#\\\x00\xff'
    outcomes = {"reading": 0, "reject": 0}
    for k in range(3000):
        if k % 2:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        else:
            b = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                pos = rng.randrange(len(b) + 1)
                op = rng.randrange(3)
                if op == 0:
                    b[pos:pos] = bytes([rng.choice(alphabet)])
                elif op == 1 and pos < len(b):
                    del b[pos]
                elif pos < len(b):
                    b[pos] = rng.choice(alphabet)
            payload = bytes(b)
        topic = rng.choice([TOPIC, "plant/line-1/press-1", "plant/x", "plant/a/b/c"])
        msg = RawMessage(topic, payload, 0.0, NOW + rng.randrange(-(10**12), 10**12), "mqtt", 0)
        readings, rejects = n.normalize(msg)
        assert all(type(r) is Reading for r in readings)
        assert all(type(j) is Reject and j.reason in model.REJECT_REASONS for j in rejects)
        outcomes["reading"] += len(readings)
        outcomes["reject"] += len(rejects)
    assert n.internal_errors == 0
    assert outcomes["reading"] > 100 and outcomes["reject"] > 1000  # both paths exercised


# -- receive-time stamps: unique per series (InfluxDB keeps one point per ts) ----------


def test_readings_without_ts_get_strictly_increasing_stamps_per_series() -> None:
    from gateway.core.series import STAMP_STEP_NS

    n = make()
    got: list[int] = []
    for v in range(200):  # 200 bare numbers read in one socket read: one receive time
        readings, _ = run(n, 21 + v)
        got.extend(r.ts for r in readings)
    assert got == [NOW + i * STAMP_STEP_NS for i in range(200)]
    batch, _ = run(n, [{"value": i} for i in range(50)], topic="plant/l/press-1/pressure")
    assert [r.ts for r in batch] == [NOW + i * STAMP_STEP_NS for i in range(50)]
    assert [r.value for r in batch] == [float(i) for i in range(50)]  # order kept


def test_fields_without_ts_are_unique_per_series_not_across_series() -> None:
    n = make([Subscription(topic="f/+/+", template="f/{line}/{equipment}", format="fields")])
    stamps: dict[str, list[int]] = {}
    for i in range(30):
        readings, _ = run(n, {"t": i, "p": i, "v": i}, topic="f/l/press-1")
        for r in readings:
            stamps.setdefault(r.sensor, []).append(r.ts)
    for sensor in ("t", "p", "v"):
        assert len(set(stamps[sensor])) == 30, sensor
        assert stamps[sensor] == sorted(stamps[sensor])
        assert stamps[sensor][0] == NOW  # each series starts at the receive time itself


def test_payload_timestamps_are_kept_exactly_and_not_bumped() -> None:
    n = make()
    a, _ = run(n, {"value": 1, "ts": NOW_S})
    b, _ = run(n, {"value": 2, "ts": NOW_S + 1})
    assert [a[0].ts, b[0].ts] == [NOW, NOW + 10**9]


def test_a_later_receive_time_is_taken_as_is() -> None:
    n = make()
    first, _ = run(n, 1.0)
    later, _ = run(n, 2.0, received_ns=NOW + 5_000_000)
    assert (first[0].ts, later[0].ts) == (NOW, NOW + 5_000_000)


def test_stamps_survive_a_restart_through_the_snapshot() -> None:
    n = make()
    run(n, 1.0)
    run(n, 2.0)
    again = make()
    again.series.restore_stamps(n.series.stamps_snapshot())
    readings, _ = run(again, 3.0)  # same clock reading as before the "restart"
    assert readings[0].ts > NOW
    with pytest.raises(ValueError):
        again.series.restore_stamps(b"{not json")
    with pytest.raises(ValueError):
        again.series.restore_stamps(b'{"stamps": [[1]]}')
