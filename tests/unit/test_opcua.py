"""OPC UA data changes -> raw messages -> readings, without a server.

The adapter's encoding (values, quality, timestamps, names) and the pipeline's
dispatch of ``source="opcua"`` messages to their own normalizer.
"""

# asyncua annotates StatusCode/DataValue fields with its own int aliases.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import orjson
import pytest
from asyncua import ua

from adapters.opcua.encoding import Item, encode, map_browse_path, ts_ns
from adapters.opcua.errors import OpcuaFailure, classify
from gateway.config import ConfigError, Settings, load_settings
from gateway.core.model import RawMessage

T = dt.datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=dt.UTC)
T_NS = 1_795_341_600_123_456_000
NODE = ua.NodeId("x", 2)


def dv(value: object, vtype: ua.VariantType | None = None, **kw: object) -> ua.DataValue:
    variant = ua.Variant(value, vtype) if vtype is not None else ua.Variant(value)
    return ua.DataValue(variant, **kw)


def payload(item: Item, value: ua.DataValue) -> dict[str, object]:
    out: dict[str, object] = orjson.loads(encode(item, value))
    return out


def test_item_topic_and_payload_extras() -> None:
    it = Item(NODE, "press-1", "temperature", "line-1", "celsius").finish()
    assert it.topic == "opcua/line-1/press-1/temperature"
    assert payload(it, dv(71.5, SourceTimestamp=T)) == {
        "value": 71.5,
        "ts": T_NS,
        "unit": "celsius",
    }
    # No line: a placeholder level, and the payload clears the tag again.
    no_line = Item(NODE, "press-1", "temperature").finish()
    assert no_line.topic == "opcua/-/press-1/temperature"
    assert payload(no_line, dv(1.0))["line"] == ""
    # A name a topic level cannot carry travels in the payload (and gets rejected there).
    odd = Item(NODE, "press/1", "temperature").finish()
    assert odd.topic == "opcua/-/-/temperature"
    assert payload(odd, dv(1.0))["equipment"] == "press/1"


@pytest.mark.parametrize(
    ("value", "vtype", "expected"),
    [
        (3, ua.VariantType.Int32, 3),
        (2.5, ua.VariantType.Float, 2.5),
        (True, ua.VariantType.Boolean, 1.0),
        (False, ua.VariantType.Boolean, 0.0),
        ("1.4.2", ua.VariantType.String, "1.4.2"),
        (float("nan"), ua.VariantType.Double, "nan"),
        (float("inf"), ua.VariantType.Double, "inf"),
        (None, None, None),
        (b"\x00\x01", ua.VariantType.ByteString, "<bytes>"),
        ([1.0, 2.0], ua.VariantType.Double, "<list>"),
    ],
)
def test_value_conversion(value: object, vtype: ua.VariantType | None, expected: object) -> None:
    it = Item(NODE, "e", "s", "l").finish()
    assert payload(it, dv(value, vtype))["value"] == expected


def test_bad_status_becomes_a_quality_and_timestamps_fall_back() -> None:
    it = Item(NODE, "e", "s", "l").finish()
    bad = dv(None, StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure), ServerTimestamp=T)
    assert payload(it, bad) == {"quality": "BadSensorFailure", "ts": T_NS}
    uncertain = dv(5.0, StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue))
    assert payload(it, uncertain) == {"value": 5.0}  # accepted, receive time
    both = dv(5.0, SourceTimestamp=T, ServerTimestamp=T + dt.timedelta(seconds=1))
    assert payload(it, both)["ts"] == T_NS
    assert ts_ns(dt.datetime(1601, 1, 1, tzinfo=dt.UTC)) == 0  # "no time" on the wire


def test_browse_path_mapping() -> None:
    assert map_browse_path(("A", "line-1", "dev", "t"), "Plant", "") == ("line-1", "dev", "t")
    assert map_browse_path(("dev", "t"), "Plant", "L") == ("L", "dev", "t")
    assert map_browse_path(("t",), "dev", "L") == ("L", "dev", "t")


def test_failures_are_classified() -> None:
    assert classify(ua.uaerrors.BadCertificateUntrusted()).kind == "certificate"
    assert classify(ua.uaerrors.BadUserAccessDenied()).kind == "login"
    assert classify(ConnectionRefusedError()).kind == "connect"
    assert classify(TimeoutError()).kind == "timeout"
    assert classify(ua.UaError("No matching endpoints: 1, x")).kind == "security"
    f = OpcuaFailure("watchdog", "late")
    assert classify(f) is f


def test_config_checks(tmp_path: Path) -> None:
    def load(body: str) -> Settings:
        p = tmp_path / "c.toml"
        p.write_text(body)
        return load_settings(p)

    ok = load('[[opcua.servers]]\nendpoint = "opc.tcp://h:4840"\nbrowse_root = "Objects/Plant"\n')
    assert ok.opcua.servers[0].watchdog_interval_s == 2.0
    for body, words in [
        ('endpoint = "opc.tcp://h:4840"\n', "needs [[opcua.servers.nodes]] or browse_root"),
        ('endpoint = "http://h"\nbrowse_root = "P"\n', "must start with opc.tcp://"),
        (
            'endpoint = "opc.tcp://h"\nbrowse_root = "P"\nsecurity_policy = "Basic256Sha256"\n',
            "must both be None or both be set",
        ),
        (
            'endpoint = "opc.tcp://h"\nbrowse_root = "P"\nsecurity_policy = "Basic256Sha256"\n'
            'security_mode = "Sign"\n',
            "needs certificate and private_key",
        ),
    ]:
        with pytest.raises(ConfigError, match=r"\[opcua\.servers") as e:
            load("[[opcua.servers]]\n" + body)
        assert words in str(e.value)


def test_pipeline_normalizes_opcua_messages_with_shared_series(tmp_path: Path) -> None:
    from gateway.app import build

    s = Settings.model_validate(
        {
            "influx": {"enabled": False},
            "spool": {"dir": str(tmp_path)},
            "http": {"enabled": False},
        }
    )
    gw = build(s)
    now_ns = time.time_ns()
    it = Item(NODE, "press-1", "temperature", "", "celsius").finish()
    bad = Item(NODE, "press-1", "pressure", "line-1").finish()

    def raw(item: Item, value: ua.DataValue, source: str = "opcua") -> RawMessage:
        return RawMessage(item.topic, encode(item, value), time.monotonic(), now_ns, source)

    ts = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    batch = [
        raw(it, dv(70.0, SourceTimestamp=ts)),
        raw(it, dv(70.0, SourceTimestamp=ts)),  # a re-sent initial value: duplicate
        raw(bad, dv(None, StatusCode=ua.StatusCode(ua.StatusCodes.BadCommunicationError))),
        raw(bad, dv("n/a", ua.VariantType.String)),
    ]
    out, _ = gw.process(batch)
    assert [(r.equipment, r.sensor, r.value, r.unit, r.tags, r.source) for r, _ in out] == [
        ("press-1", "temperature", 70.0, "celsius", {}, "opcua")
    ]
    assert out[0][0].ts == ts_ns(ts)
    m = gw.metrics
    assert m.readings_received.labels("opcua")._value.get() == 1
    assert m.readings_received.labels("mqtt")._value.get() == 0
    for reason in ("duplicate", "bad_quality", "invalid_value"):
        assert m.readings_rejected.labels(reason)._value.get() == 1, reason
    # One series registry for both sources: MQTT sees the OPC UA series as known.
    assert ("press-1", "temperature") in gw.normalizer.series
