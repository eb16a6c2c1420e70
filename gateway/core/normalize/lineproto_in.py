r"""InfluxDB line protocol in: request bodies -> points (pure).

The inverse of `gateway.core.lineproto` (which writes our own lines), for the HTTP
write endpoints. Written here rather than taken from PyPI: the parsers there parse one
line at a time (``line-protocol-parser``, a C extension following the archived v1.2
rules) or are built on pyparsing (``pyilpp``, 0.1); neither splits a body whose
string fields hold newlines, and a reject here must say which line and why.

Syntax (InfluxDB 2.x)::

    measurement[,tag=value...] field=value[,field=value...] [timestamp]

- A backslash makes the next character literal while scanning. Unescaped it is
  dropped before ``,`` and space in a measurement, before ``,`` ``=`` and space in tag
  keys, tag values and field keys, and before ``"`` and ``\`` in a string field; before
  anything else it stays (``a\b`` is ``a\b``), as in InfluxDB.
- Field values: ``1.5``/``-2e3`` float; ``7i`` integer (int64); ``7u`` unsigned
  (uint64); ``t T true True TRUE`` / ``f F false False FALSE``; ``"text"`` string
  (may hold commas, spaces, ``=`` and newlines). Anything else is an error.
- Timestamp: an integer in the request's precision, or none (the receive time).
- Blank lines and lines whose first non-blank character is ``#`` are skipped;
  leading and trailing whitespace (also ``\r``) is ignored.

>>> m, tags, fields, ts = parse_line('cpu,host=a\\ b usage=0.5,n=3i,ok=true,msg="x, y" 17')
>>> m, tags, ts
('cpu', [('host', 'a b')], 17)
>>> fields
[('usage', 0.5), ('n', 3), ('ok', True), ('msg', 'x, y')]
>>> parse_line("m f=1")
('m', [], [('f', 1.0)], None)
>>> try:
...     parse_line("m f=abc")
... except LineError as e:
...     print(e)
field 'f': 'abc' is not a number, boolean or quoted string
>>> split_lines(b'# comment\n\nm f=1\nm s="two\nlines" 5\r\n')
[(3, b'm f=1'), (4, b'm s="two\nlines" 5')]
"""

from __future__ import annotations

from typing import Final

FieldValue = float | int | bool | str
Point = tuple[str, list[tuple[str, str]], list[tuple[str, FieldValue]], "int | None"]

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
UINT64_MAX: Final = (1 << 64) - 1
_TRUE: Final = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE: Final = frozenset({"f", "F", "false", "False", "FALSE"})
_MEASUREMENT_ESC: Final = frozenset(", ")
_KEY_ESC: Final = frozenset(",= ")
_WS: Final = b" \t\r"


class LineError(ValueError):
    """A line that is not line protocol; the message says where and why."""


# ------------------------------------------------------------------ lines


def _ends_quoted(line: bytes) -> bool:
    """True if `line` ends inside a string field value (InfluxDB's scanLine rules)."""
    quoted = fields = False
    equals = commas = 0
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == 0x5C:  # backslash: the next byte is literal
            i += 2
            continue
        if c == 0x20:
            fields = True
        if fields:
            if not quoted and c == 0x3D:  # '='
                equals += 1
            elif not quoted and c == 0x2C:  # ','
                commas += 1
            elif c == 0x22 and equals > commas:  # '"' opening or closing a field value
                quoted = not quoted
        i += 1
    return quoted


def _logical(body: bytes) -> list[tuple[int, bytes]]:
    """(1-based number of its first physical line, bytes) of every logical line.

    A newline inside a quoted string field does not end the line.
    """
    pieces = body.split(b"\n")
    if b'"' not in body:
        return list(enumerate(pieces, 1))
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(pieces)
    while i < n:
        start = i
        line = pieces[i]
        i += 1
        if b'"' in line:
            while i < n and _ends_quoted(line):
                line = line + b"\n" + pieces[i]
                i += 1
        out.append((start + 1, line))
    return out


def split_lines(body: bytes) -> list[tuple[int, bytes]]:
    """(line number, line) of every line that is not blank or a comment, trimmed."""
    out: list[tuple[int, bytes]] = []
    append = out.append
    for n, raw in _logical(body):
        line = raw.strip(_WS)
        if line and line[0] != 0x23:  # '#'
            append((n, line))
    return out


def chunks(body: bytes, size: int) -> list[tuple[int, bytes]]:
    """`body` cut at line ends into pieces of about `size` bytes (a longer line alone).

    Each piece comes with the number of physical lines before it, so line numbers
    counted within a piece add up to the body's.
    """
    if len(body) <= size:
        return [(0, body)]
    out: list[tuple[int, bytes]] = []
    cur: list[bytes] = []
    cur_bytes = 0
    first = 0  # physical lines before the current piece
    lines = 0
    for _, raw in _logical(body):
        if cur and cur_bytes + len(raw) > size:
            out.append((first, b"\n".join(cur)))
            first = lines
            cur = []
            cur_bytes = 0
        cur.append(raw)
        cur_bytes += len(raw) + 1
        lines += raw.count(b"\n") + 1
    if cur:
        out.append((first, b"\n".join(cur)))
    return out


# ------------------------------------------------------------------ points


