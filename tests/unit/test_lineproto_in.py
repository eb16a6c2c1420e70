"""Line protocol in (gateway/core/normalize/lineproto_in.py) and its mapping to readings
(gateway/core/normalize/http_format.py): syntax, escapes, types, rejects, the durable hook."""

from __future__ import annotations

import time

import pytest

from gateway.config import HttpIngestConfig, ValidationConfig
from gateway.core.lineproto import ReadingLines
from gateway.core.model import (
    DUPLICATE,
    FUTURE_TIMESTAMP,
    INVALID_VALUE,
    MALFORMED,
    MISSING_FIELD,
    OUT_OF_RANGE,
    Completion,
    RawMessage,
    Reading,
    Score,
)
from gateway.core.normalize.http_format import (
    TOPIC_EVENTS,
    TOPIC_FIELDS,
    TOPIC_JSON,
    TOPIC_LINEPROTO,
    HttpNormalizer,
    IngestTicket,
    http_event_subscription,
)
from gateway.core.normalize.lineproto_in import (
    LineError,
    _parse_escaped,
    chunks,
    parse_line,
    split_lines,
)

# ------------------------------------------------------------------ parser


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("m f=1", ("m", [], [("f", 1.0)], None)),
        (
            "m,a=1,b=2 f=1.5,g=-2e3 17",
            ("m", [("a", "1"), ("b", "2")], [("f", 1.5), ("g", -2e3)], 17),
        ),
        ("m i=-7i,u=7u", ("m", [], [("i", -7), ("u", 7)], None)),
        ("m a=t,b=T,c=true,d=True,e=TRUE", ("m", [], [(k, True) for k in "abcde"], None)),
        ("m a=f,b=F,c=false,d=False,e=FALSE", ("m", [], [(k, False) for k in "abcde"], None)),
        ('m s="hello, world = x"', ("m", [], [("s", "hello, world = x")], None)),
        ('m s=""', ("m", [], [("s", "")], None)),
        ('m s="a \\"quoted\\" \\\\ b"', ("m", [], [("s", 'a "quoted" \\ b')], None)),
        ('m s="back\\slash"', ("m", [], [("s", "back\\slash")], None)),
        (
            "my\\ meas\\,x,t\\ k=v\\,1\\=2 f\\=k=1",
            ("my meas,x", [("t k", "v,1=2")], [("f=k", 1.0)], None),
        ),
        ("m\\=x f=1", ("m\\=x", [], [("f", 1.0)], None)),  # '=' needs no escape in a measurement
        ("m,t=a\\b f=1", ("m", [("t", "a\\b")], [("f", 1.0)], None)),  # kept: not escapable
        ('m,t="q" f=1', ("m", [("t", '"q"')], [("f", 1.0)], None)),  # quotes in tags: literal
        ("m f=1 -5", ("m", [], [("f", 1.0)], -5)),
        ("m f=1  17", ("m", [], [("f", 1.0)], 17)),  # extra blanks between sections
        ("m f=1 17 ", ("m", [], [("f", 1.0)], 17)),
        ("m f=1e400", ("m", [], [("f", float("inf"))], None)),  # rejected later: not finite
        ("m f=9223372036854775807i", ("m", [], [("f", (1 << 63) - 1)], None)),
        ("m f=18446744073709551615u", ("m", [], [("f", (1 << 64) - 1)], None)),
        ('m,a=b x="1 2",y=3 9', ("m", [("a", "b")], [("x", "1 2"), ("y", 3.0)], 9)),
    ],
)
def test_parse_line(line: str, expected: tuple[object, ...]) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("m", "no fields"),
        ("m ", "no fields"),
        (",t=1 f=1", "no measurement"),
        ("m,t f=1", "is not key=value"),
        ("m,t= f=1", "is not key=value"),
        ("m,=v f=1", "is not key=value"),
        ("m f", "is not key=value"),
        ("m f=", "is not key=value"),
        ("m =1", "is not key=value"),
        ("m f=abc", "is not a number, boolean or quoted string"),
        ("m f=1_000", "is not a number"),
        ("m f=0x10", "is not a number"),
        ("m f=1.5i", "is not a number"),
        ("m f=-1u", "out of the uint64 range"),
        ("m f=9223372036854775808i", "out of the int64 range"),
        ('m f="open', "string not closed"),
        ("m f=1 abc", "timestamp 'abc' is not an integer"),
        ("m f=1 1.5", "is not an integer"),
        ("m f=1 99999999999999999999", "out of the int64 range"),
        ("m f=1 17 extra", "after the timestamp"),
        ('m f="x"y', "after the value"),
        ("m\\ x f=1 2 3", "after the timestamp"),
        ("m f=1,", "is not key=value"),
    ],
)
def test_parse_line_errors(line: str, why: str) -> None:
    with pytest.raises(LineError, match=why):
        parse_line(line)


