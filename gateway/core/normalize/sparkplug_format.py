"""Format ``sparkplug``: Sparkplug B protobuf payloads on ``spBv1.0/...`` topics (pure).

The topic says what the message is (``spBv1.0/{group}/{TYPE}/{edge node}[/{device}]``);
the host state machine (`gateway.core.sparkplug.host`) keeps each edge node's session and
this module turns its metric values into readings through the shared checks (`_emit`):

- ``line`` = group id, ``equipment`` = device id (node metrics: the edge node id),
  ``sensor`` = the metric name with ``/`` -> ``.``, the name itself in tag ``metric`` when
  they differ; ``unit`` from the metric's properties (BIRTH or this message), else the
  subscription's; ``ts`` = the metric's timestamp, else the payload's, else receive time.
- Integers, floats and booleans (1.0 / 0.0) are readings; Int8/16/32/64 are signed by the
  datatype's width, whichever width the edge node encoded the two's complement in.
  Strings, bytes, DateTime, DataSet, Template, arrays, nulls, transient metrics and the
  protocol's own metrics (``bdSeq``, ``Node Control/*``) are not readings: counted by
  reason in `SparkplugHost.skipped`, never rejected.
- ``is_historical`` values, and values whose ``Quality`` property is 500 (stale, tag
  ``quality=stale``), are stored but kept from the live detectors (`SparkplugHost.history`);
  ``Quality`` 0 (bad) is ``bad_quality``.
- Undecodable payloads, compressed payloads, topics outside the namespace and names that
  cannot be ours are rejected by reason like any other input; data the host cannot map
  (before a BIRTH, an unknown alias, a dead device) is ``missing_field`` and asks for a
  rebirth. STATE messages and commands (NCMD, DCMD) are counted and otherwise ignored.
"""

from __future__ import annotations

from typing import Final

from gateway.core.model import (
    BAD_QUALITY,
    INVALID_VALUE,
    MALFORMED,
    MISSING_FIELD,
    SERIES_LIMIT,
    RawMessage,
    Reading,
    Reject,
)
from gateway.core.normalize.checks import ItemChecks, When
from gateway.core.normalize.names import name_problem
from gateway.core.sparkplug import schema
from gateway.core.sparkplug.host import (
    BDSEQ_METRIC,
    BOOL,
    DBIRTH,
    DDATA,
    DDEATH,
    DEAD,
    DEVICE_TYPES,
    NAMESPACE,
    NBIRTH,
    NDATA,
    NDEATH,
    NO_BIRTH,
    NODE_TYPES,
    REAL,
    SIGNED,
    STARTUP,
    UNKNOWN_ALIAS,
    MetricDef,
    Node,
    SparkplugHost,
    property_info,
    short_f32,
)

COMPRESSED_UUID: Final = "SPBV1.0_COMPRESSED"
QUALITY_BAD: Final = 0
QUALITY_STALE: Final = 500
_CONTROL: Final = ("Node Control/", "Device Control/")

_parse = schema.Payload.FromString
_DecodeError = schema.DecodeError


