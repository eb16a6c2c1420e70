"""Sparkplug B host logic and payload mapping, pure (gateway/core/sparkplug, the
``sparkplug`` normalizer format). Sparkplug 3.0.0 tck ids are named where a test checks
the requirement."""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest

from gateway.config import Settings
from gateway.core.model import BAD_QUALITY, MALFORMED, MISSING_FIELD, TOO_LARGE, RawMessage
from gateway.core.normalize import Normalizer
from gateway.core.sparkplug import schema as s
from gateway.core.sparkplug.host import (
    DEAD,
    NO_BIRTH,
    OFFLINE,
    ONLINE,
    REBIRTH_METRIC,
    SEQ_GAP,
    STARTUP,
    UNKNOWN_ALIAS,
    SparkplugHost,
    rebirth_request,
)
from tests.sparkplug_edge import Edge

G, N = "Plant1", "Edge1"


class Rig:
    def __init__(self, **host: Any) -> None:
        cfg = Settings.model_validate(
            {"mqtt": {"subscriptions": [{"topic": "spBv1.0/#", "format": "sparkplug"}]}}
        )
        self.n = Normalizer(cfg.mqtt.subscriptions, cfg.validation)
        self.host = self.n.spb = SparkplugHost(**host)
        self.mono = 100.0

    def send(self, topic_payload: tuple[str, bytes], dt: float = 0.01) -> tuple[list, list]:
        self.mono += dt
        topic, payload = topic_payload
        return self.n.normalize(RawMessage(topic, payload, self.mono, time.time_ns()))


COMPRESSED = bytes(s.Payload(uuid="SPBV1.0_COMPRESSED", body=b"x").SerializeToString())
DEVICE_METRICS = [
    {"name": "Hydraulic/Temperature", "alias": 10, "datatype": s.FLOAT, "float_value": 71.2,
     "props": {"engUnit": "celsius"}},
    {"name": "Speed", "alias": 11, "datatype": s.INT16, "int_value": 5},
    {"name": "Running", "alias": 12, "datatype": s.BOOLEAN, "boolean_value": True},
    {"name": "Recipe", "alias": 13, "datatype": s.STRING, "string_value": "A"},
]  # fmt: skip


def born(rig: Rig, edge: Edge) -> None:
    rig.send(edge.nbirth([{"name": "Uptime", "alias": 1, "datatype": s.UINT32, "int_value": 7}]))
    _, rej = rig.send(
        (edge.topic("DBIRTH", "Press1"), edge.payload([dict(m) for m in DEVICE_METRICS]))
    )
    assert not rej


def test_mapping_names_units_timestamps_and_skipped_values() -> None:
    """Births map group -> line, device -> equipment, metric name '/' -> '.';
    alias-only data resolves through the BIRTH (tck-id-payloads-alias-birth-requirement,
    tck-id-payloads-alias-data-cmd-requirement)."""
    rig, edge = Rig(), Edge()
    out, rej = rig.send(
        edge.nbirth([{"name": "Uptime", "alias": 1, "datatype": s.UINT32, "int_value": 7}])
    )
    assert not rej and [(r.equipment, r.sensor, r.value) for r in out] == [(N, "Uptime", 7.0)]
    assert out[0].tags == {"line": G}
    out, rej = rig.send(
        (edge.topic("DBIRTH", "Press1"), edge.payload([dict(m) for m in DEVICE_METRICS]))
    )
    assert not rej
    t = out[0]
    assert (t.equipment, t.sensor, t.value, t.unit) == (
        "Press1",
        "Hydraulic.Temperature",
        71.2,
        "celsius",
    )
    assert t.tags == {"line": G, "metric": "Hydraulic/Temperature"}
    assert [r.value for r in out[1:]] == [5.0, 1.0]
    assert rig.host.skipped["string"] == 1 and rig.host.skipped["control"] == 2
    # alias-only DDATA, two values of one metric with their own timestamps, both kept
    ts = edge.ts
    out, rej = rig.send((edge.topic("DDATA", "Press1"), edge.payload([
        {"alias": 10, "float_value": 80.5, "timestamp": ts - 5},
        {"alias": 10, "float_value": 81.5, "timestamp": ts - 4},
        {"alias": 12, "boolean_value": False},
        {"alias": 13, "string_value": "B"},
        {"alias": 11, "is_null": True},
    ])))  # fmt: skip
    assert not rej
    assert [(r.sensor, r.value, r.ts) for r in out] == [
        ("Hydraulic.Temperature", 80.5, (ts - 5) * 1_000_000),
        ("Hydraulic.Temperature", 81.5, (ts - 4) * 1_000_000),
        ("Running", 0.0, (ts + 1) * 1_000_000),  # the payload's timestamp
    ]
    assert out[0].unit == "celsius"  # the BIRTH's unit holds for data
    assert rig.host.skipped["null"] == 1 and rig.host.skipped["string"] == 2
    assert rig.host.rebirths == []