def test_fast_path_and_escaped_scan_agree() -> None:
    """Lines without backslashes or quotes take plain splits; the scanner says the same."""
    for line in (
        "m f=1",
        "cpu,host=a,region=eu usage=0.5,n=3i,ok=true 1700000000000000000",
        "m,a=1 x=1u,y=-2.5e-3,z=F -12",
        "m f=1  17",
    ):
        assert parse_line(line) == _parse_escaped(line)
    for bad in ("m", "m f=abc", "m,t f=1", "m f=1 x", "m f=1 2 3"):
        with pytest.raises(LineError):
            parse_line(bad)
        with pytest.raises(LineError):
            _parse_escaped(bad)


def test_our_own_lines_parse_back() -> None:
    """What gateway.core.lineproto writes (escaped tags) reads back to the same names."""
    r = Reading("press 1", "t,c=x", 1.5, 17, "°C", {"line": "l=1", "zone": "a b"})
    body = ReadingLines().build([(r, Score(0.5, []))])
    m, tags, fields, ts = parse_line(body.decode())
    assert m == "readings"
    assert dict(tags) == {
        "equipment": "press 1",
        "sensor": "t,c=x",
        "unit": "°C",
        "line": "l=1",
        "zone": "a b",
        "source": "mqtt",
    }
    assert fields == [("value", 1.5), ("z", 0.5), ("anomaly", False)]
    assert ts == 17


def test_split_lines_comments_blanks_crlf_and_quoted_newlines() -> None:
    body = b'# c\r\n\r\n  m f=1\r\n\t# indented comment\nm s="a\nb\nc",g=2 5\nm f=3\n\n'
    assert split_lines(body) == [(3, b"m f=1"), (5, b'm s="a\nb\nc",g=2 5'), (8, b"m f=3")]
    # an escaped quote does not close the string; a quote in a tag does not open one
    body = b'm s="x\\"\ny" 1\nm,t="z f=1\nm f=2'
    assert split_lines(body) == [(1, b'm s="x\\"\ny" 1'), (3, b'm,t="z f=1'), (4, b"m f=2")]


def test_chunks_cut_at_line_ends_and_count_lines() -> None:
    lines = [f"m,eq=e{i} f={i}".encode() for i in range(1000)]
    body = b"\n".join(lines)
    pieces = chunks(body, 1000)
    assert len(pieces) > 10
    assert all(len(p) <= 1000 for _, p in pieces)
    seen = []
    for first, p in pieces:
        for n, line in split_lines(p):
            seen.append((first + n, line))
    assert seen == [(i + 1, line) for i, line in enumerate(lines)]
    # quoted newlines stay inside their piece; numbering counts physical lines
    body = b'm s="a\nb" 1\n' * 50
    pieces = chunks(body, 40)
    got = [(first + n, line) for first, p in pieces for n, line in split_lines(p)]
    assert got == [(2 * i + 1, b'm s="a\nb" 1') for i in range(50)]
    assert chunks(b"m f=1", 100) == [(0, b"m f=1")]


# ---------------------------------------------------------------- mapping

NOW_NS = time.time_ns()


def normalizer(**kw: object) -> HttpNormalizer:
    return HttpNormalizer(ValidationConfig(), HttpIngestConfig(**kw))  # type: ignore[arg-type]


def lp(
    n: HttpNormalizer, body: str, precision: int = 1, first_line: int = 0
) -> tuple[list[Reading], list[tuple[str, str]], IngestTicket]:
    done: list[str | None] = []
    t = IngestTicket(done.append, precision, first_line)
    msg = RawMessage(TOPIC_LINEPROTO, body.encode(), 1.0, NOW_NS, "http", conn=t)
    out, rej = n.normalize(msg)
    assert t.readings == len(out) and t.rejects == rej
    return out, [(r.reason, r.detail) for r in rej], t


