"""Timestamp parsing: ISO 8601 strings and epoch numbers -> int ns since the epoch, UTC.

Epoch numbers (int, float or a numeric string) carry no unit, so the unit is
taken from the magnitude of the absolute value:

==================  ======  ==========================================
abs(value)          unit    why the cut-off is safe
==================  ======  ==========================================
< 1e11              s       1e11 s is the year 5138
< 1e14              ms      1e11 ms is 1973-03-03, 1e14 ms is 5138
< 1e17              µs      1e14 µs is 1973-03-03, 1e17 µs is 5138
otherwise           ns      1e17 ns is 1973-03-03
==================  ======  ==========================================

So an epoch in ms/µs/ns before March 1973 would be misread; no plant sends those.
Results always fit a signed 64-bit integer (1677-09-21 .. 2262-04-11); outside
that `TimestampRangeError` (a ValueError) says which side.

>>> parse_ts(1700000000)
1700000000000000000
>>> parse_ts(1700000000123)
1700000000123000000
>>> parse_ts(1700000000123456)
1700000000123456000
>>> parse_ts(1700000000123456789)
1700000000123456789
>>> parse_ts(1700000000.25)
1700000000250000000
>>> parse_ts("1700000000.123456789")
1700000000123456789
>>> parse_ts("2023-11-14T22:13:20Z")
1700000000000000000
>>> parse_ts("2023-11-14T23:13:20.123456789+01:00")
1700000000123456789
>>> parse_ts("2023-11-14 22:13:20")  # naive means UTC
1700000000000000000
>>> parse_ts(None, now_ns=42)  # missing: receive time
42
>>> parse_ts("yesterday")
Traceback (most recent call last):
...
ValueError: timestamp 'yesterday' is not ISO 8601 or an epoch number
"""

from __future__ import annotations

import decimal
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

I64_MIN: Final = -(1 << 63)
I64_MAX: Final = (1 << 63) - 1
MAX_TS_STR: Final = 64  # longer strings are not timestamps

_E11: Final = 100_000_000_000
_E14: Final = 100_000_000_000_000
_E17: Final = 100_000_000_000_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CTX: Final = decimal.Context(
    prec=40,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero],
)
_DIGITS: Final = frozenset("0123456789")


class TimestampRangeError(ValueError):
    """A well-formed timestamp outside the int64 ns range; `future` says which side."""

    def __init__(self, message: str, future: bool) -> None:
        super().__init__(message)
        self.future = future


def _range_error(v: object, future: bool) -> TimestampRangeError:
    side = "after 2262" if future else "before 1677"
    return TimestampRangeError(f"timestamp {v!r} is {side}, outside the ns range", future)


def _from_int(v: int) -> int:
    a = v if v >= 0 else -v
    if a < _E11:
        return v * 1_000_000_000
    if a < _E14:
        return v * 1_000_000
    if a < _E17:
        return v * 1_000
    if I64_MIN <= v <= I64_MAX:
        return v
    raise _range_error(v, v > 0)


def _from_decimal(d: Decimal, original: object) -> int:
    if not d.is_finite():
        raise ValueError(f"timestamp {original!r} is not finite")
    if d.adjusted() >= 20:  # >= 1e20 in any unit is past int64 ns
        raise _range_error(original, d > 0)
    a = abs(d)
    scale = 9 if a < _E11 else 6 if a < _E14 else 3 if a < _E17 else 0
    ns = int(d.scaleb(scale, _CTX).to_integral_value(context=_CTX))
    if not I64_MIN <= ns <= I64_MAX:
        raise _range_error(original, ns > 0)
    return ns


def _from_float(v: float) -> int:
    if v != v or v - v != 0.0:
        raise ValueError(f"timestamp {v!r} is not finite")
    if v.is_integer() and -1e19 < v < 1e19:
        return _from_int(int(v))
    # repr() is the shortest decimal that round-trips: the digits the sender wrote,
    # not the binary approximation (1700000000.123 stays .123000000).
    return _from_decimal(Decimal(repr(v)), v)


def _looks_iso(s: str) -> bool:
    return "T" in s or ":" in s or " " in s or (len(s) >= 8 and s[4] == "-" and s[:4].isdigit())


def _from_iso(s: str, original: str) -> int:
    frac_ns = 0
    dot = s.find(".")
    if dot < 0:
        dot = s.find(",")
    if dot > 0:
        end = dot + 1
        n = len(s)
        while end < n and s[end] in _DIGITS:
            end += 1
        digits = s[dot + 1 : end]
        # Only a seconds fraction (HH:MM:SS.f or basic HHMMSS.f) is taken apart;
        # anything else is left for fromisoformat to accept or refuse.
        extended = dot >= 3 and s[dot - 3] == ":"
        basic = dot >= 7 and s[dot - 7] in "T " and s[dot - 6 : dot].isdigit()
        if digits and (extended or basic):
            frac_ns = int(digits[:9].ljust(9, "0"))  # digits past ns are dropped
            s = s[:dot] + s[end:]
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"timestamp {original!r} is not ISO 8601 or an epoch number") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        td = dt - _EPOCH
    except OverflowError:  # offset pushes it past year 1..9999
        raise _range_error(original, dt.year > 1970) from None
    ns = (td.days * 86_400 + td.seconds) * 1_000_000_000 + td.microseconds * 1_000 + frac_ns
    if not I64_MIN <= ns <= I64_MAX:
        raise _range_error(original, ns > 0)
    return ns


def _from_str(v: str) -> int:
    s = v.strip()
    if not s:
        raise ValueError("timestamp is an empty string")
    if len(s) > MAX_TS_STR:
        raise ValueError(f"timestamp string of {len(s)} characters is too long")
    if not s.isascii():
        raise ValueError(f"timestamp {v!r} is not ISO 8601 or an epoch number")
    if s.isdigit():
        return _from_int(int(s))
    s = s.upper()  # RFC 3339 allows 't' and 'z'
    if _looks_iso(s):
        return _from_iso(s, v)
    try:
        d = _CTX.create_decimal(s)
    except decimal.DecimalException:
        raise ValueError(f"timestamp {v!r} is not ISO 8601 or an epoch number") from None
    return _from_decimal(d, v)


def parse_ts(v: object, now_ns: int | None = None) -> int:
    """`v` as int ns since the epoch, UTC. None means "no timestamp": `now_ns`.

    Accepts int/float epoch numbers (unit by magnitude, see module doc), numeric
    strings, and ISO 8601 strings (``Z`` or ``±HH:MM``; naive is UTC; a seconds
    fraction keeps up to 9 digits, further digits are dropped). Raises
    ValueError for anything else, TimestampRangeError outside int64 ns.
    """
    if type(v) is int:
        if -_E11 < v < _E11:
            return v * 1_000_000_000
        return _from_int(v)
    if type(v) is float:
        return _from_float(v)
    if type(v) is str:
        return _from_str(v)
    if v is None:
        if now_ns is None:
            raise ValueError("timestamp is missing")
        return now_ns
    if isinstance(v, bool):
        raise ValueError(f"timestamp must be a number or an ISO 8601 string, got {v!r}")
    if isinstance(v, int):
        return _from_int(int(v))
    if isinstance(v, float):
        return _from_float(float(v))
    if isinstance(v, str):
        return _from_str(str(v))
    raise ValueError(f"timestamp must be a number or an ISO 8601 string, got {type(v).__name__}")