@pytest.mark.parametrize("wide", [True, False])
def test_negative_signed_integers_in_either_encoding(wide: bool) -> None:
    """Int8/16/32 are uint32 on the wire (spec 6.4.16): -1 arrives as 32-bit two's
    complement from some clients, in the type's own width from others; Int64 as uint64."""
    rig, edge = Rig(), Edge()

    def enc(v: int, bits: int) -> int:
        return v & (0xFFFFFFFF if wide else (1 << bits) - 1)

    metrics = [
        {"name": "i8", "alias": 1, "datatype": s.INT8, "int_value": enc(-5, 8)},
        {"name": "i16", "alias": 2, "datatype": s.INT16, "int_value": enc(-300, 16)},
        {"name": "i32", "alias": 3, "datatype": s.INT32, "int_value": enc(-70000, 32)},
        {"name": "i64", "alias": 4, "datatype": s.INT64, "long_value": (-(2**40)) & (2**64 - 1)},
        {"name": "u32", "alias": 5, "datatype": s.UINT32, "int_value": 0xFFFFFFFF},
        {"name": "i8max", "alias": 6, "datatype": s.INT8, "int_value": 127},
    ]
    out, rej = rig.send(edge.nbirth(metrics))
    assert not rej
    assert [r.value for r in out] == [-5, -300, -70000, -(2**40), 4294967295, 127]
    out, _ = rig.send(
        (edge.topic("NDATA"), edge.payload([{"alias": 1, "int_value": enc(-128, 8)}]))
    )
    assert [r.value for r in out] == [-128]


def test_quality_historical_and_transient() -> None:
    rig, edge = Rig(), Edge()
    born(rig, edge)
    out, rej = rig.send((edge.topic("DDATA", "Press1"), edge.payload([
        {"alias": 10, "float_value": 1.0, "props": {"Quality": 0}},
        {"alias": 10, "float_value": 2.0, "props": {"Quality": 500}, "timestamp": edge.ts - 9},
        {"alias": 10, "float_value": 3.0, "is_historical": True, "timestamp": edge.ts - 8},
        {"alias": 10, "float_value": 4.0, "is_transient": True},
        {"alias": 10, "float_value": 5.0, "props": {"Quality": 192}},
    ])))  # fmt: skip
    assert [r.reason for r in rej] == [BAD_QUALITY]
    assert [r.value for r in out] == [5.0]  # only this one feeds the live detectors
    hist = rig.host.history
    assert [(r.value, r.tags.get("quality")) for r in hist] == [(2.0, "stale"), (3.0, None)]
    assert rig.host.skipped["transient"] == 1


def test_gateway_started_after_births_asks_once_then_ingests() -> None:
    """Data from a node not seen born: one rebirth (NCMD Node Control/Rebirth = true,
    tck-id-operational-behavior-data-commands-ncmd-rebirth-verb/-name/-value), further
    data before the NBIRTH asks no more."""
    rig, edge = Rig(rebirth_cooldown_s=5.0), Edge()
    edge.seq = 17
    for _ in range(5):
        out, rej = rig.send((edge.topic("NDATA"), edge.payload([{"alias": 1, "int_value": 1}])))
        assert out == [] and [r.reason for r in rej] == [MISSING_FIELD]
    assert rig.host.drain_rebirths() == [(G, N, STARTUP)]
    assert rig.host.suppressed == 4
    born(rig, edge)
    out, rej = rig.send((edge.topic("NDATA"), edge.payload([{"alias": 1, "int_value": 9}])))
    assert [r.value for r in out] == [9.0] and not rej
    assert rig.host.drain_rebirths() == []


