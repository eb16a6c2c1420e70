"""Format ``json``: a number, a ``{"value", "ts", "unit", "quality", ...}`` object, or
an array of either (pure).

Items may carry ``equipment``, ``sensor`` and ``line``, overriding the topic; other keys
are ignored. A bare number (or a number in an array) takes the receive time.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.core.model import BAD_QUALITY, INVALID_VALUE, MALFORMED, MISSING_FIELD, Reading, Reject
from gateway.core.normalize.checks import ItemChecks
from gateway.core.normalize.names import kind, short

_MISSING: Final = object()


class JsonFormat(ItemChecks):
    def _json_payload(
        self,
        out: list[Reading],
        rej: list[Reject],
        data: Any,
        eq: str | None,
        sn: str | None,
        tags: dict[str, str],
        unit: str,
    ) -> None:
        """A decoded ``json`` payload: object, number or array of them."""
        t = type(data)
        if t is dict:
            self._obj(out, rej, data, eq, sn, tags, unit, -1)
        elif t is float or t is int:
            self._emit(out, rej, eq, sn, tags, data, unit, self._nowt, False, -1, None)
        elif t is list:
            if len(data) > self._max_batch:
                self._too_long(rej, len(data))
                return
            nowt = self._nowt
            for i, item in enumerate(data):
                ti = type(item)
                if ti is dict:
                    self._obj(out, rej, item, eq, sn, tags, unit, i)
                elif ti is float or ti is int:
                    self._emit(out, rej, eq, sn, tags, item, unit, nowt, False, i, None)
                elif ti is list:
                    self._reject(rej, MALFORMED, "is an array, not an object or number", i)
                else:
                    self._reject(rej, INVALID_VALUE, f"value is {kind(item)}, not a number", i)
        else:
            self._reject(rej, INVALID_VALUE, f"value is {kind(data)}, not a number", -1)

    def _obj(
        self,
        out: list[Reading],
        rej: list[Reject],
        d: dict[str, Any],
        eq: str | None,
        sn: str | None,
        tags: dict[str, str],
        unit: str,
        i: int,
    ) -> None:
        """One ``json`` object: {"value", "ts", "unit", "quality", overrides}."""
        value = d.get("value", _MISSING)
        ts = d.get("ts")
        if len(d) > (value is not _MISSING) + (ts is not None):  # overrides, unit, quality
            v = d.get("equipment")
            if v is not None:
                p = self._name(v, "equipment")
                if p is not None:
                    return self._reject(rej, p[0], p[1], i)
                eq = v
            v = d.get("sensor")
            if v is not None:
                p = self._name(v, "sensor")
                if p is not None:
                    return self._reject(rej, p[0], p[1], i)
                sn = v
            v = d.get("line")
            if v is not None:
                lt = self._line(tags, v)
                if type(lt) is tuple:
                    return self._reject(rej, lt[0], lt[1], i)
                tags = lt  # type: ignore[assignment]
            v = d.get("unit")
            if v is not None:
                up = self._unit(v)
                if up is not None:
                    return self._reject(rej, INVALID_VALUE, up, i)
                unit = v
            q = d.get("quality")
            if q is not None and q != "good" and not (type(q) is str and q.lower() == "good"):
                return self._reject(rej, BAD_QUALITY, f"quality is {short(q)}", i)
        if value is _MISSING:
            if eq is None or sn is None:  # report the name first, as _emit would
                what = "equipment" if eq is None else "sensor"
                return self._reject(rej, MISSING_FIELD, f"no {what} in topic or payload", i)
            return self._reject(rej, MISSING_FIELD, "no value in payload", i)
        if ts is None:
            self._emit(out, rej, eq, sn, tags, value, unit, self._nowt, False, i, None)
        else:
            self._emit(out, rej, eq, sn, tags, value, unit, self._when(ts), True, i, None)
