"""The Sparkplug B host application's view of every edge node (pure: no I/O, no clock).

One `Node` per ``(group, edge node)``: the alias table and datatypes from its NBIRTH and
DBIRTHs, the ``seq`` it is expected to send next, the gaps waiting for the reorder timeout,
its ``bdSeq`` and which of its devices are alive. `SparkplugHost` keeps them and says what
follows from each message: offline/online signals (`signals`), rebirth requests
(`rebirths`), counters. Turning metric values into readings is the normalizer's part
(`gateway.core.normalize.sparkplug_format`); the daemon applies the signals to the alerts
and publishes the rebirth NCMDs (`gateway.daemon.sparkplug`).

Times are the caller's monotonic seconds (`RawMessage.received`, the tick's clock).

Rules (Sparkplug 3.0.0; the tck ids are cited in tests/unit/test_sparkplug.py):

- NBIRTH rebuilds the node's alias table and forgets its devices' (they birth again);
  a DBIRTH adds its device's metrics. Aliases are unique per edge node, not per device.
- ``seq`` (0-255) is one counter for the node and all its devices; 255 -> 0 is not a gap.
  A message ahead of the expected one opens a gap: the missing numbers wait
  `reorder_timeout_s` for late arrivals, then one rebirth is requested (cause ``seq_gap``).
- A rebirth (NCMD ``Node Control/Rebirth`` = true) is requested for data the host cannot
  map: from a node it has not seen born since it started (``startup``), before a BIRTH
  (``no_birth``), with an unknown alias or metric (``unknown_alias``), for a dead device or
  node (``dead``). At most one per node per `rebirth_cooldown_s`: one outstanding request,
  retried only if no NBIRTH answered it within the cooldown. Two gateways, or two edge
  nodes sharing one id, cannot turn that into a storm.
- DDEATH: the device is offline at once. NDEATH whose ``bdSeq`` matches the NBIRTH's: the
  node and all its devices are offline. An NDEATH with another ``bdSeq`` is the late Will of
  an older session: ignored (counted in `stale_deaths`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.core.model import INVALID_VALUE, MISSING_FIELD
from gateway.core.sparkplug import schema as s

NAMESPACE: Final = "spBv1.0"
REBIRTH_METRIC: Final = "Node Control/Rebirth"
BDSEQ_METRIC: Final = "bdSeq"
MAX_NAME_LEVELS: Final = 16  # "a/b/.../q": deeper metric names are rejected

# Message types, as they appear in the topic.
NBIRTH: Final = "NBIRTH"
NDATA: Final = "NDATA"
NDEATH: Final = "NDEATH"
DBIRTH: Final = "DBIRTH"
DDATA: Final = "DDATA"
DDEATH: Final = "DDEATH"
NODE_TYPES: Final = frozenset({NBIRTH, NDATA, NDEATH, "NCMD"})
DEVICE_TYPES: Final = frozenset({DBIRTH, DDATA, DDEATH, "DCMD"})

# Rebirth causes: the label values of edge_sparkplug_rebirths_total{cause}.
STARTUP: Final = "startup"
NO_BIRTH: Final = "no_birth"
UNKNOWN_ALIAS: Final = "unknown_alias"
SEQ_GAP: Final = "seq_gap"
DEAD: Final = "dead"
REBIRTH_CAUSES: Final = (STARTUP, NO_BIRTH, UNKNOWN_ALIAS, SEQ_GAP, DEAD)

OFFLINE: Final = "offline"
ONLINE: Final = "online"

# How a metric's value becomes a reading: kind and, for signed integers, the width.
SIGNED: Final = 1
UNSIGNED: Final = 2
REAL: Final = 3
BOOL: Final = 4
_NUMERIC: Final = {
    s.INT8: (SIGNED, 8),
    s.INT16: (SIGNED, 16),
    s.INT32: (SIGNED, 32),
    s.INT64: (SIGNED, 64),
    s.UINT8: (UNSIGNED, 0),
    s.UINT16: (UNSIGNED, 0),
    s.UINT32: (UNSIGNED, 0),
    s.UINT64: (UNSIGNED, 0),
    s.FLOAT: (REAL, 32),  # 32: float32, shown as its shortest decimal (`short_f32`)
    s.DOUBLE: (REAL, 0),
    s.BOOLEAN: (BOOL, 0),
}
# Values that are not readings, by datatype: the label values of
# edge_sparkplug_values_skipped_total{reason} (with "null", "transient", "control").
_SKIP: Final = {
    s.STRING: "string",
    s.TEXT: "string",
    s.UUID: "string",
    s.DATETIME: "datetime",
    s.BYTES: "bytes",
    s.FILE: "bytes",
    s.DATASET: "dataset",
    s.TEMPLATE: "template",
    s.PROPERTYSET: "propertyset",
    s.PROPERTYSETLIST: "propertyset",
}
SKIP_REASONS: Final = (
    "string",
    "datetime",
    "bytes",
    "dataset",
    "template",
    "propertyset",
    "array",
    "unknown_type",
    "null",
    "transient",
    "control",
)
UNIT_KEYS: Final = frozenset({"engunit", "engunits", "unit", "units", "engineeringunits"})


_F32 = struct.Struct("<f")


def short_f32(v: float) -> float:
    """The shortest decimal that is the same float32: 71.2, not 71.19999694824219.

    >>> short_f32(struct.unpack("<f", struct.pack("<f", 71.2))[0])
    71.2
    """
    for fmt in ("%.6g", "%.7g", "%.8g"):
        r = float(fmt % v)
        if _F32.unpack(_F32.pack(r))[0] == v:
            return r
    return v


def skip_reason(datatype: int) -> str:
    """Why a metric of `datatype` is not a reading ("" when it is one)."""
    if datatype in _NUMERIC:
        return ""
    r = _SKIP.get(datatype)
    if r is not None:
        return r
    if s.ARRAY_FIRST <= datatype <= s.ARRAY_LAST:
        return "array"
    return "unknown_type"


@dataclass(slots=True)
class MetricDef:
    """One metric as its BIRTH declared it, mapped to our names."""

    name: str
    datatype: int
    equipment: str
    sensor: str
    unit: str
    tags: dict[str, str]
    kind: int = 0  # SIGNED, UNSIGNED, REAL, BOOL; 0: not a reading (see `skip`)
    bits: int = 0
    skip: str = ""
    problem: tuple[str, str] | None = None  # the name cannot be a sensor: (reason, detail)
    alias: int | None = None
    stale_tags: dict[str, str] | None = None

    def stale(self) -> dict[str, str]:
        t = self.stale_tags
        if t is None:
            t = self.stale_tags = {**self.tags, "quality": "stale"}
        return t


@dataclass(slots=True)
class Device:
    name: str
    born: bool = False
    dead: bool = False
    metrics: dict[str, MetricDef] = field(default_factory=dict)


@dataclass(slots=True)
class Node:
    group: str
    name: str
    born: bool = False
    dead: bool = False
    bdseq: int | None = None
    expect: int = -1  # the next seq; -1: not tracked
    aliases: dict[int, MetricDef] = field(default_factory=dict)
    metrics: dict[str, MetricDef] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    missing: dict[int, float] = field(default_factory=dict)  # seq -> reorder deadline
    rebirth_at: float = float("-inf")
    outstanding: bool = False
    line: dict[str, str] = field(default_factory=dict)


def metric_def(name: str, datatype: int, equipment: str, line: dict[str, str]) -> MetricDef:
    """A BIRTH metric's definition: sensor = name with '/' -> '.', tag ``metric`` = name."""
    from gateway.core.normalize.names import name_problem  # (the package imports us)

    sensor = name.replace("/", ".")
    tags = line if sensor == name else {**line, "metric": name}
    kind, bits = _NUMERIC.get(datatype, (0, 0))
    d = MetricDef(name, datatype, equipment, sensor, "", tags, kind, bits, skip_reason(datatype))
    if not name:
        d.problem = (MISSING_FIELD, "metric has neither a name nor a known alias")
    elif name.count("/") >= MAX_NAME_LEVELS:
        d.problem = (INVALID_VALUE, f"metric name has more than {MAX_NAME_LEVELS} levels")
    else:
        p = name_problem(sensor)
        if p is not None:
            d.problem = (p[0], f"metric name {p[1]}")
    return d