def test_ncmd_rebirth_payload() -> None:
    p = s.Payload.FromString(rebirth_request(1234))
    assert p.timestamp == 1234  # tck-id-topics-ncmd-timestamp
    [m] = p.metrics
    assert (m.name, m.datatype, m.boolean_value) == (REBIRTH_METRIC, s.BOOLEAN, True)


def test_unknown_alias_and_device_without_birth_ask_for_rebirth_with_cooldown() -> None:
    rig, edge = Rig(rebirth_cooldown_s=5.0), Edge()
    born(rig, edge)
    _, rej = rig.send(
        (edge.topic("DDATA", "Press1"), edge.payload([{"alias": 99, "int_value": 1}]))
    )
    assert [r.reason for r in rej] == [MISSING_FIELD] and "alias 99" in rej[0].detail
    _, rej = rig.send(
        (edge.topic("DDATA", "Other"), edge.payload([{"alias": 10, "float_value": 1}]))
    )
    assert [r.reason for r in rej] == [MISSING_FIELD]
    assert rig.host.drain_rebirths() == [(G, N, UNKNOWN_ALIAS)]  # the second: cooldown
    rig.mono += 6
    rig.send((edge.topic("DDATA", "Other"), edge.payload([{"alias": 10, "float_value": 1}])))
    assert rig.host.drain_rebirths() == [(G, N, NO_BIRTH)]


def test_seq_wrap_is_not_a_gap_and_a_gap_waits_for_the_reorder_timeout() -> None:
    """tck-id-payloads-sequence-num-incrementing (255 -> 0);
    tck-id-operational-behavior-host-reordering-start/-success/-rebirth."""
    rig, edge = Rig(reorder_timeout_s=1.0, rebirth_cooldown_s=0.5), Edge()
    born(rig, edge)
    for _ in range(300):  # 2 .. 255, 0 .. 45: wraps in order
        out, _ = rig.send((edge.topic("NDATA"), edge.payload([{"alias": 1, "int_value": 1}])))
        assert len(out) == 1
    rig.host.tick(rig.mono + 5)
    assert rig.host.seq_gaps == 0 and rig.host.drain_rebirths() == []
    edge.seq += 3  # three lost: a gap, its data still ingested
    out, _ = rig.send((edge.topic("NDATA"), edge.payload([{"alias": 1, "int_value": 1}])))
    assert len(out) == 1 and rig.host.seq_gaps == 1
    rig.host.tick(rig.mono + 0.5)
    assert rig.host.drain_rebirths() == []  # still within the reorder timeout
    rig.host.tick(rig.mono + 1.1)
    assert rig.host.drain_rebirths() == [(G, N, SEQ_GAP)]
    rig.host.tick(rig.mono + 3)
    assert rig.host.drain_rebirths() == []  # one rebirth per gap
    born(rig, edge)
    # a swap (n+1 before n) is filled within the window: no rebirth
    a = (edge.topic("NDATA"), edge.payload([{"alias": 1, "int_value": 1}]))
    b = (edge.topic("NDATA"), edge.payload([{"alias": 1, "int_value": 2}]))
    rig.send(b)
    rig.send(a)
    rig.host.tick(rig.mono + 5)
    assert rig.host.seq_gaps == 2 and rig.host.seq_filled == 1
    assert rig.host.drain_rebirths() == []


