"""Run the real gateway as a subprocess and talk to it over MQTT and HTTP.

Plain helpers with no pytest dependency, shared by the integration tests and the
benchmarks:

- `GatewayProcess` writes a TOML config (unique client_id, free HTTP port, fast
  Influx flushes, a private spool dir), starts ``python -m gateway run`` and waits
  for ``/readyz``; it reads ``/metrics`` and stops the process by signal.
- `MqttProbe` is a paho client that records what it receives and publishes with
  QoS 1, waiting for the broker's acknowledgement.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Self

import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import HOST, free_port, http_request

READY_TIMEOUT_S = 15.0


# ------------------------------------------------------------------------ TOML


def _toml_key(k: str) -> str:
    bare = k and all(c.isalnum() or c in "_-" for c in k)
    return k if bare else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def to_toml(doc: Mapping[str, Any], _path: tuple[str, ...] = ()) -> str:
    """A TOML document for plain data (tables, arrays of tables, scalars, lists)."""
    out: list[str] = []
    for k, v in doc.items():
        if not isinstance(v, dict) and not _is_table_list(v):
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in doc.items():
        path = (*_path, k)
        name = ".".join(_toml_key(p) for p in path)
        if isinstance(v, dict):
            out.append(f"\n[{name}]")
            out.append(to_toml(v, path))
        elif _is_table_list(v):
            for item in v:
                out.append(f"\n[[{name}]]")
                out.append(to_toml(item, path))
    return "\n".join(x for x in out if x)


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by `extra`; tables merge key by key, everything else is replaced."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------- gateway


class Sample(NamedTuple):
    labels: dict[str, str]
    value: float


class GatewayError(RuntimeError):
    """The gateway did not start, or did not stop, as expected."""


class GatewayProcess:
    """One `edge-gateway run` subprocess with its own config, HTTP port and spool dir.

    `extra_toml` is parsed and deep-merged over the generated config, so it may set
    keys of any section (``[mqtt] deadletter_per_s = 1000``) or add ``[[rules]]``.
    Arrays (e.g. ``[[mqtt.subscriptions]]``) replace the default: list every
    subscription wanted, including ``plant/+/+/+`` (see `DEFAULT_SUBSCRIPTION`).
    `env` adds environment variables; inherited ``EDGE_*`` variables are dropped.
    `influx` sets ``[influx]`` keys (a store's `gateway_influx`, tests/stores.py).
    The constructor starts the process and waits until ``/readyz`` answers 200.
    """

    DEFAULT_SUBSCRIPTION = (
        '[[mqtt.subscriptions]]\ntopic = "plant/+/+/+"\n'
        'template = "plant/{line}/{equipment}/{sensor}"\n'
    )

    def __init__(
        self,
        mqtt_port: int,
        influx_url: str,
        workdir: str | os.PathLike[str],
        *,
        client_id: str | None = None,
        extra_toml: str = "",
        env: Mapping[str, str] | None = None,
        start: bool = True,
        ready_timeout: float = READY_TIMEOUT_S,
        influx: Mapping[str, Any] | None = None,
        args: Iterable[str] = (),
    ) -> None:
        self.args = list(args)  # after `run --config FILE`, e.g. ["--shard", "1/2"]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client_id = client_id or f"gw-test-{uuid.uuid4().hex[:10]}"
        self.http_port = free_port()
        self.url = f"http://{HOST}:{self.http_port}"
        self.config_path = self.workdir / f"{self.client_id}.toml"
        self.log_path = self.workdir / f"{self.client_id}.log"
        self.ready_timeout = ready_timeout
        base: dict[str, Any] = {
            "mqtt": {"host": HOST, "port": int(mqtt_port), "client_id": self.client_id},
            "influx": {"url": influx_url, "flush_interval_ms": 100, **(influx or {})},
            "spool": {"dir": str(self.workdir / f"spool-{self.client_id}")},
            "http": {"host": HOST, "port": self.http_port},
            "log": {"level": "INFO"},
        }
        self.config = deep_merge(base, tomllib.loads(extra_toml)) if extra_toml else base
        self.config_path.write_text(to_toml(self.config) + "\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    @property
    def deadletter_topic(self) -> str:
        return f"gateway/{self.client_id}/deadletter"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, *, wait: bool = True) -> Self:
        """Start (again, after `stop`/`kill`) and wait until ready; raises GatewayError.

        With ``wait=False`` return at once (for a gateway that is not meant to get ready).
        """
        if self.running:
            return self
        argv = [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)]
        argv += self.args
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(self.ready_timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until ``/readyz`` answers 200; raise GatewayError with the log tail."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise GatewayError(f"gateway exited with {code} before ready:\n{self.log_tail()}")
            try:
                status, body = self.readyz(timeout=1.0)
                if status == 200:
                    return
                last = f"{status} {body}"
            except OSError as e:
                last = str(e)
            if time.monotonic() > deadline:
                self.kill()
                raise GatewayError(
                    f"gateway not ready after {timeout:.0f}s ({last}):\n{self.log_tail()}"
                )
            time.sleep(0.05)

    # -- HTTP -----------------------------------------------------------------
    def readyz(self, timeout: float = 5.0) -> tuple[int, Any]:
        """(HTTP status, parsed JSON body) of ``/readyz``."""
        status, body = http_request(f"{self.url}/readyz", timeout=timeout)
        return status, json.loads(body) if body else None

    def metrics_text(self) -> str:
        status, body = http_request(f"{self.url}/metrics")
        if status != 200:
            raise GatewayError(f"/metrics -> {status}")
        return body.decode()

    def metrics(self) -> dict[str, list[Sample]]:
        """Every sample of ``/metrics``, by sample name (``edge_x_total``, ``edge_h_bucket``).

        Families without samples yet (labelled counters never incremented) are
        present with an empty list, under the family name and its ``_total`` name.
        """
        out: dict[str, list[Sample]] = {}
        for fam in text_string_to_metric_families(self.metrics_text()):
            out.setdefault(fam.name, [])
            if fam.type == "counter":
                out.setdefault(fam.name + "_total", [])
            for s in fam.samples:
                out.setdefault(s.name, []).append(Sample(dict(s.labels), float(s.value)))
        return out

    def metric(self, name: str, *, absent_ok: bool = False, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`.

        Raises KeyError for a name the gateway does not export, for a label name none
        of its samples has (a misspelled label must not read as 0), and for label values
        no sample has, unless `absent_ok` (a labelled counter not incremented yet: 0.0).
        """
        return self._metric(name, labels, absent_ok)

    def _metric(self, name: str, labels: Mapping[str, str], absent_ok: bool) -> float:
        samples = self.metrics()
        if name not in samples:
            raise KeyError(f"metric {name!r} not exported; known: {sorted(samples)}")
        if not labels:
            return sum(s.value for s in samples[name])
        known = {k for s in samples[name] for k in s.labels}
        unknown = set(labels) - known
        if unknown and (samples[name] or not absent_ok):
            raise KeyError(f"metric {name!r} has no label {sorted(unknown)}; has {sorted(known)}")
        want = {k: str(v) for k, v in labels.items()}
        matching = [s for s in samples[name] if all(s.labels.get(k) == v for k, v in want.items())]
        if not matching and not absent_ok:
            raise KeyError(f"metric {name!r} has no sample with {want}")
        return sum(s.value for s in matching)

    def wait_metric(
        self,
        name: str,
        predicate: Callable[[float], bool],
        timeout: float = 10.0,
        **labels: str,
    ) -> float:
        """Poll `metric(name, **labels)` until `predicate(value)`; return the value.

        A labelled sample that does not exist yet is waited for (KeyError until then).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                v: float | None = self._metric(name, labels, False)
            except KeyError:
                if name not in self.metrics():
                    raise
                v = None
            if v is not None and predicate(v):
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}{labels} = {v} after {timeout}s")
            time.sleep(0.05)

    # -- lifecycle --------------------------------------------------------------
    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; return the exit code (SIGKILL and raise after `timeout`)."""
        if self.proc is None:
            raise GatewayError("gateway was never started")
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise GatewayError(
                    f"gateway still running {timeout:.0f}s after SIGTERM:\n{self.log_tail()}"
                ) from None
        self._reap_group()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL the gateway's process group: no drain, no goodbye."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def _reap_group(self) -> None:
        # Nothing should outlive the gateway; make sure nothing does.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_text()
        return "\n".join(text.splitlines()[-lines:]) if text else "(empty log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.running:
            with contextlib.suppress(GatewayError):
                self.stop()
        else:
            self.kill()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<GatewayProcess {self.client_id} {self.url} {state}>"


class Gateways:
    """Starts `GatewayProcess`es on one broker and sink; `close()` stops them all.

    `close()` returns the problems found (a non-zero exit on SIGTERM, a Python
    traceback in a log), so a test fixture can fail on them.
    """

    def __init__(
        self,
        mqtt_port: int,
        influx_url: str,
        workdir: str | os.PathLike[str],
        influx: Mapping[str, Any] | None = None,
    ) -> None:
        self.mqtt_port = mqtt_port
        self.influx_url = influx_url
        self.influx = dict(influx or {})
        self.workdir = Path(workdir)
        self.procs: list[GatewayProcess] = []

    def __call__(self, extra_toml: str = "", **kw: Any) -> GatewayProcess:
        kw.setdefault("mqtt_port", self.mqtt_port)
        kw.setdefault("influx_url", self.influx_url)
        kw.setdefault("influx", self.influx)
        gw = GatewayProcess(workdir=self.workdir, extra_toml=extra_toml, **kw)
        self.procs.append(gw)
        return gw

    def close(self) -> list[str]:
        problems: list[str] = []
        for gw in self.procs:
            if gw.running:
                try:
                    rc = gw.stop()
                except GatewayError as e:
                    problems.append(str(e))
                    continue
                if rc != 0:
                    problems.append(f"{gw.client_id} exited {rc} on SIGTERM:\n{gw.log_tail()}")
            else:
                gw.kill()
            if "Traceback" in gw.log_text():
                problems.append(f"{gw.client_id} logged a traceback:\n{gw.log_tail()}")
        return problems


# ------------------------------------------------------------------------ MQTT


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


Predicate = Callable[[Message], bool]


def _as_predicate(p: str | Predicate | None) -> Predicate:
    if p is None:
        return lambda m: True
    if isinstance(p, str):
        flt = p
        return lambda m: mqtt.topic_matches_sub(flt, m.topic)
    return p


def _encode(payload: bytes | str | Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload).encode()


class MqttProbe:
    """A paho 2.x client (clean session) that records every message it receives.

    `wait_for(p)` takes a predicate on `Message` or an MQTT topic filter string.
    `publish` sends bytes as-is, str UTF-8 encoded, anything else as JSON.
    `username`/`password` log in, `tls` (an SSL context) connects over TLS. A CONNACK
    refusing the connection raises `ConnectionRefusedError` with the reason.
    """

    def __init__(
        self,
        port: int,
        subscribe: Iterable[str] = (),
        *,
        host: str = HOST,
        client_id: str | None = None,
        timeout: float = 5.0,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._connected = threading.Event()
        self._refused: str | None = None
        self._acks: dict[int, threading.Event] = {}
        cid = client_id or f"probe-{uuid.uuid4().hex[:10]}"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise TimeoutError(f"no CONNACK from {host}:{port}")
        if self._refused is not None:
            self.close()
            raise ConnectionRefusedError(f"{host}:{port} refused {cid}: {self._refused}")
        filters = list(subscribe)
        if filters:
            self.subscribe(*filters)

    # paho callbacks (network thread)
    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._refused = str(rc)
            c.disconnect()  # no reconnect attempts
        self._connected.set()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._lock:
            ev = self._acks.setdefault(mid, threading.Event())
        ev.set()

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        msg = Message(m.topic, bytes(m.payload), bool(m.retain))
        with self._lock:
            self._messages.append(msg)

    # API
    def subscribe(self, *filters: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK."""
        for f in filters:
            with self._lock:
                rc, mid = self.client.subscribe(f, qos)
                if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                    raise RuntimeError(f"subscribe {f!r} failed: {rc}")
                ev = self._acks.setdefault(mid, threading.Event())
            if not ev.wait(self.timeout):
                raise TimeoutError(f"no SUBACK for {f!r}")

    def publish(
        self, topic: str, payload: bytes | str | Any, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait until the broker acknowledged it (QoS 1/2) or it was sent."""
        info = self.client.publish(topic, _encode(payload), qos=qos, retain=retain)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic!r} not acknowledged in {self.timeout}s")

    def messages(self, predicate: str | Predicate | None = None) -> list[Message]:
        """A snapshot of the received messages matching `predicate`, in arrival order."""
        p = _as_predicate(predicate)
        with self._lock:
            return [m for m in self._messages if p(m)]

    def wait_for(
        self, predicate: str | Predicate | None = None, timeout: float = 10.0, count: int = 1
    ) -> list[Message]:
        """Wait until at least `count` messages match; return all matching ones.

        Raises TimeoutError listing what did arrive.
        """
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages(predicate)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                seen = [(m.topic, m.payload[:120]) for m in self.messages()][-20:]
                raise TimeoutError(
                    f"{len(got)} of {count} expected messages after {timeout}s; last seen: {seen}"
                )
            time.sleep(0.02)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def uid(prefix: str) -> str:
    """A name no other test uses (tests share the session broker and TSDB)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
