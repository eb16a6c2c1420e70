"""Series that come and go (issue 20): idle expiry, the make-room rule, the restart bound,
forgetting equipment. Pure core plus the daemon's `Processor` with a publisher that
only queues (no broker); time is passed in, nothing sleeps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import orjson

from adapters.base import BrokerLink
from gateway.config import Settings, ValidationConfig
from gateway.core.model import RawMessage
from gateway.core.normalize import Normalizer
from gateway.core.series import GRACE_DIVISOR, ROOM_CANDIDATES, SeriesRegistry
from gateway.daemon.expiry import SWEEP_PER_TICK
from gateway.daemon.metrics import Metrics
from gateway.daemon.process import Processor
from gateway.daemon.publish import Publisher
from gateway.daemon.snapshots import Snapshots
from gateway.daemon.state import StateStore

S = 1_000_000_000  # ns per s
T0 = 1_700_000_000 * S


def msg(eq: str, sensor: str, value: float, received_ns: int, ts: bool = True) -> RawMessage:
    body = {"value": value, "ts": received_ns // 1_000_000} if ts else value
    return RawMessage(
        f"plant/line-1/{eq}/{sensor}", orjson.dumps(body), time.monotonic(), received_ns
    )


def sweep_all(reg: SeriesRegistry, now_ns: int, budget: int = 100) -> list[tuple[str, str]]:
    """Sweep until one whole cycle has passed (what the 1 s tick does over time)."""
    out: list[tuple[str, str]] = []
    for _ in range(reg.count // budget + 2):
        out += reg.sweep(now_ns, budget)
    return out


# ------------------------------------------------------------------ registry


def test_idle_series_expire_and_new_ones_are_admitted() -> None:
    n = Normalizer(
        Settings().mqtt.subscriptions, ValidationConfig(max_series=1000, series_idle_s=2)
    )
    for i in range(1000):
        r, j = n.normalize(msg(f"old-{i}", "t", 1.0, T0, ts=i % 2 == 0))
        assert r and not j
    r, j = n.normalize(msg("late", "t", 1.0, T0 + S))
    assert not r and j[0].reason == "series_limit"  # full, and nothing is idle enough
    assert sweep_all(n.series, T0 + S) == []  # 1 s: not idle for 2 s yet
    expired = sweep_all(n.series, T0 + 2 * S + 1)
    assert len(expired) == 1000 and n.series.count == 0 and n.series.expired == 1000
    for i in range(1000):
        r, j = n.normalize(msg(f"new-{i}", "t", 1.0, T0 + 3 * S))
        assert r and not j, j
    assert n.series.count == 1000


def test_a_reading_keeps_its_series_alive() -> None:
    reg = SeriesRegistry(10, idle_s=2)
    reg.admit("a", "x", T0)
    reg.stamp("a", "y", T0)
    reg.admit("a", "x", T0 + 2 * S)  # payload ts: the receive time counts
    reg.stamp("a", "y", T0 + 2 * S)  # no ts: its stamp is the receive time
    assert sweep_all(reg, T0 + 3 * S) == []
    assert sorted(sweep_all(reg, T0 + 5 * S)) == [("a", "x"), ("a", "y")]


def test_the_sweep_looks_at_budget_series_per_call() -> None:
    reg = SeriesRegistry(10_000, idle_s=1)
    for i in range(10_000):
        reg.admit("eq", f"s{i}", T0)
    sizes = [len(reg.sweep(T0 + 2 * S, 3000)) for _ in range(5)]
    assert sizes == [3000, 3000, 3000, 1000, 0]
    assert reg.count == 0


def test_zero_idle_never_expires_and_never_makes_room() -> None:
    reg = SeriesRegistry(2, idle_s=0)
    reg.admit("a", "x", T0)
    reg.admit("a", "y", T0)
    assert sweep_all(reg, T0 + 10**6 * S) == []
    assert not reg.admit("b", "x", T0 + 10**6 * S)


# ------------------------------------------------------------- make room


def test_a_full_registry_lets_the_longest_idle_past_the_grace_go() -> None:
    idle_s = 7.0
    grace = idle_s / GRACE_DIVISOR  # 1 s
    reg = SeriesRegistry(4, idle_s=idle_s)
    reg.admit("e", "oldest", T0)
    reg.admit("e", "old", T0 + S)
    reg.admit("e", "recent", T0 + 5 * S)
    reg.admit("e", "active", T0 + 5 * S)
    now = T0 + int((5 + grace / 2) * S)  # "recent" and "active" are within the grace
    sweep_all(reg, now)  # finds the candidates: oldest, old
    assert reg.admit("n", "1", now)
    assert reg.admit("n", "2", now)
    assert reg.drain_evicted() == [("e", "oldest"), ("e", "old")]  # longest idle first
    assert not reg.admit("n", "3", now)  # the rest sent within the grace: refused
    assert sorted(k[1] for k in reg.of_equipment("e")) == ["active", "recent"]


def test_a_candidate_that_came_back_is_not_evicted() -> None:
    reg = SeriesRegistry(2, idle_s=7)
    reg.admit("e", "a", T0)
    reg.admit("e", "b", T0)
    sweep_all(reg, T0 + 2 * S)  # both past the 1 s grace
    reg.admit("e", "a", T0 + 2 * S)  # a speaks again
    assert reg.admit("n", "1", T0 + 2 * S)
    assert reg.drain_evicted() == [("e", "b")]
    assert not reg.admit("n", "2", T0 + 2 * S)  # a is no candidate any more


def test_room_candidates_are_bounded() -> None:
    n = ROOM_CANDIDATES + 100
    reg = SeriesRegistry(n, idle_s=7)
    for i in range(n):
        reg.admit("e", f"s{i}", T0 + i)
    sweep_all(reg, T0 + 2 * S, budget=1000)
    admitted = sum(reg.admit("n", f"s{i}", T0 + 2 * S) for i in range(n))
    assert admitted == ROOM_CANDIDATES
    evicted = reg.drain_evicted()
    assert evicted[:2] == [("e", "s0"), ("e", "s1")]  # oldest first
    assert ("e", f"s{n - 1}") not in evicted  # the newest were left for the next cycle


# --------------------------------------------------- processor and restart

TOML_KEYS = {"validation": {"max_series": 50, "series_idle_s": 2.0}}


def processor(tmp: Path, **validation: float) -> tuple[Processor, Snapshots]:
    s = Settings.model_validate(
        {
            "validation": {"max_series": 50, "series_idle_s": 2.0, **validation},
            "spool": {"dir": str(tmp)},
        }
    )
    p = Processor(s, Metrics(), Publisher(cast(BrokerLink, None)))
    return p, Snapshots(StateStore(tmp), p)


def feed(p: Processor, names: list[str], now_ns: int) -> int:
    out, _ = p.process([msg(eq, "t", 1.0, now_ns) for eq in names])
    return len(out)


def save(snaps: Snapshots) -> None:
    for name, (snap, _) in snaps.parts.items():
        snaps.store.save(name, b"".join(snap()))


def test_restart_keeps_max_series(tmp_path: Path) -> None:
    p, snaps = processor(tmp_path)
    now = time.time_ns()
    assert feed(p, [f"old-{i}" for i in range(60)], now) == 50
    save(snaps)
    doc = orjson.loads(snaps.store.load("series.json") or b"")
    assert doc["v"] == 2 and len(doc["stamps"]) == 50  # every series, payload ts or not
    again, snaps2 = processor(tmp_path)
    snaps2.restore()
    assert again.normalizer.series.count == 50 and again.detectors.series_count == 50
    assert feed(again, [f"new-{i}" for i in range(50)], now + S) == 0  # full: refused
    assert again.detectors.series_count == 50


def test_restart_from_an_old_series_file_adopts_the_restored_baselines(tmp_path: Path) -> None:
    p, snaps = processor(tmp_path)
    now = time.time_ns()
    feed(p, [f"old-{i}" for i in range(50)], now)
    save(snaps)
    snaps.store.save("series.json", b'{"stamps": []}')  # what a payload-ts gateway wrote
    again, snaps2 = processor(tmp_path, max_series=40)
    snaps2.restore()
    assert again.normalizer.series.count == 40 and again.detectors.series_count == 40


def test_expired_series_stay_expired_across_a_restart(tmp_path: Path) -> None:
    p, snaps = processor(tmp_path)
    now = time.time()
    feed(p, ["gone"], int((now - 10) * S))  # silent for 10 s (idle after 2 s)
    feed(p, ["here"], int(now * S))
    # the restored state (last seen kept) expires on the first tick after the restart
    save(snaps)
    again, snaps2 = processor(tmp_path)
    snaps2.restore()
    assert again.detectors.series_count == 2
    again.tick(now, time.monotonic())
    assert again.detectors.series_count == 1 and ("here", "t") in again.detectors
    assert again.metrics.series_expired.labels("idle")._value.get() == 1
    # and what expired before a snapshot is not in it
    p.tick(now, time.monotonic())
    save(snaps)
    third, snaps3 = processor(tmp_path)
    snaps3.restore()
    assert third.detectors.series_count == 1 and third.normalizer.series.count == 1


def test_tick_forgets_detector_state_and_latest(tmp_path: Path) -> None:
    p, _ = processor(tmp_path, max_series=10)
    now = time.time()
    feed(p, [f"e{i}" for i in range(10)], int(now * S))
    assert len(p.latest) == 10 and p.detectors.series_count == 10
    for k in range(SWEEP_PER_TICK // 10 + 1):
        p.tick(now + 3 + k, time.monotonic())
    assert len(p.latest) == 0 and p.detectors.series_count == 0
    assert p.normalizer._routes == {} and p.normalizer._bounds_cache == {}
    # full registry, all past the grace: new series make room, their old state goes
    feed(p, [f"e{i}" for i in range(10)], int((now + 10) * S))
    p.tick(now + 10.5, time.monotonic())  # a cycle: candidates
    p.tick(now + 10.5, time.monotonic())
    assert feed(p, [f"n{i}" for i in range(10)], int((now + 10.6) * S)) == 10
    p.tick(now + 10.6, time.monotonic())
    assert p.detectors.series_count == 10 and all(k[0].startswith("n") for k in p.latest)
    assert p.metrics.series_expired.labels("room")._value.get() == 10


# ------------------------------------------------------- forgotten equipment


def test_forget_command_clears_alerts_and_empties_retained_topics(tmp_path: Path) -> None:
    p, _ = processor(tmp_path)
    now = time.time()
    feed(p, ["press-9"], int(now * S))
    p.tick(now + 60, time.monotonic() + 60)  # offline after 30 s (monotonic deadman)
    assert p.alerts.is_offline("press-9")
    p.on_command(p.expiry.forget_topic, orjson.dumps({"equipment": "press-9", "by": "maintenance"}))
    assert not p.alerts.is_offline("press-9") and p.alerts.active_count == 0
    assert p.detectors.series_count == 0 and not p.latest
    cleared = p.recent_alerts[-1]
    assert cleared.state == "cleared" and cleared.to_event()["reason"] == "forgotten"
    assert "by maintenance" in cleared.message
    queued = p.publisher._queued
    assert queued["status/press-9"][-1].payload == b""
    assert queued["alerts/active/press-9/*/offline"][-1].payload == b""
    p.on_command(p.expiry.forget_topic, b"not json")  # ignored, logged


def test_equipment_silent_for_forget_after_is_forgotten(tmp_path: Path) -> None:
    s = Settings.model_validate({"alerts": {"forget_after_s": 3600.0}})
    p = Processor(s, Metrics(), Publisher(cast(BrokerLink, None)))
    now = time.time()
    mono = time.monotonic()
    feed(p, ["press-1", "press-2"], int(now * S))
    p.tick(now + 40, mono + 40)  # both offline
    feed(p, ["press-2"], int((now + 41) * S))  # press-2 back
    p.tick(now + 1000, mono + 1000)  # press-2 offline again, press-1 not yet forgotten
    assert p.alerts.is_offline("press-1")
    p.tick(now + 3700, mono + 3700)
    assert not p.alerts.is_offline("press-1") and p.alerts.is_offline("press-2")
    assert p.publisher._queued["status/press-1"][-1].payload == b""