def test_deaths_and_bdseq() -> None:
    """tck-id-operational-behavior-edge-node-termination-host-action-ddeath-devices-offline;
    -ndeath-node-offline / -ndeath-devices-offline; tck-id-payloads-ndeath-bdseq: a stale
    bdSeq (an older session's late Will) is ignored."""
    rig, edge = Rig(), Edge(bdseq=4)
    born(rig, edge)
    assert rig.host.drain_signals() == [(ONLINE, N, G), (ONLINE, "Press1", G)]
    rig.send((edge.topic("DDEATH", "Press1"), edge.payload([])))
    assert rig.host.drain_signals() == [(OFFLINE, "Press1", G)]
    # data for the dead device: rejected, rebirth
    _, rej = rig.send(
        (edge.topic("DDATA", "Press1"), edge.payload([{"alias": 10, "float_value": 1}]))
    )
    assert rej and rig.host.drain_rebirths() == [(G, N, DEAD)]
    born(rig, edge)
    rig.host.drain_signals()
    rig.send(edge.ndeath(bdseq=3))  # stale
    assert rig.host.drain_signals() == [] and rig.host.stale_deaths == 1
    rig.send(edge.ndeath())
    assert rig.host.drain_signals() == [(OFFLINE, N, G), (OFFLINE, "Press1", G)]
    rig.send(edge.ndeath())  # the Will after an explicit NDEATH: nothing more
    assert rig.host.drain_signals() == []


def test_hostile_payloads_rejected_by_reason() -> None:
    rig, edge = Rig(), Edge()
    born(rig, edge)
    cases = [
        ("spBv1.0/G/NDATA/N", b"\xff\xff\xff"),
        ("spBv1.0/G/NFOO/N", edge.payload([])),
        ("spBv1.0/G/NDATA", edge.payload([])),
        (edge.topic("NDATA"), COMPRESSED),
    ]  # fmt: skip
    for topic, payload in cases:
        out, rej = rig.send((topic, payload))
        assert out == [] and [r.reason for r in rej] == [MALFORMED], topic
    deep = "/".join(["a"] * 20)
    out, rej = rig.send(
        edge.nbirth([{"name": deep, "alias": 3, "datatype": s.DOUBLE, "double_value": 1}])
    )
    assert [r.reason for r in rej] == ["invalid_value"]
    big = [{"name": f"m{i}", "datatype": s.DOUBLE, "double_value": 1.0} for i in range(10_001)]
    _, rej = rig.send((edge.topic("NDATA"), edge.payload(big)))
    assert [r.reason for r in rej] == [TOO_LARGE]
    rig.send(("spBv1.0/STATE/scada", b'{"online": true, "timestamp": 1}'))
    rig.send((edge.topic("NCMD"), rebirth_request(1)))
    assert rig.host.messages["STATE"] == 1 and rig.host.messages["NCMD"] == 1
    tmpl = [{"name": "T", "alias": 7, "datatype": s.TEMPLATE, "template_value": b"\x0a\x01x"}]
    out, rej = rig.send(edge.nbirth(tmpl))
    assert not rej and rig.host.skipped["template"] == 1


def test_float32_shown_as_its_shortest_decimal() -> None:
    rig, edge = Rig(), Edge()
    f = struct.unpack("<f", struct.pack("<f", 0.1))[0]
    out, _ = rig.send(edge.nbirth([{"name": "x", "datatype": s.FLOAT, "float_value": f}]))
    assert out[0].value == 0.1


def test_decode_rate_per_core() -> None:
    """Not a benchmark gate: prints metrics/s for the report (alias-only DDATA, 20 per
    payload)."""
    rig, edge = Rig(), Edge()
    metrics = [
        {"name": f"m{i}", "alias": i, "datatype": s.DOUBLE, "double_value": 1.0} for i in range(20)
    ]
    rig.send(edge.nbirth(metrics))
    base = edge.ts - 20_000
    payloads = [
        edge.payload(
            [
                {"alias": i, "double_value": k + i / 10, "timestamp": base + k * 20 + i}
                for i in range(20)
            ]
        )
        for k in range(500)
    ]  # fmt: skip
    topic = edge.topic("NDATA")
    t0 = time.perf_counter()
    n = 0
    for p in payloads:
        out, _ = rig.n.normalize(RawMessage(topic, p, 0.0, time.time_ns()))
        n += len(out)
    dt = time.perf_counter() - t0
    assert n == 500 * 20
    print(f"sparkplug decode: {n / dt:,.0f} metrics/s per core ({dt / n * 1e6:.2f} µs/metric)")
