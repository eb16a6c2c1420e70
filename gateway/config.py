"""Configuration: a TOML file plus `EDGE_...` environment overrides (SPEC §3).

`load_settings(path)` is the one entry point. It returns a validated
`Settings` or raises `ConfigError` whose message is a single line a user can
act on, e.g. ``config: [mqtt] port must be 1-65535, got 0``.

Why one module of ~470 lines: it is the one place a user (or reviewer) reads every
key, its default and its validation; the models are small and flat.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.core.topics import TopicTemplate, TopicTemplateError, filters_overlap


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _port(v: int) -> int:
    if not 1 <= v <= 65535:
        raise ValueError(f"must be 1-65535, got {v}")
    return v


def _read_secret(value: SecretStr | None, path: str | None, key: str) -> SecretStr | None:
    """`key_file` wins over `key`: the file's content, trailing newline stripped."""
    if not path:
        return value
    try:
        return SecretStr(Path(path).read_text(encoding="utf-8").rstrip("\r\n"))
    except OSError as e:
        raise ValueError(f"{key}_file {path!r} cannot be read: {e.strerror}") from None


class Subscription(_Section):
    topic: str = "plant/+/+/+"
    template: str = "plant/{line}/{equipment}/{sensor}"
    format: Literal["json", "fields", "event", "sparkplug"] = "json"
    qos: Literal[0, 1, 2] = 1
    unit: str = ""  # default unit for readings that carry none
    # `--shard K/N`: the shard that owns this entry; unset = entry index mod N
    # (docs/scale-out.md: moving a line is changing this one number)
    shard: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check_template(self) -> Subscription:
        if self.format == "sparkplug":  # the topic levels are Sparkplug's own (README)
            if not self.topic.split("/")[0] == "spBv1.0":
                raise ValueError(f"format sparkplug needs a spBv1.0/... topic, got {self.topic!r}")
            self.template = ""
        try:
            TopicTemplate(self.topic, self.template)
        except TopicTemplateError as e:
            raise ValueError(str(e)) from None
        return self

    def compiled(self) -> TopicTemplate:
        return TopicTemplate(self.topic, self.template)


def _server(entry: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') -> (host, port); ValueError worded for the user."""
    host, sep, port = entry.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f'entries must be "host:port" with port 1-65535, got {entry!r}')
    return host, int(port)


class MqttConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 1883
    # The nodes of one broker cluster, tried in order (docs/scale-out.md); when set,
    # host/port are not used. TLS and credentials apply to every node.
    servers: list[str] = Field(default_factory=list)
    client_id: str = "edge-gateway-1"
    username: str | None = None
    password: SecretStr | None = None
    password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    keepalive: int = Field(default=30, ge=5, le=65535)
    clean_session: bool = False
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # a node that accepts TCP but does not answer CONNECT/SUBSCRIBE (a cluster node
    # electing a new session-store leader) is given up on after this long
    connect_timeout_s: float = Field(default=10.0, gt=0)
    deadletter_per_s: float = Field(default=10.0, ge=0)
    # outbound: past a burst, status/offline/cleared/dead letters go at most this fast,
    # so a storm never queues in the broker ahead of a fresh critical alert (0: unpaced)
    publish_rate_per_s: float = Field(default=20_000.0, ge=0)
    publish_burst: int = Field(default=2_000, ge=1)
    subscriptions: list[Subscription] = Field(default_factory=lambda: [Subscription()])
    # characters the broker cannot carry in a topic (NATS 2.9 closes the connection on
    # '.' and ' ', RabbitMQ turns '.' into '/'): a publish whose topic has one is counted
    # in edge_publish_failed_total instead of sent (docs/brokers.md)
    topic_forbidden_chars: str = ""

    _port = field_validator("port")(_port)

    @model_validator(mode="after")
    def _forbidden_chars(self) -> MqttConfig:
        bad = self.topic_forbidden_chars
        if not bad:
            return self
        if any(c in bad for c in "+#/"):
            raise ValueError(f"topic_forbidden_chars must not list '+', '#' or '/', got {bad!r}")
        named = [("client_id", self.client_id)]
        named += [(f"subscription {s.topic!r}", s.topic) for s in self.subscriptions]
        for what, text in named:
            hit = next((c for c in text if c in bad), None)
            if hit is not None:
                raise ValueError(f"{what} has {hit!r}, listed in topic_forbidden_chars")
        return self

    @field_validator("servers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        seen: set[tuple[str, int]] = set()
        for entry in v:
            node = _server(entry)
            if node in seen:
                raise ValueError(f"lists {entry!r} twice")
            seen.add(node)
        return v

    def nodes(self) -> list[tuple[str, int]]:
        """The broker nodes to try, in order: `servers`, else `host`:`port`."""
        return [_server(e) for e in self.servers] or [(self.host, self.port)]

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        if not v or any(c in v for c in "+#/"):
            raise ValueError(f"must be non-empty without '+', '#' or '/', got {v!r}")
        return v

    @model_validator(mode="after")
    def _secrets(self) -> MqttConfig:
        self.password = _read_secret(self.password, self.password_file, "password")
        return self


class OpcuaNode(_Section):
    node_id: str
    equipment: str
    sensor: str
    line: str = ""
    unit: str = ""


class OpcuaServer(_Section):
    endpoint: str
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: str | None = None
    private_key: str | None = None
    server_certificate: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: str | None = None
    publishing_interval_ms: int = Field(default=500, ge=10)
    sampling_interval_ms: int = Field(default=0, ge=0)
    queue_size: int = Field(default=10, ge=1)
    deadband_type: Literal["none", "absolute", "percent"] = "none"
    deadband_value: float = Field(default=0.0, ge=0)
    browse_root: str | None = None
    browse_max_depth: int = Field(default=10, ge=1, le=100)
    line: str = ""
    nodes: list[OpcuaNode] = Field(default_factory=list)
    # Liveness and reconnect (adapters/opcua/README.md): every request has a timeout;
    # the watchdog reads ServerStatus/CurrentTime every watchdog_interval_s.
    request_timeout_s: float = Field(default=5.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    watchdog_interval_s: float = Field(default=2.0, gt=0)
    watchdog_timeout_s: float = Field(default=2.0, gt=0)
    keepalive_s: float = Field(default=5.0, gt=0)
    session_timeout_s: float = Field(default=30.0, ge=5)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=5.0, gt=0)
    max_items_per_request: int = Field(default=500, ge=1)

    @model_validator(mode="after")
    def _secrets(self) -> OpcuaServer:
        self.password = _read_secret(self.password, self.password_file, "password")
        if not self.endpoint.startswith("opc.tcp://"):
            raise ValueError(f"endpoint must start with opc.tcp://, got {self.endpoint!r}")
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError(
                "security_policy and security_mode must both be None or both be set, got "
                f"{self.security_policy!r} / {self.security_mode!r}"
            )
        if self.security_policy != "None" and not (self.certificate and self.private_key):
            raise ValueError(
                f"security_policy {self.security_policy} needs certificate and private_key"
            )
        if not self.nodes and not self.browse_root:
            raise ValueError(f"server {self.endpoint} needs [[opcua.servers.nodes]] or browse_root")
        return self


class OpcuaConfig(_Section):
    servers: list[OpcuaServer] = Field(default_factory=list)


class DriftConfig(_Section):
    """Lasting level shifts per series (river's ADWIN): README "Detection"."""

    enabled: bool = True
    delta: float = Field(default=0.002, gt=0, lt=1)  # ADWIN's confidence (river's default)
    clock: int = Field(default=32, ge=1)  # readings between ADWIN's checks (river's default)
    # a detected change counts only if the level moved by at least this many baseline stds
    gate_sigma: float = Field(default=1.0, ge=0)


class EquipmentDetectionConfig(_Section):
    """One alert per equipment episode from all its sensors: README "Detection"."""

    enabled: bool = True
    warmup: int = Field(default=300, ge=2)  # readings per sensor before it is scored
    baseline_s: float = Field(default=1200.0, gt=0)  # time constant of the slow reference
    fast_s: float = Field(default=10.0, gt=0)  # time constant of the smoothed level
    on_sigma: float = Field(default=3.0, gt=0)
    off_sigma: float = Field(default=2.0, ge=0)
    on_delay_s: float = Field(default=5.0, ge=0)
    off_delay_s: float = Field(default=30.0, ge=0)
    # an episode with no new change for this long: the level is accepted as normal
    accept_s: float = Field(default=900.0, ge=0)
    # z-score alerts of the equipment's sensors are part of its active episode
    suppress_zscore: bool = True

    @model_validator(mode="after")
    def _levels(self) -> EquipmentDetectionConfig:
        if self.off_sigma > self.on_sigma:
            raise ValueError(
                f"off_sigma must be <= on_sigma ({self.on_sigma}), got {self.off_sigma}"
            )
        return self


class DetectionConfig(_Section):
    window: int = Field(default=100, ge=2, le=100_000)
    threshold_sigma: float = Field(default=3.0, gt=0)
    warmup: int = Field(default=30, ge=2)
    # |z| bands: [threshold, medium) low, [medium, critical) medium, >= critical critical.
    medium_sigma: float = Field(default=4.0, gt=0)
    critical_sigma: float = Field(default=5.0, gt=0)
    # A low/medium z-score alert is raised once this many consecutive readings were
    # beyond threshold_sigma (1: at once); a critical one always at once.
    zscore_alert_after: int = Field(default=5, ge=1)
    # an active z-score alert's readings count as normal below threshold - deadband
    zscore_deadband: float = Field(default=0.5, ge=0)
    # a low/medium z-score alert also needs the sensor this many stds away from its slow
    # reference (the equipment detector's), once that is warm; 0: not needed
    zscore_confirm_sigma: float = Field(default=2.0, ge=0)
    # 0: off (the drift detector restarts the baseline on a lasting shift). N: after N
    # consecutive anomalous readings on one side the baseline restarts (the old rule).
    shift_after: int = Field(default=0, ge=0)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    equipment: EquipmentDetectionConfig = Field(default_factory=EquipmentDetectionConfig)

    @model_validator(mode="after")
    def _bands(self) -> DetectionConfig:
        if not self.threshold_sigma <= self.medium_sigma <= self.critical_sigma:
            raise ValueError(
                "threshold_sigma <= medium_sigma <= critical_sigma must hold, got "
                f"{self.threshold_sigma}, {self.medium_sigma}, {self.critical_sigma}"
            )
        if self.warmup > self.window:
            raise ValueError(f"warmup must be <= window ({self.window}), got {self.warmup}")
        if self.zscore_deadband >= self.threshold_sigma:
            raise ValueError(
                f"zscore_deadband must be < threshold_sigma ({self.threshold_sigma}), "
                f"got {self.zscore_deadband}"
            )
        return self


class Rule(_Section):
    """Threshold rule: globs select series; every limit is optional."""

    equipment: str = "*"
    sensor: str = "*"
    line: str = "*"
    high: float | None = None
    low: float | None = None
    critical_high: float | None = None
    critical_low: float | None = None
    min: float | None = None  # physical bounds: outside is a reject (out_of_range)
    max: float | None = None
    max_slope_per_min: float | None = Field(default=None, gt=0)
    # alarm management (ISA-18.2): hysteresis and delays on the readings' clock
    deadband: float | None = Field(default=None, ge=0)  # absolute units; None = 1 % of span
    on_delay_s: float | None = Field(default=None, ge=0)  # None: 0, or an earlier rule's
    off_delay_s: float | None = Field(default=None, ge=0)
    # priority apart from severity (None: follows severity) and rationalisation
    priority: Literal["low", "medium", "high", "critical"] | None = None
    cause: str | None = None
    consequence: str | None = None
    action: str | None = None
    response_time_s: float | None = Field(default=None, gt=0)


class AlertsConfig(_Section):
    topic_prefix: str = "alerts"
    status_prefix: str = "status"
    offline_after_s: float = Field(default=30.0, gt=0)
    clear_after: int = Field(default=5, ge=1)
    escalate_after_s: float = Field(default=300.0, gt=0)
    # an equipment silent this long is forgotten: offline alert cleared, retained topics
    # removed; 0: never
    forget_after_s: float = Field(default=30 * 24 * 3600.0, ge=0)
    # alarm management (ISA-18.2 / EEMUA 191), docs/alarms.md
    ack_required: list[Literal["low", "medium", "high", "critical"]] = ["high", "critical"]
    max_shelve_s: float = Field(default=8 * 3600.0, gt=0)
    chatter_count: int = Field(default=3, ge=2)
    chatter_window_s: float = Field(default=60.0, gt=0)
    chatter_quiet_s: float = Field(default=600.0, gt=0)
    fleeting_s: float = Field(default=5.0, ge=0)
    flood_raises: int = Field(default=10, ge=1)  # more than this in flood_window_s: flood
    flood_end_raises: int = Field(default=5, ge=1)  # fewer than this: the flood ends
    flood_window_s: float = Field(default=600.0, gt=0)
    flood_refresh_s: float = Field(default=30.0, gt=0)
    stale_after_s: float = Field(default=24 * 3600.0, gt=0)


class ValidationConfig(_Section):
    max_future_s: float = Field(default=900.0, ge=0)
    max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    max_series: int = Field(default=100_000, ge=1)
    max_payload_bytes: int = Field(default=1_048_576, ge=64)
    max_batch_items: int = Field(default=10_000, ge=1)
    dedup_window: int = Field(default=200_000, ge=0)
    # a series with no reading for this long is forgotten (state, caches); 0: never
    series_idle_s: float = Field(default=7 * 24 * 3600.0, ge=0)


class InfluxConfig(_Section):
    enabled: bool = True
    url: str = "http://127.0.0.1:8086"
    api: Literal["v2", "v1"] = "v2"
    token: SecretStr = SecretStr("")
    token_file: str | None = None
    org: str = "plant"
    bucket: str = "factory"
    database: str = "factory"
    retention_policy: str = ""
    username: str | None = None
    password: SecretStr | None = None
    batch_size: int = Field(default=5000, ge=1)
    flush_interval_ms: int = Field(default=1000, ge=1)
    timeout_ms: int = Field(default=10_000, ge=100)
    retry_min_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _secrets(self) -> InfluxConfig:
        self.token = _read_secret(self.token, self.token_file, "token") or SecretStr("")
        return self


def default_spool_dir() -> str:
    """/var/lib/edge-gateway where we may write it (root, systemd StateDirectory),
    else the user's state dir, so an empty config also runs unprivileged."""
    system = "/var/lib/edge-gateway"
    if os.access(system, os.W_OK) or os.access("/var/lib", os.W_OK):
        return system
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "edge-gateway")


