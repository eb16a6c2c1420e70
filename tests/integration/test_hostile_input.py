"""A flood of hostile payloads, interleaved with valid readings, against a real gateway.

12,000 payloads of the kinds that have broken parsers elsewhere (random bytes, 20,000-deep
nesting, NaN/Infinity literals, wrong types, impossible timestamps, 10,001-item batches,
5,000-field objects, names with ``/ # +`` or NUL, duplicate keys, UTF-16 with a BOM,
5,000-digit numbers, a 3,000-character topic level), each of a kind whose reject reason
is known, with a valid reading after every 20 of them. The gateway must keep running,
store every valid reading with its value and nothing else, count every reject under its
reason, stay within a memory bound and log no line per message.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.harness import Gateways, MqttProbe, uid
from tests.stores import Store, by_sensor, wait_count

HOSTILE = 12_000
VALID_EVERY = 20
RSS_BOUND_KIB = 300 * 1024  # ~85 MB measured; a leak per payload would pass this fast
LOG_LINES_MAX = 20

Make = Callable[[random.Random, str], tuple[str, bytes]]


def _kinds(topic: str, line: str) -> list[tuple[str, str, Make]]:
    """(name, expected reject reason, make(rng, topic) -> (topic, payload))."""
    long_level = f"plant/{line}/{'x' * 3000}/temperature"
    now = int(time.time())
    return [
        ("random bytes", "malformed", lambda r, t: (t, b"\xff" + r.randbytes(r.randint(1, 300)))),
        ("deep nesting", "malformed", lambda r, t: (t, b"[" * 20_000 + b"]" * 20_000)),
        ("NaN literal", "malformed", lambda r, t: (t, b'{"value": NaN}')),
        ("Infinity literal", "malformed", lambda r, t: (t, b"-Infinity")),
        ("5,000 digits", "malformed", lambda r, t: (t, b'{"value": ' + b"9" * 5000 + b"}")),
        ("UTF-16 with BOM", "malformed", lambda r, t: (t, '{"value": 1}'.encode("utf-16"))),
        ("bad ts string", "malformed", lambda r, t: (t, b'{"value": 1, "ts": "9999-99-99"}')),
        ("string value", "invalid_value", lambda r, t: (t, b'"23.5"')),
        ("bool value", "invalid_value", lambda r, t: (t, b'{"value": true}')),
        ("array value", "invalid_value", lambda r, t: (t, b'{"value": [1, 2]}')),
        ("duplicate keys", "invalid_value", lambda r, t: (t, b'{"value": 1, "value": "x"}')),
        (
            "slash in name",
            "invalid_value",
            lambda r, t: (t, b'{"value": 1, "equipment": "a/b"}'),
        ),
        ("hash in name", "invalid_value", lambda r, t: (t, b'{"value": 1, "sensor": "x#"}')),
        ("plus in name", "invalid_value", lambda r, t: (t, b'{"value": 1, "sensor": "+"}')),
        (
            "NUL in name",
            "invalid_value",
            lambda r, t: (t, b'{"value": 1, "equipment": "a\\u0000"}'),
        ),
        ("3,000-char level", "invalid_value", lambda r, t: (long_level, b"1")),
        (
            "ts far future",
            "future_timestamp",
            lambda r, t: (t, json.dumps({"value": 1, "ts": 1e30}).encode()),
        ),
        (
            "ts before 1677",
            "stale_timestamp",
            lambda r, t: (t, json.dumps({"value": 1, "ts": -1e30}).encode()),
        ),
        (
            "ts a year ahead",
            "future_timestamp",
            lambda r, t: (t, json.dumps({"value": 1, "ts": now + 365 * 86400}).encode()),
        ),
        ("10,001 items", "too_large", lambda r, t: (t, b"[" + b",".join([b"1"] * 10_001) + b"]")),
        (
            "5,000 fields",
            "missing_field",
            lambda r, t: (t, json.dumps({f"k{i}": i for i in range(5000)}).encode()),
        ),
        ("empty payload", "malformed", lambda r, t: (t, b"")),
    ]


def test_hostile_flood_is_counted_and_valid_readings_all_stored(
    spawn_store: Gateways, probe: MqttProbe, store: Store, tmp_path: Path
) -> None:
    gw = spawn_store("[mqtt]\ndeadletter_per_s = 50\n")
    assert gw.pid is not None
    line = uid("hostile")
    eq = uid("victim")
    topic = f"plant/{line}/{eq}/temperature"
    kinds = _kinds(topic, line)
    rng = random.Random(7)
    expected: Counter[str] = Counter()
    valid: list[tuple[int, float]] = []
    base_ms = (int(time.time()) - 600) * 1000
    infos = []
    for i in range(HOSTILE):
        _, reason, make = kinds[rng.randrange(len(kinds))]
        t, payload = make(rng, topic)
        expected[reason] += 1
        infos.append(probe.client.publish(t, payload, qos=1))
        if i % VALID_EVERY == VALID_EVERY - 1:
            ms, v = base_ms + len(valid), round(rng.uniform(20, 80), 3)
            valid.append((ms, v))
            body = json.dumps({"value": v, "ts": ms}).encode()
            infos.append(probe.client.publish(f"plant/{line}/{eq}/pressure", body, qos=1))
    for info in infos:
        info.wait_for_publish(30)
    total = sum(expected.values())
    gw.wait_metric("edge_readings_rejected_total", lambda v: v >= total, timeout=60)
    wait_count(store, len(valid), timeout=30, line=line)
    time.sleep(0.5)  # anything extra (a hostile reading stored) would show up now
    assert gw.running
    assert exported_pressure(store, line) == sorted(valid)
    assert store.count(line=line) == len(valid)  # nothing hostile was stored
    for reason, n in expected.items():
        assert gw.metric("edge_readings_rejected_total", reason=reason) == n, reason
    assert gw.metric("edge_readings_rejected_total") == total
    assert gw.metric("edge_readings_received_total", source="mqtt") == len(valid)
    rss = _peak_rss_kib(gw.pid)
    assert rss < RSS_BOUND_KIB, f"peak RSS {rss} KiB"
    lines = [x for x in gw.log_text().splitlines() if x.strip()]
    assert len(lines) < LOG_LINES_MAX, "\n".join(lines[-30:])
    print(
        f"\nhostile ({store.kind}): {total} payloads, {len(valid)} valid readings stored, "
        f"rejects {dict(expected)}, peak RSS {rss} KiB, {len(lines)} log lines"
    )


def exported_pressure(store: Store, line: str) -> list[tuple[int, float]]:
    return by_sensor(store.points(line=line)).get("pressure", [])


def _peak_rss_kib(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1])
    raise AssertionError("no VmHWM")
