"""Pure simulator logic: profiles, anomalies, plant scheduling, payloads (no network)."""

from __future__ import annotations

import itertools
import random
import statistics

import orjson
import pytest

from simulator.anomalies import (
    DRIFT,
    DROPOUT,
    KINDS,
    SPIKE,
    STUCK,
    AnomalyConfig,
    Injection,
    spike_value,
)
from simulator.payload import MsClock, batch_payload, load_series, load_topics, reading_payload
from simulator.plant import Plant
from simulator.profiles import SEED_PLANT, ValueGenerator, profile

TEMP = profile("device-001", "temperature")


def _series(readings, key):
    return [r for r in readings if r.profile.key == key]


# ------------------------------------------------------------------------------ profiles


def test_seed_plant_matches_spec_table():
    rows = {
        (p.equipment, p.sensor): (p.line, p.unit, p.low, p.high, p.period_s) for p in SEED_PLANT
    }
    assert rows == {
        ("device-001", "temperature"): ("line-1", "celsius", 20, 80, 2),
        ("device-002", "pressure"): ("line-1", "psi", 10, 50, 3),
        ("device-003", "vibration"): ("line-1", "hz", 0, 100, 1),
        ("device-004", "production_rate"): ("line-1", "units_per_hour", 100, 500, 5),
        ("device-005", "quality"): ("line-1", "percent", 85, 100, 4),
        ("fermenter-1", "temperature"): ("line-2", "celsius", 35, 40, 1),
        ("fermenter-1", "ph"): ("line-2", "ph", 6.5, 7.5, 1),
        ("fermenter-1", "agitator_rpm"): ("line-2", "rpm", 300, 600, 1),
    }
    assert TEMP.topic("plant") == "plant/line-1/device-001/temperature"


@pytest.mark.parametrize("p", SEED_PLANT, ids=lambda p: p.key)
def test_generator_stays_in_band_and_wanders(p):
    gen = ValueGenerator(p, seed=3)
    values = [gen.next() for _ in range(20_000)]
    assert min(values) >= p.low
    assert max(values) <= p.high
    # It is a signal, not a constant: it moves, but readings next to each other are close.
    assert statistics.pstdev(values) > 0.02 * p.span
    steps = [abs(b - a) for a, b in itertools.pairwise(values)]
    assert statistics.mean(steps) < 0.05 * p.span


def test_same_seed_same_sequence_other_seed_differs():
    a = ValueGenerator(TEMP, seed=42)
    b = ValueGenerator(TEMP, seed=42)
    c = ValueGenerator(TEMP, seed=43)
    seq_a = [a.next() for _ in range(200)]
    assert seq_a == [b.next() for _ in range(200)]
    assert seq_a != [c.next() for _ in range(200)]


def test_plant_same_seed_same_readings_with_anomalies():
    def run(seed):
        plant = Plant(seed=seed, anomalies=AnomalyConfig(rate=0.05))
        return [(r.t, r.profile.key, r.value, r.anomaly) for r in plant.readings_until(600)]

    first = run(9)
    assert first == run(9)
    assert first != run(10)
    assert any(kind is not None for *_, kind in first)