def test_generic_measurement_mapping() -> None:
    n = normalizer()
    ts = NOW_NS - 10**9
    out, rej, _ = lp(
        n,
        f"pump,equipment=P-1,line=L2,unit=bar,site=north pressure=3.5,temp=40i,on=true,"
        f'state="running",value=7u {ts}',
    )
    assert rej == []
    got = {r.sensor: (r.equipment, r.value, r.ts, r.unit, r.tags, r.source) for r in out}
    tags = {"site": "north", "line": "L2"}
    assert got == {
        "pump.pressure": ("P-1", 3.5, ts, "bar", tags, "http"),
        "pump.temp": ("P-1", 40.0, ts, "bar", tags, "http"),
        "pump.on": ("P-1", 1.0, ts, "bar", tags, "http"),
        "pump": ("P-1", 7.0, ts, "bar", tags, "http"),  # field "value": the measurement
    }


def test_sensor_tag_host_fallback_and_dropped_tags() -> None:
    n = normalizer(drop_tags=["dc"], booleans=False)
    out, rej, _ = lp(
        n, "cpu,host=h1,sensor=core0,dc=x,source=telegraf,cpu=cpu0 usage_idle=90,ok=true"
    )
    assert rej == []
    assert [(r.equipment, r.sensor, r.tags) for r in out] == [
        ("h1", "core0.usage_idle", {"cpu": "cpu0"})
    ]
    n = normalizer(equipment_tags=["machine"], sensor_separator="_")
    out, rej, _ = lp(n, "m,machine=M1,host=h f=1")
    assert [(r.equipment, r.sensor, r.tags) for r in out] == [("M1", "m_f", {"host": "h"})]


def test_own_readings_schema() -> None:
    n = normalizer()
    ts = NOW_NS - 5 * 10**9
    line = "readings,equipment=press\\ 1,sensor=temp,line=l1,unit=celsius,source=mqtt"
    out, rej, _ = lp(n, f"{line} value=21.5,z=0.3,anomaly=false {ts}")
    assert rej == []
    assert [(r.equipment, r.sensor, r.value, r.unit, r.tags, r.ts) for r in out] == [
        ("press 1", "temp", 21.5, "celsius", {"line": "l1"}, ts)
    ]
    out, rej, _ = lp(n, "readings,equipment=e value=1")
    assert out == [] and rej == [(MISSING_FIELD, "line 1: no sensor tag (sensor)")]


def test_precision_and_receive_time() -> None:
    n = normalizer()
    s = NOW_NS // 10**9 - 60
    for mult, ts in ((10**9, s), (10**6, s * 1000), (10**3, s * 10**6), (1, s * 10**9)):
        out, rej, _ = lp(normalizer(), f"m,equipment=e f=1 {ts}", precision=mult)
        assert rej == [] and out[0].ts == s * 10**9
    # no timestamp: receive time, unique per series, not de-duplicated
    out, rej, _ = lp(n, "m,equipment=e f=1\nm,equipment=e f=2")
    assert rej == [] and [r.ts for r in out] == [NOW_NS, NOW_NS + 1000]
    out, rej, _ = lp(n, "m,equipment=e f=3")
    assert rej == [] and out[0].ts == NOW_NS + 2000


