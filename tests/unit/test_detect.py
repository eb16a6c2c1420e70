"""gateway.core.detectors: z-score, thresholds, rules, trend, offline, snapshots (pure, fast)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from river import stats, utils

from gateway.config import DetectionConfig, Rule
from gateway.core.detectors import (
    NO_RULE,
    Detectors,
    OfflineTracker,
    ResolvedRule,
    RuleSet,
    Trend,
    ZScore,
    out_of_range,
)
from gateway.core.model import THRESHOLD_HIGH, THRESHOLD_LOW, TREND, ZSCORE, AlarmPolicy, Reading

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def reading(value: float, i: int = 0, eq: str = "device-001", sensor: str = "temperature",
            line: str = "line-1", period_s: float = 1.0) -> Reading:  # fmt: skip
    return Reading(eq, sensor, float(value), T0 + int(i * period_s * SEC), tags={"line": line})


def detectors(rules: list[Rule] | None = None, **cfg: Any) -> Detectors:
    """The per-series detectors alone, every z-score anomaly an alert finding (SPEC §5):
    no persistence, deadband, drift or equipment episodes unless a test asks for them."""
    cfg.setdefault("zscore_alert_after", 1)
    cfg.setdefault("zscore_deadband", 0.0)
    cfg.setdefault("drift", {"enabled": False})
    cfg.setdefault("equipment", {"enabled": False})
    return Detectors(DetectionConfig(**cfg), RuleSet(rules or []))


def kinds(score) -> list[str]:
    return [f.kind for f in score.findings]


def zfindings(score):
    return [f for f in score.findings if f.kind == ZSCORE]


# ------------------------------------------------------------------ z-score


def test_warmup_gives_no_z_then_z():
    d = detectors(window=100, warmup=30)
    rng = random.Random(1)
    scores = [d.score(reading(rng.gauss(50, 1), i)) for i in range(31)]
    assert all(s.z is None and not s.findings for s in scores[:30])
    assert scores[30].z is not None
    # even a wild value is not a z-score alert during warm-up
    d2 = detectors(window=100, warmup=30)
    for i in range(29):
        d2.score(reading(50 + (i % 2), i))
    assert d2.score(reading(5000, 29)).z is None


def test_z_is_computed_before_learning_hand_example():
    zs = ZScore(window=4, warmup=3, threshold=10.0)
    for x in (1.0, 2.0, 3.0):
        zs.learn_one(x)
    # baseline {1,2,3}: mean 2, sample std 1 -> z(5) = 3 (learning 5 first would give 1.32)
    assert zs.score_one(5.0) == pytest.approx(3.0)
    zs.learn_one(5.0)
    zs.learn_one(4.0)  # window slides to {2,3,5,4}: mean 3.5, var 5/3
    assert zs.values() == [2.0, 3.0, 5.0, 4.0]
    assert zs.mean == pytest.approx(3.5)
    assert zs.std == pytest.approx(math.sqrt(5 / 3))

    d = detectors(window=4, warmup=3, threshold_sigma=3.0, medium_sigma=4.0, critical_sigma=5.0)
    for i, x in enumerate((1.0, 2.0, 3.0)):
        d.score(reading(x, i))
    s = d.score(reading(5.0, 3))
    assert s.z == pytest.approx(3.0)
    (f,) = s.findings
    assert (f.kind, f.severity, f.threshold) == (ZSCORE, "low", 3.0)
    assert f.mean == pytest.approx(2.0) and f.std == pytest.approx(1.0)
    assert f.message == "temperature 5.0 is 3.0 sigma above mean 2.0"


def test_rolling_stats_match_river_rolling_var():
    rng = random.Random(7)
    zs = ZScore(window=25, warmup=2, threshold=1e9)  # nothing is anomalous: all learned raw
    ref = utils.Rolling(stats.Var, window_size=25)
    for i in range(260):  # several ring wraps
        x = rng.uniform(-1e3, 1e3)
        zs.learn_one(x)
        ref.update(x)
        if i == 0:
            continue  # one value: river's std is 0, ours is floored
        assert zs.mean == pytest.approx(ref.obj.mean.get(), rel=1e-9, abs=1e-9)
        assert zs.std == pytest.approx(math.sqrt(ref.get()), rel=1e-9)


def _warm_alternating(d: Detectors, n: int = 30) -> float:
    """Baseline 9, 11, 9, 11...: mean 10, sample std sqrt(n / (n - 1)); returns the std."""
    for i in range(n):
        d.score(reading(9.0 if i % 2 else 11.0, i))
    return math.sqrt(n / (n - 1))


@pytest.mark.parametrize(
    ("z", "severity"),
    [
        (2.9, None),
        (3.05, "low"),
        (3.95, "low"),
        (4.05, "medium"),
        (4.95, "medium"),
        (5.05, "critical"),
        (40.0, "critical"),
        (-3.5, "low"),
        (-4.5, "medium"),
        (-6.0, "critical"),
    ],
)
def test_severity_bands(z, severity):
    d = detectors(window=100, warmup=30)
    std = _warm_alternating(d)
    s = d.score(reading(10.0 + z * std, 30))
    assert s.z == pytest.approx(z)
    got = zfindings(s)
    if severity is None:
        assert got == []
        return
    (f,) = got
    assert f.severity == severity
    assert f.z == pytest.approx(z)
    assert (f.mean, f.threshold) == (pytest.approx(10.0), 3.0)
    assert f.std == pytest.approx(std)
    assert ("above" if z > 0 else "below") in f.message


def test_bands_follow_config():
    d = detectors(window=100, warmup=30, threshold_sigma=2.0, medium_sigma=6.0, critical_sigma=9.0)
    std = _warm_alternating(d)
    (f,) = zfindings(d.score(reading(10.0 + 5.0 * std, 30)))
    assert (f.severity, f.threshold) == ("low", 2.0)


def test_spike_does_not_hide_the_next_spike():
    d = detectors(window=100, warmup=30)
    rng = random.Random(3)
    for i in range(40):
        d.score(reading(rng.gauss(50, 1), i))
    first = d.score(reading(62.0, 40))
    second = d.score(reading(62.0, 41))
    assert kinds(first) == kinds(second) == [ZSCORE]
    assert second.z > 0.9 * first.z  # learning 62.0 raw would nearly halve it


def test_lasting_level_shift_stops_alarming_after_shift_after():
    d = detectors(window=100, warmup=30, shift_after=10)
    rng = random.Random(4)
    for i in range(60):
        d.score(reading(rng.gauss(50, 1), i))
    shifted = [d.score(reading(rng.gauss(70, 1), 60 + i)) for i in range(80)]
    assert all(zfindings(s) for s in shifted[:10])
    # then the baseline restarts from those 10 readings and re-warms (30) on the new level;
    # blind meanwhile, the alert is held as it is (the same finding), never cleared
    assert all(s.z is None and s.findings == shifted[9].findings for s in shifted[10:30])
    tail = [s.z for s in shifted[30:]]
    assert all(z is not None for z in tail)
    assert sum(abs(z) >= 3 for z in tail) <= 2  # back to the noise false-positive rate
    assert sum(abs(z) for z in tail) / len(tail) < 1.5
    # and a drop back to the old level is itself a (new) anomaly
    assert zfindings(d.score(reading(50.0, 200)))


def test_shift_after_is_configurable_and_needs_the_same_side():
    d = detectors(window=100, warmup=30, shift_after=3)
    std = _warm_alternating(d)
    shifted = [d.score(reading(10 + 8 * std, 30 + i)) for i in range(6)]
    assert [s.z is None for s in shifted] == [False, False, False, True, True, True]
    assert all(zfindings(s) for s in shifted)  # held while re-warming

    d = detectors(window=100, warmup=30, shift_after=3)
    std = _warm_alternating(d)
    flip = [d.score(reading(10 + (8 if i % 3 else -8) * std, 30 + i)) for i in range(20)]
    assert all(zfindings(s) for s in flip[:5])
    assert all(s.z is not None for s in flip)  # runs of 2 per side: never re-baselined


def test_flat_series_still_alarms_on_a_jump():
    d = detectors(window=100, warmup=30)
    for i in range(40):
        assert not d.score(reading(300.0, i)).findings
    assert d.score(reading(300.0, 40)).z == 0.0
    assert not d.score(reading(300.0 * (1 + 1e-12), 41)).findings  # float jitter
    s = d.score(reading(301.0, 42))
    assert math.isfinite(s.z) and s.z > 5
    assert zfindings(s)[0].severity == "critical"

    zero = detectors(window=100, warmup=30)
    for i in range(30):
        zero.score(reading(0.0, i, sensor="vibration"))
    s = zero.score(reading(1.0, 30, sensor="vibration"))
    assert math.isfinite(s.z) and zfindings(s)[0].severity == "critical"


def test_zscore_validates_arguments():
    with pytest.raises(ValueError):
        ZScore(window=10, warmup=11)
    with pytest.raises(ValueError):
        ZScore(window=10, warmup=1)


# -------------------------------------------------------------- thresholds


THERMO = Rule(sensor="temperature", high=85.0, low=15.0, critical_high=100.0, critical_low=5.0)


@pytest.mark.parametrize(
    ("value", "kind", "severity", "threshold"),
    [
        (50.0, None, None, None),
        (85.0, None, None, None),  # limits are strict
        (15.0, None, None, None),
        (90.0, THRESHOLD_HIGH, "high", 85.0),
        (100.5, THRESHOLD_HIGH, "critical", 100.0),
        (10.0, THRESHOLD_LOW, "high", 15.0),
        (4.0, THRESHOLD_LOW, "critical", 5.0),
    ],
)
def test_threshold_rules_from_first_reading(value, kind, severity, threshold):
    d = detectors([THERMO])
    s = d.score(reading(value))  # first reading of the series: still in warm-up
    assert s.z is None
    if kind is None:
        assert not s.findings
        return
    (f,) = s.findings
    assert (f.kind, f.severity, f.threshold, f.value) == (kind, severity, threshold, value)
    assert f.z is None


def test_critical_limit_alone_and_unmatched_series():
    d = detectors([Rule(equipment="device-003", critical_high=120.0)])
    (f,) = d.score(reading(130.0, eq="device-003", sensor="vibration")).findings
    assert (f.kind, f.severity, f.threshold) == (THRESHOLD_HIGH, "critical", 120.0)
    assert not d.score(reading(130.0, eq="device-004", sensor="vibration")).findings


def test_rule_globs_and_later_rule_overrides_keys_it_sets():
    rules = RuleSet(
        [
            Rule(sensor="temp*", high=85.0, low=15.0),
            Rule(equipment="oven-*", high=250.0),
            Rule(line="line-2", sensor="temperature", low=20.0),
            Rule(equipment="device-00[1-3]", sensor="pressure", max=500.0, min=0.0),
        ]
    )
    # the default deadband is 1 % of the span between the limits (250 - 15, 85 - 20)
    oven = ResolvedRule(high=250.0, low=15.0, policy=AlarmPolicy(deadband=2.35))
    assert rules.resolve("oven-1", "temperature", "line-1") == oven
    press = ResolvedRule(high=85.0, low=20.0, policy=AlarmPolicy(deadband=0.65))
    assert rules.resolve("press-1", "temperature", "line-2") == press
    assert rules.resolve("press-1", "Temperature", "line-1") is NO_RULE  # case-sensitive
    assert rules.resolve("device-002", "pressure", "") == ResolvedRule(min=0.0, max=500.0)
    assert rules.resolve("device-004", "pressure", "") is NO_RULE
    r = rules.resolve("oven-2", "temperature", "line-2")
    assert (r.high, r.low) == (250.0, 20.0)
    assert rules.resolve("oven-2", "temperature", "line-2") is r  # cached
    assert RuleSet([]).resolve("x", "y", "z") is NO_RULE


def test_rule_cache_is_bounded():
    rules = RuleSet([Rule(sensor="t", high=1.0)], cache_size=10)
    for i in range(100):
        assert rules.resolve(f"eq-{i}", "t", "").high == 1.0
    assert len(rules._cache) <= 10


def test_out_of_range():
    r = ResolvedRule(min=0.0, max=100.0)
    assert not out_of_range(r, 0.0) and not out_of_range(r, 100.0) and not out_of_range(r, 50)
    assert out_of_range(r, -0.1) and out_of_range(r, 100.1)
    assert out_of_range(ResolvedRule(max=1.0), 2.0) and not out_of_range(ResolvedRule(max=1.0), -5)
    assert not out_of_range(NO_RULE, 1e300)
    assert RuleSet.out_of_range(RuleSet([Rule(min=5.0)]).resolve("a", "b", ""), 4.0)


# ------------------------------------------------------------------- trend


def ls_slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    return sum((t - mt) * (v - mv) for t, v in points) / sum((t - mt) ** 2 for t, _ in points)


def test_trend_slope_is_least_squares_per_minute_over_the_window():
    rng = random.Random(5)
    tr = Trend(window=20, limit=1.0, min_points=5)
    pts: list[tuple[int, float]] = []
    ts = T0
    for i in range(95):  # irregular timestamps, several wraps
        ts += int(rng.uniform(0.5, 3.0) * SEC)
        v = 0.1 * i + rng.gauss(0, 0.3)
        pts.append((ts, v))
        slope = tr.update(ts, v)
        if i < 4:
            assert slope is None
            continue
        window = [((t - T0) / 60e9, x) for t, x in pts[-20:]]
        assert slope == pytest.approx(ls_slope(window), rel=1e-9)


def test_trend_fires_on_a_ramp_not_on_noise():
    rule = Rule(sensor="temperature", max_slope_per_min=1.0)
    d = detectors([rule], window=60, warmup=30)
    rng = random.Random(6)
    noise = [d.score(reading(rng.gauss(40, 0.5), i)) for i in range(300)]
    assert not any(TREND in kinds(s) for s in noise)

    ramp = [d.score(reading(40 + 0.05 * i + rng.gauss(0, 0.1), 300 + i)) for i in range(120)]
    trends = [f for s in ramp for f in s.findings if f.kind == TREND]  # 3 per minute
    assert len(trends) > 60
    assert trends[-1].severity == "medium" and trends[-1].threshold == 1.0
    assert "rising" in trends[-1].message

    plain = detectors(window=60, warmup=30)  # no max_slope rule: no trend detector
    assert not any(TREND in kinds(plain.score(reading(0.05 * i, i))) for i in range(200))


# ------------------------------------------------------------ facade bits


def test_series_count_forget_and_no_shared_mutable_findings():
    d = detectors([Rule(sensor="temperature", high=0.5)])
    a = d.score(reading(1.0, 0, eq="a"))
    b = d.score(reading(1.0, 0, eq="b"))
    assert a.findings is not b.findings  # lists with findings are fresh per call
    n1, n2 = d.score(reading(0.1, 1, eq="a")), d.score(reading(0.1, 1, eq="b"))
    assert n1.findings == () and n2.findings == ()  # no findings: one immutable tuple
    assert d.series_count == 2 and ("a", "temperature") in d
    assert d.forget(("a", "temperature")) and not d.forget(("a", "temperature"))
    assert d.series_count == 1


# ----------------------------------------------------------------- offline


def test_offline_tracker_reports_once_until_seen_again():
    t = OfflineTracker(offline_after_s=30.0)
    assert t.seen("press-1", "line-1", 0.0) is False
    assert t.seen("press-2", "line-2", 20.0) is False
    assert t.last_seen("press-1") == 0.0 and t.last_seen("nope") is None
    assert t.check(30.0) == []  # not *more* than 30 s yet
    assert t.check(31.0) == [("press-1", "line-1")]
    assert t.check(45.0) == []  # reported once
    assert t.check(51.0) == [("press-2", "line-2")]
    assert t.is_offline("press-1")
    assert t.seen("press-1", "line-1", 60.0) is True  # back
    assert t.seen("press-1", "line-1", 61.0) is False
    assert t.check(80.0) == []
    assert t.check(92.0) == [("press-1", "line-1")]  # silent again: reported again
    t.forget("press-2")
    assert len(t) == 1 and t.last_seen("press-2") is None


# --------------------------------------------------------------- snapshots


def _feed(d: Detectors, start: int, n: int, rng: random.Random) -> list:
    out = []
    for i in range(start, start + n):
        out.append(d.score(reading(rng.gauss(50, 1) + 0.02 * i, i, eq="press-1")))
        out.append(d.score(reading(rng.gauss(7, 0.1), i, eq="press-1", sensor="ph")))
        v = 90.0 if i % 37 == 0 else rng.gauss(20, 2)  # threshold breaches, spikes
        out.append(d.score(reading(v, i, eq="device-002", sensor="temperature", line="line-2")))
    return out


def test_snapshot_round_trip_gives_identical_scores():
    rules = [THERMO, Rule(equipment="press-*", sensor="temperature", max_slope_per_min=0.5)]
    a = detectors(rules, window=50, warmup=20, shift_after=10)
    _feed(a, 0, 137, random.Random(8))  # wrapped rings, partial positions
    for i in range(3):  # an anomaly run in progress at snapshot time
        a.score(reading(500.0, 137 + i, eq="press-1", sensor="ph"))
    data = a.snapshot()
    assert isinstance(data, bytes)

    b = detectors(rules, window=50, warmup=20, shift_after=10)
    assert b.restore(data) == 3 and b.series_count == 3
    assert b.snapshot() == data
    sa = [a.score(reading(500.0, 140 + i, eq="press-1", sensor="ph")) for i in range(8)]
    sb = [b.score(reading(500.0, 140 + i, eq="press-1", sensor="ph")) for i in range(8)]
    assert [s.z is None for s in sa] == [False] * 7 + [True]  # the run finished: re-baselined
    sa += _feed(a, 150, 120, random.Random(9))
    sb += _feed(b, 150, 120, random.Random(9))
    assert [s.z for s in sa] == [s.z for s in sb]
    assert [s.findings for s in sa] == [s.findings for s in sb]
    assert any(s.findings for s in sa)


def test_restore_with_another_window_seeds_the_new_window():
    a = detectors(window=100, warmup=30)
    _feed(a, 0, 150, random.Random(10))
    b = detectors(window=40, warmup=30)
    b.restore(a.snapshot())
    assert b.score(reading(7.0, 150, eq="press-1", sensor="ph")).z is not None


def test_restore_rejects_garbage_and_keeps_state():
    d = detectors()
    d.score(reading(1.0))
    for bad in (b"not json", b"{}", b'{"version": 1, "series": [{"equipment": "x"}]}',
                b'{"version": 99, "series": []}'):  # fmt: skip
        with pytest.raises(ValueError):
            d.restore(bad)
    assert d.series_count == 1


def test_snapshot_in_pieces_joins_to_a_snapshot_and_tolerates_new_series() -> None:
    d = detectors()
    for i in range(1200):
        for k in range(12):
            d.score(reading(50.0 + k % 3, k, eq=f"eq-{i}"))
    pieces = d.snapshot_chunks(per_chunk=500)
    head = next(pieces)
    d.score(reading(1.0, 0, eq="new-between-pieces"))  # the loop runs on meanwhile
    rest = list(pieces)
    assert len(rest) == 4  # 500 + 500 + 200 series, then the closing bracket
    data = head + b"".join(rest)
    assert b"new-between-pieces" not in data  # left for the next snapshot
    assert b"new-between-pieces" in d.snapshot()
    restored = detectors()
    assert restored.restore(data) == 1200
    probe = reading(60.0, 12, eq="eq-7")
    assert restored.score(probe).z == d.score(probe).z