def _unescape(s: str, specials: frozenset[str]) -> str:
    if "\\" not in s:
        return s
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n:
            nxt = s[i + 1]
            out.append(nxt if nxt in specials else c + nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _token(s: str, i: int, stops: str) -> int:
    """Index of the first character of `stops` at or after `i` that is not escaped."""
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c in stops:
            return i
        i += 1
    return n


def _short(s: str) -> str:
    return repr(s) if len(s) <= 40 else repr(s[:37] + "...")


def _value(raw: str, key: str) -> FieldValue:
    """A field value that is not a quoted string."""
    last = raw[-1]
    if last == "i" or last == "u":
        digits = raw[:-1]
        body = digits[1:] if digits[:1] == "-" else digits
        if body.isascii() and body.isdigit():
            v = int(digits)
            if last == "i" and INT64_MIN <= v <= INT64_MAX:
                return v
            if last == "u" and 0 <= v <= UINT64_MAX:
                return v
            kind = "int64" if last == "i" else "uint64"
            raise LineError(f"field {_short(key)}: {digits} is out of the {kind} range")
    elif raw in _TRUE:
        return True
    elif raw in _FALSE:
        return False
    elif "_" not in raw and raw.isascii():
        try:
            return float(raw)  # "nan"/"inf" pass: the reading checks reject them
        except ValueError:
            pass
    raise LineError(f"field {_short(key)}: {_short(raw)} is not a number, boolean or quoted string")


def _timestamp(raw: str) -> int:
    body = raw[1:] if raw[:1] == "-" else raw
    if not (body.isascii() and body.isdigit()):
        raise LineError(f"timestamp {_short(raw)} is not an integer")
    v = int(raw)
    if not INT64_MIN <= v <= INT64_MAX:
        raise LineError(f"timestamp {_short(raw)} is out of the int64 range")
    return v


def _pair(piece: str, what: str) -> tuple[str, str]:
    k, sep, v = piece.partition("=")
    if not sep or not k or not v or "=" in v:
        raise LineError(f"{what} {_short(piece)} is not key=value")
    return k, v


def parse_line(line: str) -> Point:
    """(measurement, [(tag, value)], [(field, value)], timestamp or None); raises LineError.

    `line` is one line of `split_lines` (decoded, trimmed, not a comment).
    """
    if "\\" not in line and '"' not in line:  # the common case: plain splits
        parts = line.split(" ")
        if len(parts) not in (2, 3) or not all(parts):
            parts = [p for p in parts if p]
            if len(parts) < 2:
                raise LineError("no fields (measurement[,tags] fields [timestamp])")
            if len(parts) > 3:
                raise LineError(f"unexpected {_short(parts[3])} after the timestamp")
        key = parts[0].split(",")
        measurement = key[0]
        if not measurement:
            raise LineError("no measurement")
        tags = [_pair(p, "tag") for p in key[1:]]
        fields: list[tuple[str, FieldValue]] = []
        for p in parts[1].split(","):
            k, v = _pair(p, "field")
            fields.append((k, _value(v, k)))
        return measurement, tags, fields, _timestamp(parts[2]) if len(parts) == 3 else None
    return _parse_escaped(line)


def _parse_escaped(s: str) -> Point:
    """`parse_line` for lines with backslashes or quotes: a scan, character by character."""
    n = len(s)
    i = _token(s, 0, ", ")
    measurement = _unescape(s[:i], _MEASUREMENT_ESC)
    if not measurement:
        raise LineError("no measurement")
    tags: list[tuple[str, str]] = []
    while i < n and s[i] == ",":
        j = _token(s, i + 1, "=, ")
        if j >= n or s[j] != "=" or j == i + 1:
            raise LineError(f"tag {_short(s[i + 1 : j])} is not key=value")
        k = _unescape(s[i + 1 : j], _KEY_ESC)
        e = _token(s, j + 1, "=, ")
        if e == j + 1 or (e < n and s[e] == "="):
            raise LineError(f"tag {_short(s[i + 1 : e])} is not key=value")
        tags.append((k, _unescape(s[j + 1 : e], _KEY_ESC)))
        i = e
    if i >= n:
        raise LineError("no fields (measurement[,tags] fields [timestamp])")
    while i < n and s[i] == " ":
        i += 1
    fields: list[tuple[str, FieldValue]] = []
    while True:
        j = _token(s, i, "=, ")
        if j >= n or s[j] != "=" or j == i:
            raise LineError(f"field {_short(s[i:j])} is not key=value")
        k = _unescape(s[i:j], _KEY_ESC)
        i = j + 1
        if i < n and s[i] == '"':
            e = i + 1
            while e < n:  # the closing quote: the first one not escaped
                c = s[e]
                if c == "\\":
                    e += 2
                    continue
                if c == '"':
                    break
                e += 1
            if e >= n:
                raise LineError(f"field {_short(k)}: string not closed")
            raw = s[i + 1 : e]
            fields.append((k, _unescape(raw, frozenset('"\\')) if "\\" in raw else raw))
            i = e + 1
        else:
            e = i
            while e < n and s[e] != "," and s[e] != " ":
                e += 1
            if e == i:
                raise LineError(f"field {_short(k)} has no value")
            fields.append((k, _value(s[i:e], k)))
            i = e
        if i < n and s[i] == ",":
            i += 1
            continue
        break
    if i >= n:
        return measurement, tags, fields, None
    if s[i] != " ":
        raise LineError(f"field {_short(k)}: unexpected {_short(s[i : i + 10])} after the value")
    rest = s[i:].split()
    if len(rest) > 1:
        raise LineError(f"unexpected {_short(rest[1])} after the timestamp")
    return measurement, tags, fields, _timestamp(rest[0]) if rest else None
