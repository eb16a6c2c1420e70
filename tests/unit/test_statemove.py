"""`gateway.core.statemove`: splitting state files by equipment and merging a bundle back."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.core import statemove


def alert(eq: str, line: str, sensor: str = "t", kind: str = "zscore") -> dict[str, Any]:
    return {
        "id": f"id-{eq}-{sensor}",
        "equipment": eq,
        "sensor": sensor,
        "kind": kind,
        "line": line,
    }


def parts() -> dict[str, dict[str, Any]]:
    return {
        "detectors.json": {
            "version": 1,
            "series": [
                {"equipment": "p1", "sensor": "t", "line": "a"},
                {"equipment": "p1", "sensor": "q", "line": "a"},
                {"equipment": "p2", "sensor": "t", "line": "b"},
            ],
        },
        "episodes.json": {"version": 1, "equipment": {"p1": {"x": 1}, "p2": {"x": 2}}},
        "alerts.json": {
            "version": 1,
            "alerts": [alert("p1", "a"), alert("p2", "b")],
            "normals": {"id-p1-t": 1, "id-p2-t": 2},
            "normal_since": {"id-p1-t": 5},
            "pending": [["p1", "q", "threshold_high", 7]],
            "last_seen": {"p1": 1, "p2": 2},
            "status": {"p1": "anomaly", "p2": "online"},
        },
        "alarms.json": {
            "version": 1,
            "signal_ns": 10,
            "announced": [alert("p1", "a")],
            "raises": [["p1", "t", "zscore", [1, 2]]],
            "chattering": [["p2", "t", "zscore", 3]],
            "shelves": [["p1", "t", "zscore", {"id": "id-p1-t"}]],
            "oos": {"p2": {"by": "op"}},
            "floods": {"a": {"raises": [1]}},
            "stale": ["id-p1-t"],
        },
        "equipment.json": {"v": 1, "lines": {"p1": "a", "p2": "b"}, "offline": ["p2"]},
        "series.json": {"v": 2, "stamps": [["p1", "t", 1], ["p1", "q", 2], ["p2", "t", 3]]},
    }


def test_split_moves_everything_of_the_selected_equipment_and_nothing_else() -> None:
    moved, kept = statemove.split(parts(), statemove.selector(lines=["a"]))
    assert statemove.counts(moved) == {
        "equipment": 1,
        "series": 2,
        "alerts": 1,
        "shelves": 1,
        "out_of_service": 0,
    }
    assert statemove.counts(kept) == {
        "equipment": 1,
        "series": 1,
        "alerts": 1,
        "shelves": 0,
        "out_of_service": 1,
    }
    assert moved["alerts.json"]["pending"] == [["p1", "q", "threshold_high", 7]]
    assert moved["alerts.json"]["normals"] == {"id-p1-t": 1}
    assert kept["alerts.json"]["status"] == {"p2": "online"}
    assert moved["alarms.json"]["stale"] == ["id-p1-t"] and kept["alarms.json"]["stale"] == []
    assert moved["alarms.json"]["floods"] == {}  # a line's flood window is not moved
    assert [r[0] for r in moved["series.json"]["stamps"]] == ["p1", "p1"]
    assert moved["episodes.json"]["equipment"] == {"p1": {"x": 1}}


def test_merge_of_the_halves_gives_back_every_row() -> None:
    whole = parts()
    moved, kept = statemove.split(whole, statemove.selector(equipment=["p1*"]))
    back = statemove.merge(kept, moved)
    for name, doc in whole.items():
        for key, value in doc.items():
            if name == "alarms.json" and key == "floods":
                continue
            got = back[name][key]
            if isinstance(value, list):
                assert sorted(map(repr, got)) == sorted(map(repr, value)), (name, key)
            else:
                assert got == value, (name, key)


def test_merge_into_a_fresh_gateway_takes_the_bundle_and_the_bundle_wins() -> None:
    moved, _ = statemove.split(parts(), statemove.selector(lines=["a"]))
    assert statemove.merge({}, moved) == moved
    target = copy.deepcopy(parts())
    target["detectors.json"]["series"][0]["line"] = "old"
    merged = statemove.merge(target, moved)
    rows = [r for r in merged["detectors.json"]["series"] if r["equipment"] == "p1"]
    assert len(rows) == 2 and {r["line"] for r in rows} == {"a"}


def test_a_bundle_of_another_format_version_is_refused_with_one_line() -> None:
    moved, _ = statemove.split(parts(), statemove.selector(lines=["a"]))
    target = parts()
    target["detectors.json"]["version"] = 2
    with pytest.raises(
        statemove.StateMoveError, match=r"detectors\.json: bundle has format version 1"
    ):
        statemove.merge(target, moved)
    with pytest.raises(statemove.StateMoveError, match="not an edge-gateway state bundle"):
        statemove.unbundle({"parts": {}})
    doc = statemove.bundle(moved, {"line": ["a"]})
    assert statemove.unbundle(doc) == moved
    with pytest.raises(statemove.StateMoveError, match="version 9"):
        statemove.unbundle({**doc, "version": 9})