class SpoolConfig(_Section):
    dir: str = Field(default_factory=default_spool_dir)
    max_bytes: int = Field(default=1 << 30, ge=1 << 16)
    snapshot_interval_s: float = Field(default=60.0, gt=0)


class HttpConfig(_Section):
    """The HTTP server: metrics, probes, the status API and the operator page (README
    "Operator page and HTTP API")."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108
    # Bearer token of the write endpoints (ack, shelve, unshelve, ingest), and of every
    # /api read when `host` is not a loopback address (then it is required); never logged
    api_token: SecretStr = SecretStr("")
    api_token_file: str | None = None
    # recent readings kept in memory per series for the page's charts (0: none)
    series_points: int = Field(default=60, ge=0, le=10_000)
    max_stream_clients: int = Field(default=32, ge=1, le=10_000)

    _port = field_validator("port")(_port)

    @model_validator(mode="after")
    def _secrets(self) -> HttpConfig:
        token = _read_secret(self.api_token, self.api_token_file, "api_token")
        self.api_token = token or SecretStr("")
        return self


class HistoryConfig(_Section):
    """Alert transitions in SQLite under the spool directory (README "Alert history")."""

    enabled: bool = True
    retention_days: float = Field(default=30.0, gt=0)
    max_rows: int = Field(default=1_000_000, ge=100)
    flush_interval_s: float = Field(default=0.25, gt=0, le=60)
    prune_interval_s: float = Field(default=60.0, gt=0)


class HttpIngestConfig(_Section):
    """HTTP ingest on the `[http]` port: InfluxDB write API, JSON, events (README "HTTP ingest")."""

    enabled: bool = False
    token: SecretStr = SecretStr("")
    token_file: str | None = None
    # line protocol bodies (decompressed); JSON bodies are bounded by [validation]
    # max_payload_bytes
    max_body_bytes: int = Field(default=16 << 20, ge=1024)
    # bodies admitted but not yet durable, all requests together: past it, 429
    max_inflight_bytes: int = Field(default=64 << 20, ge=1024)
    timeout_s: float = Field(default=10.0, gt=0)  # admitted -> durable, else 503
    retry_after_s: int = Field(default=1, ge=1)  # the Retry-After of 429 / 503
    # line protocol -> readings: see README "HTTP ingest"
    readings_measurement: str = "readings"  # our own schema: equipment/sensor tags, field value
    equipment_tags: list[str] = Field(default_factory=lambda: ["equipment", "host"])
    sensor_tag: str = "sensor"
    line_tag: str = "line"
    unit_tag: str = "unit"
    value_field: str = "value"
    sensor_separator: str = "."
    drop_tags: list[str] = Field(default_factory=list)
    booleans: bool = True  # boolean fields become 1.0 / 0.0 readings (false: skipped)

    @model_validator(mode="after")
    def _secrets(self) -> HttpIngestConfig:
        self.token = _read_secret(self.token, self.token_file, "token") or SecretStr("")
        if self.enabled and not self.token.get_secret_value():
            raise ValueError("token (or token_file) is required when enabled")
        if not self.equipment_tags or not all(self.equipment_tags):
            raise ValueError(
                f"equipment_tags must name at least one tag, got {self.equipment_tags!r}"
            )
        if not self.sensor_separator:
            raise ValueError("sensor_separator must not be empty")
        return self


class SparkplugConfig(_Section):
    """The Sparkplug B host application (README "Sparkplug B")."""

    # primary host id: STATE on spBv1.0/STATE/{host_id} (Will offline, online once up);
    # "": no STATE (edge nodes not configured for a primary host publish anyway)
    host_id: str = ""
    reorder_timeout_s: float = Field(default=2.0, gt=0)  # a seq gap waits this long
    rebirth_cooldown_s: float = Field(default=10.0, gt=0)  # at most one request per node
    max_nodes: int = Field(default=10_000, ge=1)  # edge nodes tracked at once

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, v: str) -> str:
        if any(c in v for c in "+#/") or v != v.strip():
            raise ValueError(f"must not contain '+', '#', '/' or surrounding spaces, got {v!r}")
        return v


class LogConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class PipelineConfig(_Section):
    queue_size: int = Field(default=10_000, ge=1)
    batch_max: int = Field(default=2_000, ge=1)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)


class EventsConfig(_Section):
    """Production events (SPEC §4 "Production events")."""

    dedup_window: int = Field(default=100_000, ge=1)  # event ids remembered (and in stats)
    warning_rate_per_h: float = Field(default=2.0, gt=0)  # defects/h: status warning, alert
    rate_window_s: float = Field(default=3600.0, gt=0)  # trailing window of the alert
    default_factory: str = ""  # factory_id when neither payload nor topic names one


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    opcua: OpcuaConfig = Field(default_factory=OpcuaConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    rules: list[Rule] = Field(default_factory=list)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    influx: InfluxConfig = Field(default_factory=InfluxConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    http_ingest: HttpIngestConfig = Field(default_factory=HttpIngestConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    sparkplug: SparkplugConfig = Field(default_factory=SparkplugConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)


def _where(loc: tuple[int | str, ...]) -> str:
    """('mqtt', 'subscriptions', 0, 'qos') -> '[mqtt.subscriptions #1] qos'."""
    names = [str(p) for p in loc if not isinstance(p, int)]
    idx = [p for p in loc if isinstance(p, int)]
    if not names:
        return "[config]"
    # an error about a list item as a whole, or a whole section
    if (loc and isinstance(loc[-1], int)) or len(names) == 1:
        section, key = names, ""
    else:
        section, key = names[:-1], names[-1]
    tag = "[" + ".".join(section) + (f" #{idx[-1] + 1}" if idx else "") + "]"
    return f"{tag} {key}".rstrip()


_PLAIN = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list (an array of tables [[...]])",
    "model_type": "must be a table [...]",
    "model_attributes_type": "must be a table [...]",
    "dict_type": "must be a table [...]",
}


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(err.get("loc", ()))
    typ = str(err.get("type", ""))
    got = err.get("input")
    ctx = err.get("ctx") or {}
    if typ == "extra_forbidden":
        return f"{_where(loc[:-1])} unknown key {loc[-1]!r}" if loc else "unknown key"
    if typ == "missing":
        return f"{_where(loc)} is required"
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):  # our own validators say what they got
        return f"{_where(loc)} {msg[len('Value error, ') :]}"
    if typ in _PLAIN:
        msg = _PLAIN[typ]
    elif typ == "literal_error":
        msg = f"must be one of {ctx.get('expected', '')}"
    elif typ in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[typ]
        limit = next(iter(ctx.values()), "")
        msg = f"must be {op} {limit}"
    else:
        msg = msg[0].lower() + msg[1:] if msg else msg
    return f"{_where(loc)} {msg}, got {got!r}"


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read `path` (or $EDGE_CONFIG, or nothing) and the environment."""
    if path is None:
        path = os.environ.get("EDGE_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config: file {os.fspath(path)!r} not found") from None
        except OSError as e:
            raise ConfigError(f"config: cannot read {os.fspath(path)!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config: {os.fspath(path)!r} is not valid TOML: {e}") from None
    try:
        return Settings(**data)
    except ValidationError as e:
        errors = e.errors()
        first = _describe(dict(errors[0]))
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"config: {first}{more}") from None