def test_rejects_name_lines_and_fields() -> None:
    n = normalizer()
    ts = NOW_NS - 10**9
    body = "\n".join(
        [
            "# header",
            f"m,equipment=e f=1 {ts}",  # line 2: fine
            "m,equipment=e f=oops",  # 3: syntax
            "m,other=x f=1",  # 4: no equipment
            "m,equipment=a/b f=1",  # 5: bad name
            f"m,equipment=e f=1 {ts}",  # 6: duplicate of line 2
            f"m,equipment=e g=1e400,h=2 {ts}",  # 7: one bad field, one good
            f"m,equipment=e f=1 {NOW_NS + 3600 * 10**9}",  # 8: future
            "m,equipment=e,unit=\x07 f=1",  # 9: unit with a control char
            "m\xff f=1",  # 10: not UTF-8 (raw byte below)
        ]
    )
    done: list[str | None] = []
    t = IngestTicket(done.append, 1, 100)
    payload = body.encode().replace("\xff".encode(), b"\xff")
    out, rejects = n.normalize(RawMessage(TOPIC_LINEPROTO, payload, 1.0, NOW_NS, "http", conn=t))
    rej = [(r.reason, r.detail) for r in rejects]
    assert [(r.sensor, r.value) for r in out] == [("m.f", 1.0), ("m.h", 2.0)]
    assert rej[0] == (
        MALFORMED,
        "line 103: field 'f': 'oops' is not a number, boolean or quoted string",
    )
    assert rej[1] == (MISSING_FIELD, "line 104: no equipment tag (equipment, host)")
    assert rej[2] == (INVALID_VALUE, "line 105: equipment contains '+', '#' or '/'")
    assert rej[3][0] == DUPLICATE and rej[3][1].startswith("line 106: field 'f': e/m.f at ts")
    assert rej[4] == (INVALID_VALUE, "line 107: field 'g': value is NaN or infinite")
    assert rej[5][0] == FUTURE_TIMESTAMP and rej[5][1].startswith("line 108: field 'f': ts is")
    assert rej[6] == (INVALID_VALUE, "line 109: unit contains control characters")
    assert rej[7] == (MALFORMED, "line 110: not UTF-8")
    assert len(rej) == 8
    assert rejects[1].payload == b"m,other=x f=1" and rejects[1].topic == TOPIC_LINEPROTO


def test_physical_bounds_apply() -> None:
    n = HttpNormalizer(ValidationConfig(), HttpIngestConfig(), bounds=lambda e, s, ln: (0.0, 10.0))
    out, rej, _ = lp(n, "m,equipment=e f=5,g=50")
    assert [r.sensor for r in out] == ["m.f"]
    assert rej == [
        (OUT_OF_RANGE, "line 1: field 'g': value 50 outside physical bounds [0.0, 10.0]")
    ]


def test_json_bodies_as_mqtt_formats() -> None:
    n = normalizer()
    ts = NOW_NS - 10**9
    done: list[str | None] = []
    body = (
        b'[{"equipment": "e1", "sensor": "t", "line": "L", "value": 1.5, "ts": %d},'
        b' {"equipment": "e1", "value": 2}]' % ts
    )
    t = IngestTicket(done.append)
    out, rej = n.normalize(RawMessage(TOPIC_JSON, body, 1.0, NOW_NS, "http", conn=t))
    assert [(r.equipment, r.sensor, r.value, r.line, r.source) for r in out] == [
        ("e1", "t", 1.5, "L", "http")
    ]
    assert [(r.reason, r.detail) for r in rej] == [
        (MISSING_FIELD, "item 1: no sensor in topic or payload")
    ]
    assert t.readings == 1 and len(t.rejects) == 1
    body = b'{"equipment": "e2", "line": "L", "temperature": 71.2, "vibration": 3}'
    out, rej = n.normalize(RawMessage(TOPIC_FIELDS, body, 1.0, NOW_NS, "http"))
    assert rej == [] and sorted(r.sensor for r in out) == ["temperature", "vibration"]


def test_ticket_is_a_completion() -> None:
    got: list[str | None] = []
    t = IngestTicket(got.append)
    assert isinstance(t, Completion)
    t.durable()
    t.failed("disk full")
    assert got == [None, "disk full"]


def test_events_claim_takes_http_events_and_leaves_mqtt_to_its_own() -> None:
    from gateway.config import EventsConfig, Subscription, ValidationConfig
    from gateway.core.events import EventPath

    factory = Subscription(topic="factory/+", template="factory/{line}", format="event")
    path = EventPath([factory], ValidationConfig(), EventsConfig())
    path.also_claim("http", TOPIC_EVENTS, http_event_subscription())
    claim = path.claim
    assert claim(RawMessage(TOPIC_EVENTS, b"", 0.0, 0, "http")) == {}
    assert claim(RawMessage("factory/a", b"", 0.0, 0)) == {"line": "a"}
    assert claim(RawMessage("plant/a/b/c", b"", 0.0, 0)) is None
    assert claim(RawMessage(TOPIC_EVENTS, b"", 0.0, 0, "mqtt")) is None  # not ours
    # without MQTT event subscriptions an MQTT message costs one falsy check
    alone = EventPath([], ValidationConfig(), EventsConfig())
    alone.also_claim("http", TOPIC_EVENTS, http_event_subscription())
    assert alone.claim(RawMessage("factory/a", b"", 0.0, 0)) is None
