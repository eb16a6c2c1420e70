"""Config loading: defaults, TOML, env overrides, one-line errors, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings, dump_settings, load_settings, shard_settings


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_empty_config_runs_against_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_CONFIG", raising=False)
    s = load_settings(None)
    assert (s.mqtt.host, s.mqtt.port) == ("127.0.0.1", 1883)
    assert s.mqtt.subscriptions[0].topic == "plant/+/+/+"
    assert s.mqtt.subscriptions[0].qos == 1
    assert (s.detection.window, s.detection.threshold_sigma, s.detection.warmup) == (100, 3.0, 30)
    assert (s.alerts.offline_after_s, s.alerts.clear_after, s.alerts.escalate_after_s) == (
        30,
        5,
        300,
    )
    assert (s.http.host, s.http.port) == ("127.0.0.1", 9108)
    assert s.validation.max_future_s == 900 and s.validation.max_series == 100_000


def test_example_config_is_valid() -> None:
    s = load_settings(Path(__file__).parents[2] / "deploy" / "edge-gateway.example.toml")
    assert s.rules and s.rules[0].high == 85.0


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _write(tmp_path, '[mqtt]\nport = 1999\nhost = "broker"\n')
    monkeypatch.setenv("EDGE_MQTT__PORT", "1884")
    monkeypatch.setenv("EDGE_INFLUX__TOKEN", "s3cret")
    s = load_settings(p)
    assert s.mqtt.port == 1884  # env wins
    assert s.mqtt.host == "broker"  # file kept where env is silent
    assert s.influx.token.get_secret_value() == "s3cret"


def test_edge_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_CONFIG", str(_write(tmp_path, '[mqtt]\nclient_id = "gw-7"\n')))
    assert load_settings(None).mqtt.client_id == "gw-7"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mqtt]\nport = 0\n", "config: [mqtt] port must be 1-65535, got 0"),
        ("[mqtt]\nprot = 5\n", "config: [mqtt] unknown key 'prot'"),
        (
            '[detection]\nwindow = "x"\n',
            "config: [detection] window must be a whole number, got 'x'",
        ),
        ('[[rules]]\nhigh = "abc"\n', "config: [rules #1] high must be a number, got 'abc'"),
        (
            '[log]\nformat = "xml"\n',
            "config: [log] format must be one of 'text' or 'json', got 'xml'",
        ),
        (
            "[[mqtt.subscriptions]]\nqos = 1\n[[mqtt.subscriptions]]\nqos = 5\n",
            "config: [mqtt.subscriptions #2] qos must be one of 0, 1 or 2, got 5",
        ),
        (
            '[[mqtt.subscriptions]]\ntopic = "plant/+/+"\n',
            "config: [mqtt.subscriptions #1] template 'plant/{line}/{equipment}/{sensor}' "
            "has 4 levels but filter 'plant/+/+' has 3",
        ),
        ("[mqtt\nport=1\n", "is not valid TOML"),
        (
            '[mqtt]\nservers = ["a:1883", "b"]\n',
            "config: [mqtt] servers entries must be \"host:port\" with port 1-65535, got 'b'",
        ),
        (
            '[mqtt]\nservers = ["a:0"]\n',
            "config: [mqtt] servers entries must be \"host:port\" with port 1-65535, got 'a:0'",
        ),
        (
            '[mqtt]\nservers = ["a:1883", "a:1883"]\n',
            "config: [mqtt] servers lists 'a:1883' twice",
        ),
        (
            '[mqtt]\ntopic_forbidden_chars = ". "\nclient_id = "gw.1"\n',
            "config: [mqtt] client_id has '.', listed in topic_forbidden_chars",
        ),
        (
            '[mqtt]\ntopic_forbidden_chars = "."\n[[mqtt.subscriptions]]\n'
            'topic = "a.b/+/+"\ntemplate = "a.b/{equipment}/{sensor}"\n',
            "config: [mqtt] subscription 'a.b/+/+' has '.', listed in topic_forbidden_chars",
        ),
        (
            '[mqtt]\ntopic_forbidden_chars = "./"\n',
            "config: [mqtt] topic_forbidden_chars must not list '+', '#' or '/', got './'",
        ),
    ],
)
def test_errors_are_one_actionable_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(_write(tmp_path, text))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_secret_files_are_read_and_masked(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n")
    p = _write(tmp_path, f'[mqtt]\nusername = "gw"\npassword_file = "{tmp_path / "pw"}"\n')
    s = load_settings(p)
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "hunter2"
    dumped = dump_settings(s)
    assert dumped["mqtt"]["password"] == "**********"
    assert "hunter2" not in repr(dumped) and "hunter2" not in repr(s)


def test_unreadable_secret_file_is_a_config_error(tmp_path: Path) -> None:
    p = _write(tmp_path, f'[influx]\ntoken_file = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match=r"\[influx\] token_file .* cannot be read"):
        load_settings(p)


def test_topic_forbidden_chars_default_to_none(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, "")).mqtt.topic_forbidden_chars == ""
    s = load_settings(_write(tmp_path, '[mqtt]\ntopic_forbidden_chars = ". "\n'))
    assert s.mqtt.topic_forbidden_chars == ". "


def test_mqtt_servers_are_the_nodes_tried_in_order(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, '[mqtt]\nservers = ["n1:1883", "[::1]:1884", "n3:1"]\n'))
    assert s.mqtt.nodes() == [("n1", 1883), ("::1", 1884), ("n3", 1)]
    one = load_settings(_write(tmp_path, '[mqtt]\nhost = "broker"\nport = 1999\n'))
    assert one.mqtt.nodes() == [("broker", 1999)]  # host/port: the single-broker case


def test_shard_derives_its_own_identity_and_subscriptions(tmp_path: Path) -> None:
    base = load_settings(
        _write(
            tmp_path,
            '[mqtt]\nclient_id = "gw"\n[spool]\ndir = "/var/lib/gw"\n[http]\nport = 9200\n'
            + "".join(f'[[mqtt.subscriptions]]\ntopic = "plant/l{i}/+/+"\n' for i in range(3)),
        )
    )
    s0, s1 = shard_settings(base, "0/2"), shard_settings(base, "1/2")
    assert [x.topic for x in s0.mqtt.subscriptions] == ["plant/l0/+/+", "plant/l2/+/+"]
    assert [x.topic for x in s1.mqtt.subscriptions] == ["plant/l1/+/+"]
    assert (s0.mqtt.client_id, s1.mqtt.client_id) == ("gw-shard0", "gw-shard1")
    assert (s0.spool.dir, s1.spool.dir) == ("/var/lib/gw/shard-0", "/var/lib/gw/shard-1")
    assert (s0.http.port, s1.http.port) == (9200, 9201)
    assert base.mqtt.client_id == "gw" and len(base.mqtt.subscriptions) == 3  # untouched


def test_shard_filters_that_overlap_across_shards_are_a_config_error(tmp_path: Path) -> None:
    subs = '[[mqtt.subscriptions]]\ntopic = "plant/+/+/+"\n'
    subs += '[[mqtt.subscriptions]]\ntopic = "plant/line-b/+/#"\n'
    with pytest.raises(ConfigError) as e:
        shard_settings(load_settings(_write(tmp_path, subs)), "0/2")
    assert str(e.value) == (
        "config: --shard 0/2: [[mqtt.subscriptions]] 'plant/+/+/+' (shard 0) and "
        "'plant/line-b/+/#' (shard 1) overlap: a topic matching both would be stored by both shards"
    )
    same = subs.replace('#"\n', '#"\nshard = 0\n')  # one shard may hold both
    assert len(shard_settings(load_settings(_write(tmp_path, same)), "0/2").mqtt.subscriptions) == 2


def test_a_subscription_names_its_shard_to_move_a_line_with_one_edit(tmp_path: Path) -> None:
    subs = "".join(f'[[mqtt.subscriptions]]\ntopic = "plant/l{i}/+/+"\n' for i in range(3))
    base = load_settings(_write(tmp_path, subs + "shard = 1\n"))  # l2 moves to shard 1
    s0, s1 = shard_settings(base, "0/2"), shard_settings(base, "1/2")
    assert [x.topic for x in s0.mqtt.subscriptions] == ["plant/l0/+/+"]
    assert [x.topic for x in s1.mqtt.subscriptions] == ["plant/l1/+/+", "plant/l2/+/+"]
    with pytest.raises(ConfigError) as e:
        shard_settings(load_settings(_write(tmp_path, subs + "shard = 3\n")), "0/2")
    assert str(e.value) == (
        "config: [[mqtt.subscriptions]] entry 2 ('plant/l2/+/+') has shard = 3, "
        "but --shard 0/2 runs 2 shards (0-1)"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("2/2", "config: --shard must be K/N with 0 <= K < N, got '2/2'"),
        ("x", "config: --shard must be K/N with 0 <= K < N, got 'x'"),
        ("1/2", "config: --shard 1/2 has no [[mqtt.subscriptions]] of its own"),
    ],
)
def test_shard_errors_are_one_line(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        shard_settings(load_settings(_write(tmp_path, "")), spec)
    assert message in str(e.value)


def test_publish_pacing_comes_from_the_config() -> None:
    from adapters.mqtt import MqttLink
    from gateway.daemon.pipeline import Gateway

    s = Settings.model_validate({"mqtt": {"publish_rate_per_s": 0, "publish_burst": 50}})
    gw = Gateway(s, link=MqttLink(s.mqtt))
    assert (gw.publisher.pace, gw.publisher.burst) == (None, 50)  # 0: unpaced
    d = Settings()
    gw = Gateway(d, link=MqttLink(d.mqtt))
    assert (gw.publisher.pace, gw.publisher.burst) == (20_000.0, 2_000)