def test_plant_without_anomalies_stays_in_band_at_periods():
    plant = Plant(seed=5)
    readings = list(plant.readings_until(3600))
    for p in SEED_PLANT:
        rs = _series(readings, p.key)
        assert len(rs) == int(3600 // p.period_s) + 1
        assert all(p.low <= r.value <= p.high and r.anomaly is None for r in rs)
        assert [r.t for r in rs] == [n * p.period_s for n in range(len(rs))]
    assert [r.t for r in readings] == sorted(r.t for r in readings)
    assert plant.drain_events() == []


def test_plant_readings_until_is_incremental():
    whole = [(r.t, r.profile.key, r.value) for r in Plant(seed=1).readings_until(100)]
    plant = Plant(seed=1)
    parts = []
    for t_end in (0.5, 10, 10, 33.3, 100):
        parts += [(r.t, r.profile.key, r.value) for r in plant.readings_until(t_end)]
    assert parts == whole


# ----------------------------------------------------------------------------- anomalies


@pytest.mark.parametrize("p", SEED_PLANT, ids=lambda p: p.key)
def test_spike_value_is_past_threshold_and_far_from_band(p):
    rng = random.Random(0)
    for _ in range(50):
        v = spike_value(p, rng)
        if p.alert_high is not None:
            assert v > p.alert_high
        elif p.alert_low is not None:
            assert v < p.alert_low
            assert v >= 0
        else:
            assert v > p.high
        dist = max(p.low - v, v - p.high)
        assert dist > 10 * p.noise_sigma


def test_injected_spike_exceeds_threshold_once():
    plant = Plant(seed=2, injections=[Injection.parse("spike:device-001:temperature@20")])
    rs = _series(plant.readings_until(60), "device-001/temperature")
    spikes = [r for r in rs if r.anomaly == SPIKE]
    assert len(spikes) == 1
    assert spikes[0].t == 20.0
    assert spikes[0].value > 85
    assert all(r.value <= 80 for r in rs if r is not spikes[0])
    (ev,) = plant.drain_events()
    assert (ev.kind, ev.equipment, ev.sensor, ev.t) == (SPIKE, "device-001", "temperature", 20.0)


def test_low_threshold_spike_goes_below():
    plant = Plant(seed=2, injections=[Injection.parse("spike:device-005:quality@8")])
    (spike,) = [r for r in plant.readings_until(20) if r.anomaly == SPIKE]
    assert spike.profile.sensor == "quality"
    assert spike.value < 80


def test_drift_ramps_past_threshold_then_returns():
    cfg = AnomalyConfig(drift_readings=10)
    plant = Plant(seed=4, anomalies=cfg, injections=[Injection.parse("drift:device-001@10")])
    rs = _series(plant.readings_until(100), "device-001/temperature")
    drift = [r.value for r in rs if r.anomaly == DRIFT]
    assert len(drift) == 10
    assert all(b > a for a, b in itertools.pairwise(drift))
    steps = [b - a for a, b in itertools.pairwise(drift)]
    assert max(steps) - min(steps) < 1e-9  # linear
    assert drift[-1] > 85
    after = [r for r in rs if r.t > 10 + 2 * 10]
    assert after and all(r.anomaly is None and r.value <= 80 for r in after)


def test_stuck_repeats_last_value():
    cfg = AnomalyConfig(stuck_readings=8)
    plant = Plant(
        seed=4, anomalies=cfg, injections=[Injection.parse("stuck:device-003:vibration@30")]
    )
    rs = _series(plant.readings_until(60), "device-003/vibration")
    idx = next(i for i, r in enumerate(rs) if r.anomaly == STUCK)
    stuck = rs[idx : idx + 8]
    assert all(r.anomaly == STUCK for r in stuck)
    assert {r.value for r in stuck} == {rs[idx - 1].value}
    assert rs[idx + 8].anomaly is None
    assert rs[idx + 8].value != rs[idx - 1].value


def test_dropout_silences_whole_equipment_longer_than_offline_timeout():
    plant = Plant(seed=1, injections=[Injection.parse("dropout:fermenter-1:ph@10")])
    readings = list(plant.readings_until(120))
    for sensor in ("temperature", "ph", "agitator_rpm"):
        ts = [r.t for r in _series(readings, f"fermenter-1/{sensor}")]
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        assert max(gaps) > 30
        assert ts[-1] == 120  # it came back
    other = [r.t for r in _series(readings, "device-003/vibration")]
    assert len(other) == 121  # other equipment unaffected
    events = plant.drain_events()
    assert [(e.kind, e.phase, e.equipment) for e in events] == [
        (DROPOUT, "start", "fermenter-1"),
        (DROPOUT, "end", "fermenter-1"),
    ]
    assert events[1].t - events[0].t >= 45


def test_random_anomalies_follow_rate_and_kinds():
    plant = Plant(seed=11, anomalies=AnomalyConfig(rate=0.02, kinds=(SPIKE,)))
    list(plant.readings_until(3600))
    events = plant.drain_events()
    starts = [e for e in events if e.phase == "start"]
    assert {e.kind for e in starts} == {SPIKE}
    n_readings = sum(int(3600 // p.period_s) + 1 for p in SEED_PLANT)
    assert 0.01 * n_readings < len(starts) < 0.03 * n_readings

    none = Plant(seed=11, anomalies=AnomalyConfig(rate=0.0))
    assert all(r.anomaly is None for r in none.readings_until(3600))


def test_random_anomalies_produce_every_kind():
    plant = Plant(seed=12, anomalies=AnomalyConfig(rate=0.01))
    list(plant.readings_until(3600))
    assert {e.kind for e in plant.drain_events()} == set(KINDS)


@pytest.mark.parametrize(
    "spec",
    [
        "spike:device-001:temperature",
        "spike@20",
        "boom:device-001@1",
        "spike:device-001@soon",
        "spike:device-001@-1",
        "spike::temperature@1",
    ],
)
def test_bad_injection_specs_are_rejected(spec):
    with pytest.raises(ValueError, match="bad injection"):
        Injection.parse(spec)


def test_injection_of_unknown_series_is_rejected():
    with pytest.raises(ValueError, match="unknown series device-009"):
        Plant(injections=[Injection.parse("spike:device-009@1")])
    with pytest.raises(ValueError, match="unknown series device-001/ph"):
        Plant(injections=[Injection.parse("spike:device-001:ph@1")])


def test_anomaly_config_validates():
    with pytest.raises(ValueError):
        AnomalyConfig(rate=1.5)
    with pytest.raises(ValueError):
        AnomalyConfig(rate=0.1, kinds=("spike", "melt"))


# ------------------------------------------------------------------------------ payloads


def test_reading_payload_is_json_object_with_ms_ts():
    raw = reading_payload(23.51234, 1_767_225_600_123, "celsius", 2)
    assert orjson.loads(raw) == {"value": 23.51, "ts": 1_767_225_600_123, "unit": "celsius"}
    assert isinstance(orjson.loads(raw)["ts"], int)


def test_wall_clock_payload_ts_is_epoch_ms():
    import time

    clock = MsClock()
    before = time.time() * 1000
    obj = orjson.loads(reading_payload(1.0, clock.next("k"), "psi"))
    assert before - 1 <= obj["ts"] <= time.time() * 1000 + 1
    assert 1e12 < obj["ts"] < 1e13  # milliseconds, not s / us / ns


def test_batch_payload_shapes():
    assert orjson.loads(batch_payload([1.5], [10])) == {"value": 1.5, "ts": 10}
    assert orjson.loads(batch_payload([1.5, 2.5], [10, 11])) == [
        {"value": 1.5, "ts": 10},
        {"value": 2.5, "ts": 11},
    ]


def test_ms_clock_never_repeats_a_timestamp_per_series():
    now = [1_000_000_000]
    clock = MsClock(lambda: now[0])
    a = [clock.next("a") for _ in range(3)] + clock.run("a", 4)
    assert a == list(range(1000, 1007))
    assert clock.next("b") == 1000
    now[0] = 2_000_000_000
    assert clock.next("a") == 2000


def test_load_topics_fit_the_default_template():
    from gateway.core.topics import TopicTemplate

    topics = load_topics(25, "plant")
    assert len(set(topics)) == 25
    tmpl = TopicTemplate("plant/+/+/+", "plant/{line}/{equipment}/{sensor}")
    eq, sensor = load_series(24)
    assert tmpl.match(topics[24]) == {"line": "load", "equipment": eq, "sensor": sensor}


# ----------------------------------------------------------------------------------- cli


def test_cli_opcua_rejects_bad_arguments(capsys):
    from simulator.cli import main

    with pytest.raises(SystemExit) as e:
        main(["opcua", "--rate", "0"])
    assert e.value.code == 2
    assert "--rate must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--inject", "spike:device-009@3"], "unknown series device-009"),
        (["--inject", "spike@3"], "bad injection"),
        (["--anomaly-rate", "2"], "anomaly rate must be within"),
        (["--anomaly-kinds", "spike,melt"], "unknown anomaly kinds"),
        (["--count", "10"], "--count only applies to load mode"),
        (["--rate", "10", "--spike-at", "3"], "apply to plant mode"),
        (["--rate", "10", "--count", "-1"], "--count must be >= 0"),
    ],
)
def test_cli_rejects_bad_arguments_before_connecting(capsys, args, message):
    from simulator.cli import main

    # Port 9 (discard) is never contacted: validation happens before connecting.
    with pytest.raises(SystemExit) as exc:
        main(["mqtt", "--port", "9", "--connect-timeout", "0", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