class SparkplugFormat(ItemChecks):
    """The ``sparkplug`` format; `spb` is the host state (set by the daemon, or made here
    with default timings on the first message)."""

    spb: SparkplugHost | None = None

    def _sparkplug(self, out: list[Reading], rej: list[Reject], msg: RawMessage) -> None:
        host = self.spb
        if host is None:
            host = self.spb = SparkplugHost()
        now = self._now = msg.received_ns
        self._nowt = (now, "", "")
        self._received = msg.received
        parts = msg.topic.split("/")
        n = len(parts)
        if parts[0] != NAMESPACE or n < 2:
            return self._reject(rej, MALFORMED, f"topic is not in the {NAMESPACE} namespace", -1)
        typ = parts[2] if n > 2 else ""
        if parts[1] == "STATE":  # a host application's birth/death (JSON): not data
            host.messages["STATE"] = host.messages.get("STATE", 0) + 1
            return None
        if not (n == 4 and typ in NODE_TYPES) and not (n == 5 and typ in DEVICE_TYPES):
            return self._reject(
                rej,
                MALFORMED,
                "Sparkplug topic must be spBv1.0/group/TYPE/edge_node[/device] with a known "
                f"TYPE, got type {typ[:16]!r} and {n} levels",
                -1,
            )
        host.messages[typ] = host.messages.get(typ, 0) + 1
        if typ[1:] == "CMD":  # ours (rebirth requests) or another host's
            return None
        group, node_id = parts[1], parts[3]
        device = parts[4] if n == 5 else None
        for what, v in (("group id", group), ("edge node id", node_id), ("device id", device)):
            if v is not None:
                p = name_problem(v)
                if p is not None:
                    return self._reject(rej, p[0], f"{what} {p[1]}", -1)
        if not msg.payload and typ != NDEATH:
            return self._reject(rej, MALFORMED, "payload is empty", -1)
        try:
            payload = _parse(msg.payload)
        except _DecodeError:
            return self._reject(rej, MALFORMED, "payload is not a Sparkplug B protobuf", -1)
        if payload.uuid == COMPRESSED_UUID:
            return self._reject(
                rej, MALFORMED, "compressed Sparkplug payloads are not supported", -1
            )
        nmetrics = len(payload.metrics)
        if nmetrics > self._max_batch:
            return self._too_long(rej, nmetrics)
        node = host.node(group, node_id)
        if node is None:
            return self._reject(
                rej, SERIES_LIMIT, f"more than {host.max_nodes} Sparkplug edge nodes", -1
            )
        mono = msg.received
        if typ == NBIRTH:
            defs = host.nbirth(node, payload, mono)
            return self._sp_metrics(out, rej, host, node, payload, defs, None)
        if typ == NDEATH:
            return host.ndeath(node, payload)
        if not node.born:
            cause = DEAD if node.dead else STARTUP
            host.request_rebirth(node, cause, mono)
            return self._reject(
                rej,
                MISSING_FIELD,
                f"no NBIRTH of edge node {group}/{node_id} in this session "
                f"({'dead' if node.dead else 'not seen born'}): rebirth requested",
                -1,
            )
        host.check_seq(node, payload, mono)
        if typ == NDATA:
            return self._sp_metrics(out, rej, host, node, payload, None, node.metrics)
        assert device is not None
        if typ == DBIRTH:
            defs = host.dbirth(node, device, payload)
            return self._sp_metrics(out, rej, host, node, payload, defs, None)
        if typ == DDEATH:
            return host.ddeath(node, device)
        dev = node.devices.get(device)
        if dev is None or not dev.born:  # DDATA
            dead = dev is not None and dev.dead
            host.request_rebirth(node, DEAD if dead else NO_BIRTH, mono)
            return self._reject(
                rej,
                MISSING_FIELD,
                f"no DBIRTH of device {group}/{node_id}/{device} in this session "
                f"({'dead' if dead else 'not seen born'}): rebirth requested",
                -1,
            )
        assert typ == DDATA
        return self._sp_metrics(out, rej, host, node, payload, None, dev.metrics)

    def _sp_metrics(
        self,
        out: list[Reading],
        rej: list[Reject],
        host: SparkplugHost,
        node: Node,
        payload: object,
        defs: list[MetricDef | None] | None,
        table: dict[str, MetricDef] | None,
    ) -> None:
        """One payload's metrics -> readings (`out`, or `host.history`), rejects, counts."""
        pts: int = payload.timestamp  # type: ignore[attr-defined]
        pwhen = self._when(pts) if pts else self._nowt
        last_ts = -1
        last_when: When = pwhen
        skipped = host.skipped
        history = host.history
        emit = self._emit
        aliases = node.aliases
        default_unit = self._sp_unit
        for i, m in enumerate(payload.metrics):  # type: ignore[attr-defined]
            d: MetricDef | None
            if defs is not None:
                d = defs[i]
                if d is None:
                    skipped["control"] += 1
                    continue
            else:
                assert table is not None
                name = m.name
                if name:
                    d = table.get(name)
                    if d is None and (name == BDSEQ_METRIC or name.startswith(_CONTROL)):
                        skipped["control"] += 1
                        continue
                elif m.HasField("alias"):
                    d = aliases.get(m.alias)
                else:
                    d = None
                if d is None:
                    what = f"metric {name!r}" if name else f"alias {m.alias}"
                    host.request_rebirth(node, UNKNOWN_ALIAS, self._received)
                    self._reject(
                        rej,
                        MISSING_FIELD,
                        f"{what} is in no BIRTH of edge node {node.group}/{node.name}: "
                        "rebirth requested",
                        i,
                    )
                    continue
            if d.problem is not None:
                self._reject(rej, d.problem[0], d.problem[1], i)
                continue
            if m.is_transient:
                skipped["transient"] += 1
                continue
            if m.is_null:
                skipped["null"] += 1
                continue
            kind = d.kind
            if not kind:
                skipped[d.skip] += 1
                continue
            w = m.WhichOneof("value")
            if w is None:
                self._reject(rej, MISSING_FIELD, "no value", i, d.name)
                continue
            v = getattr(m, w)
            tv = type(v)
            if kind == SIGNED:
                if tv is not int:
                    self._mismatch(rej, d, w, i)
                    continue
                bits = d.bits
                v &= (1 << bits) - 1
                if v >> (bits - 1):
                    v -= 1 << bits
            elif kind == REAL:
                if tv is not float and tv is not int:
                    self._mismatch(rej, d, w, i)
                    continue
                if d.bits and w == "float_value":
                    v = short_f32(v)
            elif kind == BOOL:
                if tv is not bool and tv is not int:
                    self._mismatch(rej, d, w, i)
                    continue
                v = 1.0 if v else 0.0
            elif tv is not int:  # UNSIGNED
                self._mismatch(rej, d, w, i)
                continue
            unit = d.unit or default_unit
            tags = d.tags
            live = not m.is_historical
            if m.HasField("properties"):
                u, q = property_info(m.properties)
                if u:
                    up = self._unit(u)
                    if up is not None:
                        self._reject(rej, INVALID_VALUE, up, i, d.name)
                        continue
                    unit = u
                if q is not None:
                    if q == QUALITY_BAD:
                        self._reject(rej, BAD_QUALITY, "Quality property is 0 (bad)", i, d.name)
                        continue
                    if q == QUALITY_STALE:
                        tags = d.stale()
                        live = False
            ts = m.timestamp
            if ts:
                if ts != last_ts:
                    last_ts = ts
                    last_when = self._when(ts)
                emit(out if live else history, rej, d.equipment, d.sensor, tags, v, unit,
                     last_when, True, i, d.name)  # fmt: skip
            else:
                emit(out if live else history, rej, d.equipment, d.sensor, tags, v, unit,
                     pwhen, bool(pts), i, d.name)  # fmt: skip
        return None

    _sp_unit = ""  # the subscription's default unit (set per message by the normalizer)

    def _mismatch(self, rej: list[Reject], d: MetricDef, w: str, i: int) -> None:
        self._reject(
            rej, INVALID_VALUE, f"datatype {d.datatype} but the value is in {w}", i, d.name
        )
