"""OPC UA values as the pipeline's payloads: `Item` (what a variable's readings are
called), `encode()` (one data change → JSON bytes), and the small helpers the
other modules share (`ts_ns`, `map_browse_path`, `chunks`, `plain`).

Values: numbers as they are, booleans as 1.0/0.0, anything else is passed on as
a string so the normalizer rejects it (``invalid_value``); NaN/±inf become
strings too (``invalid_value``). A Bad status code becomes
``{"quality": "<name>"}`` (``bad_quality``); Uncertain values are accepted.
Timestamp: SourceTimestamp, else ServerTimestamp, else receive time (the payload
then has no ``ts``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import orjson
from asyncua import ua

from adapters.opcua import NO_LINE, SOURCE
from gateway.core.normalize import name_problem

_T = TypeVar("_T")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
BAD = 0x80000000  # the severity bit of a Bad StatusCode


def chunks(seq: Sequence[_T], n: int) -> Iterator[Sequence[_T]]:
    """`seq` in slices of at most `n` (requests per server call, items per deliver)."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def plain(node: ua.NodeId) -> ua.NodeId:
    """An ExpandedNodeId as a plain NodeId (hashable like the others)."""
    return ua.NodeId(node.Identifier, node.NamespaceIndex, node.NodeIdType)


def ts_ns(value: dt.datetime | None) -> int:
    """A UTC datetime as ns since the epoch; 0 for None or times before 1970."""
    if value is None:
        return 0
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    us = (value - _EPOCH) // _US
    return us * 1000 if us > 0 else 0


def _non_numeric(v: object) -> object:
    if v is None or type(v) is str:
        return v
    return f"<{type(v).__name__}>"


@dataclass(slots=True)
class Item:
    """One monitored variable and what its readings are called."""

    node: ua.NodeId
    equipment: str
    sensor: str
    line: str = ""
    unit: str = ""
    topic: str = ""
    extra: tuple[tuple[str, object], ...] = ()

    def finish(self) -> Item:
        """Compute the topic and the payload extras once (not per value)."""
        levels = []
        for v in (self.line or NO_LINE, self.equipment, self.sensor):
            # A name the topic cannot carry travels in the payload, where the
            # normalizer rejects it with a clear reason.
            levels.append(v if name_problem(v) is None else NO_LINE)
        self.topic = f"{SOURCE}/{levels[0]}/{levels[1]}/{levels[2]}"
        extra: list[tuple[str, object]] = []
        if self.unit:
            extra.append(("unit", self.unit))
        if levels[0] == NO_LINE:
            extra.append(("line", self.line))
        if levels[1] == NO_LINE:
            extra.append(("equipment", self.equipment))
        if levels[2] == NO_LINE:
            extra.append(("sensor", self.sensor))
        self.extra = tuple(extra)
        return self


def encode(item: Item, dv: ua.DataValue) -> bytes:
    """The JSON payload for one data change of `item` (see the module docstring)."""
    d: dict[str, object] = {}
    sc = dv.StatusCode
    if sc is not None and sc.value & BAD:
        d["quality"] = sc.name
    else:
        variant = dv.Value
        v = None if variant is None else variant.Value
        t = type(v)
        if t is float:
            if v - v != 0.0:  # type: ignore[operator]
                v = repr(v)  # NaN / inf: JSON has no such number
        elif t is bool:
            v = 1.0 if v else 0.0
        elif t is not int:
            v = _non_numeric(v)
        d["value"] = v
    ns = ts_ns(dv.SourceTimestamp) or ts_ns(dv.ServerTimestamp)
    if ns:
        d["ts"] = ns
    for k, x in item.extra:
        d[k] = x
    return orjson.dumps(d)


def map_browse_path(path: Sequence[str], root_name: str, default_line: str) -> tuple[str, str, str]:
    """(line, equipment, sensor) for a variable's browse path below the browse root.

    >>> map_browse_path(("Line1", "device-001", "temperature"), "Plant", "")
    ('Line1', 'device-001', 'temperature')
    >>> map_browse_path(("device-001", "temperature"), "Plant", "line-9")
    ('line-9', 'device-001', 'temperature')
    >>> map_browse_path(("temperature",), "press-1", "")
    ('', 'press-1', 'temperature')
    """
    sensor = path[-1]
    equipment = path[-2] if len(path) >= 2 else root_name
    line = path[-3] if len(path) >= 3 else default_line
    return line, equipment, sensor
