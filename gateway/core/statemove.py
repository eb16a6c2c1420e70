"""Moving a line's state between gateways (pure): split the state files by equipment, merge
a bundle into another gateway's (`edge-gateway state export | import`, docs/scale-out.md).

A gateway's state is one JSON file per part under ``<spool dir>/state/`` (the owners'
``snapshot()`` formats: detectors, episodes, alerts, alarms, equipment, series). State is
keyed by equipment, not by topic, so a move selects equipment — by line or by name — and
takes everything of theirs: every series' baselines and drift detectors, the equipment's
episode, active and returned alerts with their clear counters and pending delays, shelves,
out of service, chattering, what was announced, known equipment and the series registry.

Not moved: a line's flood window (it restarts on the new gateway: a flood is about the
last 10 minutes of raises, which the new owner rebuilds) and the production-event
de-duplication memory (``events.json``: events are not split by shard).

>>> parts = {"equipment.json": {"v": 1, "lines": {"p1": "a", "p2": "b"}, "offline": ["p2"]}}
>>> moved, kept = split(parts, selector(lines=["a"]))
>>> moved["equipment.json"], kept["equipment.json"]
({'v': 1, 'lines': {'p1': 'a'}, 'offline': []}, {'v': 1, 'lines': {'p2': 'b'}, 'offline': ['p2']})
>>> merge(kept, moved)["equipment.json"]["lines"] == parts["equipment.json"]["lines"]
True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Doc = dict[str, Any]
Keep = Callable[[str, str], bool]  # (equipment, line) -> moves?

FORMAT = "edge-gateway-state"
BUNDLE_VERSION = 1
PARTS = (
    "detectors.json",
    "episodes.json",
    "alerts.json",
    "alarms.json",
    "equipment.json",
    "series.json",
)


class StateMoveError(ValueError):
    """A bundle or state file this code cannot move (one line, says which and why)."""


def selector(lines: Iterable[str] = (), equipment: Iterable[str] = ()) -> Keep:
    """Equipment on a line matching one of `lines`, or named like one of `equipment` (globs)."""
    lp, ep = list(lines), list(equipment)

    def keep(eq: str, line: str) -> bool:
        return any(fnmatch.fnmatchcase(line, p) for p in lp) or any(
            fnmatch.fnmatchcase(eq, p) for p in ep
        )

    return keep


def _lines_of(parts: Mapping[str, Doc]) -> dict[str, str]:
    """equipment -> line, from every part that records it."""
    out: dict[str, str] = {}
    for rec in parts.get("detectors.json", {}).get("series", ()):
        out.setdefault(str(rec["equipment"]), str(rec.get("line", "")))
    for a in parts.get("alerts.json", {}).get("alerts", ()):
        out.setdefault(str(a["equipment"]), str(a.get("line", "")))
    out.update(parts.get("equipment.json", {}).get("lines", {}))
    return out


def _by_eq(
    rows: Iterable[Any], eq_of: Callable[[Any], str], moves: Callable[[str], bool]
) -> tuple[list[Any], list[Any]]:
    yes: list[Any] = []
    no: list[Any] = []
    for r in rows:
        (yes if moves(eq_of(r)) else no).append(r)
    return yes, no


def _dict_by_eq(d: Mapping[str, Any], moves: Callable[[str], bool]) -> tuple[Doc, Doc]:
    return {k: v for k, v in d.items() if moves(k)}, {k: v for k, v in d.items() if not moves(k)}


def split(parts: Mapping[str, Doc], keep: Keep) -> tuple[dict[str, Doc], dict[str, Doc]]:
    """(what moves, what stays) for the parts in `parts` (decoded state files)."""
    lines = _lines_of(parts)

    def moves(eq: str) -> bool:
        return keep(eq, lines.get(eq, ""))

    moved: dict[str, Doc] = {}
    kept: dict[str, Doc] = {}
    try:
        for name, doc in parts.items():
            a, b = dict(doc), dict(doc)
            if name == "detectors.json":
                a["series"], b["series"] = _by_eq(doc["series"], lambda r: r["equipment"], moves)
            elif name == "episodes.json":
                a["equipment"], b["equipment"] = _dict_by_eq(doc["equipment"], moves)
            elif name == "alerts.json":
                a["alerts"], b["alerts"] = _by_eq(doc["alerts"], lambda r: r["equipment"], moves)
                ids = {x["id"] for x in a["alerts"]}
                for key in ("normals", "normal_since"):
                    d = doc.get(key, {})
                    a[key] = {k: v for k, v in d.items() if k in ids}
                    b[key] = {k: v for k, v in d.items() if k not in ids}
                a["pending"], b["pending"] = _by_eq(doc.get("pending", ()), lambda r: r[0], moves)
                for key in ("last_seen", "status"):
                    a[key], b[key] = _dict_by_eq(doc.get(key, {}), moves)
            elif name == "alarms.json":
                a["announced"], b["announced"] = _by_eq(
                    doc["announced"], lambda r: r["equipment"], moves
                )
                for key in ("raises", "chattering", "shelves"):
                    a[key], b[key] = _by_eq(doc[key], lambda r: r[0], moves)
                a["oos"], b["oos"] = _dict_by_eq(doc["oos"], moves)
                ids = {x["id"] for x in a["announced"]}
                a["stale"] = [i for i in doc["stale"] if i in ids]
                b["stale"] = [i for i in doc["stale"] if i not in ids]
                a["floods"] = {}  # the new owner rebuilds a line's flood window
            elif name == "equipment.json":
                a["lines"], b["lines"] = _dict_by_eq(doc["lines"], moves)
                a["offline"] = [e for e in doc["offline"] if moves(e)]
                b["offline"] = [e for e in doc["offline"] if not moves(e)]
            elif name == "series.json":
                a["stamps"], b["stamps"] = _by_eq(doc["stamps"], lambda r: r[0], moves)
            else:
                continue
            moved[name], kept[name] = a, b
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise StateMoveError(f"{name}: not a state file this gateway can split ({e!r})") from None
    return moved, kept


def _version(doc: Mapping[str, Any]) -> Any:
    return doc.get("version", doc.get("v"))


def _union(old: Iterable[Any], new: Iterable[Any], key: Callable[[Any], Any]) -> list[Any]:
    """Rows of `old` and `new`; on the same key the row from `new` wins."""
    out = {key(r): r for r in old}
    out.update((key(r), r) for r in new)
    return list(out.values())


def merge(target: Mapping[str, Doc], bundle: Mapping[str, Doc]) -> dict[str, Doc]:
    """`target`'s parts with `bundle`'s merged in (the bundle wins on the same series,
    alert point or equipment). A part the target lacks is taken from the bundle as is."""
    out: dict[str, Doc] = {k: dict(v) for k, v in target.items()}
    for name, doc in bundle.items():
        if name not in PARTS:
            continue
        t = out.get(name)
        if t is None:
            out[name] = dict(doc)
            continue
        if _version(t) != _version(doc):
            raise StateMoveError(
                f"{name}: bundle has format version {_version(doc)!r}, "
                f"this gateway's state {_version(t)!r}"
            )
        try:
            if name == "detectors.json":
                t["series"] = _union(
                    t["series"], doc["series"], lambda r: (r["equipment"], r["sensor"])
                )
            elif name == "episodes.json":
                t["equipment"] = {**t["equipment"], **doc["equipment"]}
            elif name == "alerts.json":
                point = lambda r: (r["equipment"], r["sensor"], r["kind"])  # noqa: E731
                t["alerts"] = _union(t["alerts"], doc["alerts"], point)
                for key in ("normals", "normal_since", "last_seen", "status"):
                    t[key] = {**t.get(key, {}), **doc.get(key, {})}
                t["pending"] = _union(
                    t.get("pending", ()), doc.get("pending", ()), lambda r: tuple(r[:3])
                )
            elif name == "alarms.json":
                point = lambda r: (r["equipment"], r["sensor"], r["kind"])  # noqa: E731
                t["announced"] = _union(t["announced"], doc["announced"], point)
                for key in ("raises", "chattering", "shelves"):
                    t[key] = _union(t[key], doc[key], lambda r: tuple(r[:3]))
                t["oos"] = {**t["oos"], **doc["oos"]}
                t["stale"] = list(dict.fromkeys([*t["stale"], *doc["stale"]]))
                t["signal_ns"] = max(int(t["signal_ns"]), int(doc["signal_ns"]))
            elif name == "equipment.json":
                t["lines"] = {**t["lines"], **doc["lines"]}
                t["offline"] = sorted({*t["offline"], *doc["offline"]})
            elif name == "series.json":
                t["stamps"] = _union(t["stamps"], doc["stamps"], lambda r: (r[0], r[1]))
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise StateMoveError(f"{name}: cannot merge ({e!r})") from None
    return out


def counts(parts: Mapping[str, Doc]) -> dict[str, int]:
    """What a set of parts holds, for the one line the CLI prints."""
    alarms = parts.get("alarms.json", {})
    return {
        "equipment": len(_lines_of(parts)),
        "series": len(parts.get("detectors.json", {}).get("series", ())),
        "alerts": len(parts.get("alerts.json", {}).get("alerts", ())),
        "shelves": len(alarms.get("shelves", ())),
        "out_of_service": len(alarms.get("oos", {})),
    }


def bundle(parts: Mapping[str, Doc], selected: Mapping[str, list[str]]) -> Doc:
    return {
        "format": FORMAT,
        "version": BUNDLE_VERSION,
        "selected": dict(selected),
        "parts": dict(parts),
    }


def unbundle(doc: Any) -> dict[str, Doc]:
    """The parts of a bundle written by `bundle`; StateMoveError on anything else."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateMoveError(
            "not an edge-gateway state bundle (made by `edge-gateway state export`)"
        )
    if doc.get("version") != BUNDLE_VERSION:
        raise StateMoveError(
            f"state bundle version {doc.get('version')!r}, this gateway reads {BUNDLE_VERSION}"
        )
    parts = doc.get("parts")
    if not isinstance(parts, dict) or not all(isinstance(v, dict) for v in parts.values()):
        raise StateMoveError("state bundle has no parts")
    return {str(k): v for k, v in parts.items() if k in PARTS}