def _unit_ok(unit: str) -> bool:
    from gateway.core.normalize.names import unit_problem

    return unit_problem(unit) is None


def property_info(props: Any) -> tuple[str | None, int | None]:
    """(unit, quality) from a metric's PropertySet; None where it has none."""
    unit: str | None = None
    quality: int | None = None
    for k, v in zip(props.keys, props.values, strict=False):
        lk = k.lower()
        if lk == "quality":
            w = v.WhichOneof("value")
            if w in ("int_value", "long_value"):
                q = getattr(v, w)
                quality = q - (1 << 32) if w == "int_value" and q >= 1 << 31 else q
        elif lk in UNIT_KEYS and v.WhichOneof("value") == "string_value":
            unit = v.string_value
    return unit, quality


class SparkplugHost:
    """Every edge node's session state; see the module docstring for the rules."""

    def __init__(
        self,
        reorder_timeout_s: float = 2.0,
        rebirth_cooldown_s: float = 10.0,
        max_nodes: int = 10_000,
    ) -> None:
        self.reorder_timeout_s = reorder_timeout_s
        self.rebirth_cooldown_s = rebirth_cooldown_s
        self.max_nodes = max_nodes
        self.nodes: dict[tuple[str, str], Node] = {}
        self._gapped: set[tuple[str, str]] = set()
        # drained by the daemon after every batch and tick
        self.signals: list[tuple[str, str, str]] = []  # (OFFLINE|ONLINE, equipment, line)
        self.rebirths: list[tuple[str, str, str]] = []  # (group, node, cause)
        self.history: list[Any] = []  # readings not for the live detectors (`Reading`s)
        # counters, exported and reset by the daemon
        self.messages: dict[str, int] = {}
        self.skipped: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
        self.suppressed = 0  # rebirth requests held back by the cooldown
        self.stale_deaths = 0  # NDEATHs of an older session (bdSeq mismatch)
        self.seq_gaps = 0  # gaps opened
        self.seq_filled = 0  # missing messages that arrived within the reorder timeout
        self.alias_conflicts = 0  # BIRTH aliases already bound to another metric

    # ------------------------------------------------------------------ nodes
    def node(self, group: str, name: str) -> Node | None:
        """The node's state, created on first sight; None past `max_nodes`."""
        key = (group, name)
        n = self.nodes.get(key)
        if n is None:
            if len(self.nodes) >= self.max_nodes:
                return None
            n = self.nodes[key] = Node(group, name, line={"line": group})
        return n

    def request_rebirth(self, node: Node, cause: str, mono: float) -> bool:
        """Ask `node` for a rebirth unless one was asked within the cooldown."""
        if mono - node.rebirth_at < self.rebirth_cooldown_s:
            self.suppressed += 1
            return False
        node.rebirth_at = mono
        node.outstanding = True
        self.rebirths.append((node.group, node.name, cause))
        return True

    # -------------------------------------------------------------------- seq
    def check_seq(self, node: Node, payload: Any, mono: float) -> None:
        """Track the node's shared seq counter (NBIRTH restarts it: see `nbirth`)."""
        e = node.expect
        if e < 0 or not payload.HasField("seq"):
            return
        sq = payload.seq & 0xFF
        if sq == e:
            node.expect = (sq + 1) & 0xFF
            return
        missing = node.missing
        if sq in missing:  # a late one within the reorder window
            del missing[sq]
            self.seq_filled += 1
            if not missing:
                self._gapped.discard((node.group, node.name))
            return
        ahead = (sq - e) & 0xFF
        if ahead < 128:  # e .. sq-1 are missing: wait for them, then ask for a rebirth
            deadline = mono + self.reorder_timeout_s
            for k in range(e, e + ahead):
                missing.setdefault(k & 0xFF, deadline)
            node.expect = (sq + 1) & 0xFF
            self.seq_gaps += 1
            self._gapped.add((node.group, node.name))
        # else: behind the counter, not one we wait for: a duplicate; its data still counts

    def tick(self, mono: float) -> None:
        """Reorder timeouts: a gap still open asks for one rebirth."""
        if not self._gapped:
            return
        for key in list(self._gapped):
            n = self.nodes.get(key)
            if n is None or not n.missing:
                self._gapped.discard(key)
                continue
            if min(n.missing.values()) <= mono:
                n.missing.clear()
                self._gapped.discard(key)
                self.request_rebirth(n, SEQ_GAP, mono)

    # ------------------------------------------------------------ births/deaths
    def nbirth(self, node: Node, payload: Any, mono: float) -> list[MetricDef | None]:
        """A new session (or a rebirth): rebuild the alias table; the defs of its metrics."""
        node.born = True
        node.dead = False
        node.outstanding = False
        node.aliases = {}
        node.metrics = {}
        for d in node.devices.values():
            d.born = False
            d.metrics = {}
        if node.missing:
            node.missing.clear()
            self._gapped.discard((node.group, node.name))
        node.expect = (payload.seq + 1) & 0xFF if payload.HasField("seq") else -1
        node.bdseq = None
        defs = self._birth(node, node.metrics, node.name, payload)
        self.signals.append((ONLINE, node.name, node.group))
        return defs

    def dbirth(self, node: Node, device: str, payload: Any) -> list[MetricDef | None]:
        d = node.devices.get(device)
        if d is None:
            d = node.devices[device] = Device(device)
        for old in d.metrics.values():
            if old.alias is not None and node.aliases.get(old.alias) is old:
                del node.aliases[old.alias]
        d.metrics = {}
        d.born = True
        d.dead = False
        defs = self._birth(node, d.metrics, device, payload)
        self.signals.append((ONLINE, device, node.group))
        return defs

    def _birth(
        self, node: Node, table: dict[str, MetricDef], equipment: str, payload: Any
    ) -> list[MetricDef | None]:
        out: list[MetricDef | None] = []
        aliases = node.aliases
        for m in payload.metrics:
            name = m.name
            if name == BDSEQ_METRIC or name.startswith(("Node Control/", "Device Control/")):
                if name == BDSEQ_METRIC and table is node.metrics:
                    w = m.WhichOneof("value")
                    if w in ("long_value", "int_value"):
                        node.bdseq = getattr(m, w)
                out.append(None)  # protocol metrics, not readings
                continue
            d = metric_def(name, m.datatype, equipment, node.line)
            if name:
                table[name] = d
            if m.HasField("alias"):
                a = m.alias
                d.alias = a
                old = aliases.get(a)
                if old is not None and old is not d:
                    self.alias_conflicts += 1
                aliases[a] = d
            if m.HasField("properties"):
                unit, _ = property_info(m.properties)
                if unit and _unit_ok(unit):
                    d.unit = unit
            out.append(d)
        return out

    def ndeath(self, node: Node, payload: Any) -> None:
        """The node's death certificate: offline, unless it is an older session's."""
        bd: int | None = None
        for m in payload.metrics:
            if m.name == BDSEQ_METRIC:
                w = m.WhichOneof("value")
                if w in ("long_value", "int_value"):
                    bd = getattr(m, w)
        if not node.born:
            if not node.dead:
                self.stale_deaths += 1  # never seen born: nothing to compare its bdSeq with
            return
        if bd is not None and node.bdseq is not None and bd != node.bdseq:
            self.stale_deaths += 1
            return
        node.born = False
        node.dead = True
        node.aliases = {}
        node.metrics = {}
        if node.missing:
            node.missing.clear()
            self._gapped.discard((node.group, node.name))
        self.signals.append((OFFLINE, node.name, node.group))
        for d in node.devices.values():
            if d.born:
                self.signals.append((OFFLINE, d.name, node.group))
            d.born = False
            d.dead = True

    def ddeath(self, node: Node, device: str) -> None:
        d = node.devices.get(device)
        if d is None or not d.born:
            return
        d.born = False
        d.dead = True
        self.signals.append((OFFLINE, device, node.group))

    # ------------------------------------------------------------------ drains
    def drain_signals(self) -> list[tuple[str, str, str]]:
        out, self.signals = self.signals, []
        return out

    def drain_rebirths(self) -> list[tuple[str, str, str]]:
        out, self.rebirths = self.rebirths, []
        return out


def rebirth_request(ts_ms: int) -> bytes:
    """The NCMD payload asking an edge node to rebirth: ``Node Control/Rebirth`` = true
    (Boolean), with the timestamp the specification requires."""
    p = s.Payload(timestamp=ts_ms)
    p.metrics.add(name=REBIRTH_METRIC, timestamp=ts_ms, datatype=s.BOOLEAN, boolean_value=True)
    return bytes(p.SerializeToString())