def shard_settings(settings: Settings, spec: str) -> Settings:
    """`edge-gateway run --shard K/N`: shard K (0-based) of N, from one base config.

    A shard gets client id ``{client_id}-shard{K}``, spool (and so state and history)
    directory ``{dir}/shard-{K}``, HTTP port ``port + K``, and of the lists that name
    inputs only its own part: ``[[mqtt.subscriptions]]`` and ``[[opcua.servers]]``
    entry ``i`` (0-based) belongs to shard ``i mod N``, or to the subscription's own
    ``shard`` key when set. So list one subscription per line (``plant/line-a/+/+``,
    ...) and every series has exactly one owner (docs/scale-out.md). Raises
    `ConfigError` for a bad spec, a ``shard`` key >= N, or a shard left with no
    subscription.
    """
    k_s, sep, n_s = spec.partition("/")
    if not (sep and k_s.isdigit() and n_s.isdigit() and int(k_s) < int(n_s)):
        raise ConfigError(f"config: --shard must be K/N with 0 <= K < N, got {spec!r}")
    k, n = int(k_s), int(n_s)
    mqtt, http = settings.mqtt, settings.http
    for i, x in enumerate(mqtt.subscriptions):
        if x.shard is not None and x.shard >= n:
            raise ConfigError(
                f"config: [[mqtt.subscriptions]] entry {i} ({x.topic!r}) has shard = {x.shard}, "
                f"but --shard {spec} runs {n} shards (0-{n - 1})"
            )
    owner = [i % n if x.shard is None else x.shard for i, x in enumerate(mqtt.subscriptions)]
    subs = [x for x, o in zip(mqtt.subscriptions, owner, strict=True) if o == k]
    for i, x in enumerate(mqtt.subscriptions):  # every topic must have one owner
        for j in range(i + 1, len(mqtt.subscriptions)):
            y = mqtt.subscriptions[j]
            if owner[i] != owner[j] and filters_overlap(x.topic, y.topic):
                raise ConfigError(
                    f"config: --shard {spec}: [[mqtt.subscriptions]] {x.topic!r} (shard "
                    f"{owner[i]}) and {y.topic!r} (shard {owner[j]}) overlap: a topic "
                    "matching both would be stored by both shards"
                )
    if not subs:
        raise ConfigError(
            f"config: --shard {spec} has no [[mqtt.subscriptions]] of its own "
            f"({len(mqtt.subscriptions)} listed; entry i belongs to shard i mod {n} "
            "unless it sets shard = K)"
        )
    if http.port + k > 65535:
        raise ConfigError(f"config: --shard {spec}: [http] port {http.port} + {k} > 65535")
    opcua = [x for i, x in enumerate(settings.opcua.servers) if i % n == k]
    return settings.model_copy(
        update={
            "mqtt": mqtt.model_copy(
                update={"client_id": f"{mqtt.client_id}-shard{k}", "subscriptions": subs}
            ),
            "opcua": settings.opcua.model_copy(update={"servers": opcua}),
            "spool": settings.spool.model_copy(
                update={"dir": str(Path(settings.spool.dir) / f"shard-{k}")}
            ),
            "http": http.model_copy(update={"port": http.port + k}),
        }
    )


def dump_settings(settings: Settings) -> dict[str, Any]:
    """The effective config as plain data, secrets masked."""
    return settings.model_dump(mode="json")
