"""Format ``fields``: ``{"ts": ..., "temperature": 71.2, "vibration": 3.1}`` or an array
of such objects: one reading per key other than ``ts``, ``unit``, ``quality``,
``equipment`` and ``line`` (pure).

The key is the sensor (a ``{sensor}`` topic level is ignored). ``unit`` may be a string
for all fields or an object ``{field: unit}``.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.core.model import (
    BAD_QUALITY,
    INVALID_VALUE,
    MALFORMED,
    MISSING_FIELD,
    TOO_LARGE,
    Reading,
    Reject,
)
from gateway.core.normalize.checks import ItemChecks
from gateway.core.normalize.names import kind, short

META_FIELDS: Final = frozenset({"ts", "unit", "quality", "equipment", "line"})


class FieldsFormat(ItemChecks):
    def _fields_payload(
        self,
        out: list[Reading],
        rej: list[Reject],
        data: Any,
        eq: str | None,
        tags: dict[str, str],
        unit: str,
    ) -> None:
        """A decoded ``fields`` payload: an object or an array of objects."""
        t = type(data)
        if t is dict:
            self._fields(out, rej, data, eq, tags, unit, -1)
        elif t is list:
            if len(data) > self._max_batch:
                self._too_long(rej, len(data))
                return
            for i, item in enumerate(data):
                if type(item) is dict:
                    self._fields(out, rej, item, eq, tags, unit, i)
                else:
                    self._reject(rej, MALFORMED, f"is {kind(item)}, not an object", i)
        else:
            self._reject(rej, MALFORMED, f"fields payload is {kind(data)}, not an object", -1)

    def _fields(
        self,
        out: list[Reading],
        rej: list[Reject],
        d: dict[str, Any],
        eq: str | None,
        tags: dict[str, str],
        unit: str,
        i: int,
    ) -> None:
        """One ``fields`` object: every non-metadata key is a sensor."""
        n = len(d) - sum(1 for k in META_FIELDS if k in d)
        if n == 0:
            return self._reject(rej, MISSING_FIELD, "no sensor fields", i)
        if n > self._max_batch:
            return self._reject(rej, TOO_LARGE, f"{n} fields exceed {self._max_batch}", i)
        err: tuple[str, str] | None = None
        units: dict[str, Any] | None = None
        v = d.get("equipment")
        if v is not None:
            err = self._name(v, "equipment")
            eq = v
        v = d.get("line")
        if v is not None and err is None:
            lt = self._line(tags, v)
            if type(lt) is tuple:
                err = lt
            else:
                tags = lt  # type: ignore[assignment]
        v = d.get("unit")
        if v is not None and err is None:
            if type(v) is dict:
                units = v
            else:
                up = self._unit(v)
                if up is not None:
                    err = INVALID_VALUE, up
                else:
                    unit = v
        q = d.get("quality")
        if (
            err is None
            and q is not None
            and q != "good"
            and not (type(q) is str and q.lower() == "good")
        ):
            err = BAD_QUALITY, f"quality is {short(q)}"
        ts = d.get("ts")
        when = self._nowt if ts is None else self._when(ts)
        dedup = ts is not None
        emit = self._emit
        for k, value in d.items():
            if k in META_FIELDS:
                continue
            if err is not None:
                self._reject(rej, err[0], err[1], i, k)
                continue
            p = self._name(k, "sensor name")
            if p is not None:
                self._reject(rej, p[0], p[1], i, k)
                continue
            u = unit
            if units is not None:
                u = units.get(k, unit)
                if u is None:
                    u = unit
                up = self._unit(u)
                if up is not None:
                    self._reject(rej, INVALID_VALUE, up, i, k)
                    continue
            emit(out, rej, eq, k, tags, value, u, when, dedup, i, k)
