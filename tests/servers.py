"""Real test servers (mosquitto, VictoriaMetrics, InfluxDB 1.x, NATS, RabbitMQ) on free
loopback ports.

Plain helpers with no pytest dependency, used by the test fixtures and the benchmarks.
Every server runs from a binary on PATH (or /usr/sbin) with its own temp directory, in its
own process group, and is killed on ``stop()``/``close()`` or, as a safety net, at exit.
Only 127.0.0.1 is ever used; an existing broker on port 1883 is never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

HOST = "127.0.0.1"
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_LIVE: set[_Server] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def find_binary(name: str) -> str | None:
    """Path of executable ``name`` on PATH or in the sbin directories, else None."""
    found = shutil.which(name)
    if found:
        return found
    path = os.pathsep.join(_EXTRA_BIN_DIRS)
    return shutil.which(name, path=path)


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_request(
    url: str,
    data: bytes | None = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """Do one HTTP request; return (status, body) also for 4xx/5xx answers."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def mqtt_connect_ok(host: str, port: int, client_id: str, timeout: float = 5.0) -> bool:
    """True when an MQTT 3.1.1 CONNECT (persistent session) gets CONNACK "accepted"."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x00\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(bytes([0x10, len(body)]) + body)
            ack = sock.recv(4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return ack[:2] == b"\x20\x02" and ack[3:4] == b"\x00"


class ServerError(RuntimeError):
    """A test server failed to start or answered unexpectedly."""


class _Server:
    """Lifecycle shared by all servers: one process group, fixed port, temp dir."""

    binary: ClassVar[str] = ""
    start_timeout: ClassVar[float] = 10.0

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        path = find_binary(self.binary)
        if path is None:
            raise FileNotFoundError(f"{self.binary} not found on PATH or in /usr/sbin")
        self.exe = path
        self.host = HOST
        self.port = free_port()
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"edge-test-{self.binary}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._started_once = False

    # -- subclass hooks -------------------------------------------------------------
    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files for the current port (called before every start)."""

    def _ready(self) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        """The server's environment (None: inherit ours)."""
        return None

    # -- lifecycle ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        """Start the server and wait until it serves; no-op if already running.

        The first start retries on another free port if the chosen one was taken in the
        meantime; later starts (restarts) always reuse the same port.
        """
        if self.running:
            return self
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            try:
                self._start_once()
                break
            except ServerError:
                if attempt == attempts - 1 or not self._port_taken_by_other():
                    raise
                self._pick_ports()
        self._started_once = True
        return self

    def _port_taken_by_other(self) -> bool:
        return port_open(self.host, self.port)

    def _pick_ports(self) -> None:
        self.port = free_port()

    def _start_once(self) -> None:
        self._prepare()
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self._env(),
                start_new_session=True,
            )
        _LIVE.add(self)
        deadline = t0 + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._reap()
                raise ServerError(f"{self.binary} exited with {code}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if self._ready():
                    break
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(
                    f"{self.binary} not ready on {self.host}:{self.port} after "
                    f"{self.start_timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        self.startup_seconds = time.monotonic() - t0

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _reap(self) -> None:
        # Leftover children of the group (none expected) get SIGKILL too.
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self.proc = None
        _LIVE.discard(self)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM to the process group), SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self._reap()

    def kill(self) -> None:
        """Crash the server: SIGKILL to its process group, no chance to flush."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._reap()

    def restart(self, *, hard: bool = False) -> Self:
        """Stop (or kill when ``hard``) and start again on the same port and data dir."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its temp dir (if we created it)."""
        self.stop()
        self._remove_dir()

    def _remove_dir(self) -> None:
        if self._own_dir and not os.environ.get("EDGE_KEEP_SERVER_DIRS"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


class Mosquitto(_Server):
    """A private mosquitto broker with on-disk persistence (sessions survive restarts).

    ``stop()`` saves the persistence DB; after ``kill()`` only what the last autosave
    (every ``autosave_interval`` seconds) wrote survives, as on a real crash.

    ``config``, if given, renders the whole ``mosquitto.conf`` for this broker (its
    ``host``, ``port``, ``dir``, ``persistence_dir``) instead of the generated one, e.g.
    a shipped config rewritten for the test; it is called before every start, after a
    port change too. Files it names (certificates, password file) belong in ``dir``.
    ``extra_config`` lines are appended in both cases.
    """

    binary = "mosquitto"

    def __init__(
        self,
        extra_config: Sequence[str] = (),
        *,
        autosave_interval: int = 1,
        workdir: str | os.PathLike[str] | None = None,
        config: Callable[[Mosquitto], str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.extra_config = list(extra_config)
        self.config = config
        self.autosave_interval = autosave_interval
        self.conf_path = self.dir / "mosquitto.conf"
        self.persistence_dir = self.dir / "persist"
        self.persistence_dir.mkdir(exist_ok=True)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _prepare(self) -> None:
        if self.config is not None:
            lines = [self.config(self).rstrip("\n")]
        else:
            lines = self._default_config()
        if os.geteuid() == 0:
            # mosquitto 2 drops root to user "mosquitto", which cannot write our temp dir.
            lines.append("user root")
        lines.extend(self.extra_config)
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _default_config(self) -> list[str]:
        return [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            f"autosave_interval {self.autosave_interval}",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp true",
        ]

    def _argv(self) -> list[str]:
        return [self.exe, "-c", str(self.conf_path)]

    def _ready(self) -> bool:
        return port_open(self.host, self.port)


class VictoriaMetrics(_Server):
    """A private single-node VictoriaMetrics (tested with 1.79).

    Influx line protocol is accepted on ``/api/v2/write`` and ``/write``: measurement
    ``readings`` with field ``value`` becomes metric ``readings_value``, tags become labels.
    VictoriaMetrics stores MILLISECOND timestamps: nanosecond input is truncated (floored,
    not rounded) to ms, e.g. ...464_553_369 ns -> ...464 ms. Points older than the
    retention period are dropped silently, so tests must write current timestamps.
    Freshly written rows become visible after an internal flush (~1 s); use
    ``wait_for_count`` rather than a single ``export``.
    Durability: ``stop()`` (SIGTERM) persists everything. After ``kill()`` (SIGKILL) rows
    acknowledged within the last ~5 s are lost by VM 1.79 itself (``force_flush`` makes
    them searchable, not durable), so fault tests that must lose nothing use ``stop()``
    or wait ``unflushed_window_s`` before killing.
    """

    unflushed_window_s: ClassVar[float] = 6.0

    binary = "victoria-metrics"

    def __init__(
        self, extra_args: Sequence[str] = (), *, workdir: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__(workdir)
        self.extra_args = list(extra_args)
        self.data_dir = self.dir / "data"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _argv(self) -> list[str]:
        return [
            self.exe,
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=ERROR",
            *self.extra_args,
        ]

    def _ready(self) -> bool:
        status, _ = http_request(f"{self.url}/health", timeout=1.0)
        return status == 200

    # -- helpers --------------------------------------------------------------------
    def write_lines(self, lines: str | Iterable[str], path: str = "/api/v2/write") -> int:
        """POST line protocol; returns the HTTP status (204 on success)."""
        body = lines if isinstance(lines, str) else "\n".join(lines)
        status, _ = http_request(f"{self.url}{path}", data=body.encode(), method="POST")
        return status

    def force_flush(self) -> None:
        """Make recently ingested rows searchable now."""
        status, body = http_request(f"{self.url}/internal/force_flush")
        if status != 200:
            raise ServerError(f"force_flush -> {status}: {body[:200]!r}")

    def export(self, match: str, start: float | None = None) -> list[dict[str, Any]]:
        """Raw series from ``/api/v1/export``: dicts with metric, values, timestamps (ms)."""
        params: list[tuple[str, str]] = [("match[]", match)]
        if start is not None:
            params.append(("start", str(start)))
        url = f"{self.url}/api/v1/export?{urllib.parse.urlencode(params)}"
        status, body = http_request(url)
        if status != 200:
            raise ServerError(f"export {match!r} -> {status}: {body[:300]!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    @staticmethod
    def selector(metric: str, **labels: str) -> str:
        """PromQL series selector ``metric{k="v",...}`` with escaped values."""
        if not labels:
            return metric
        inner = ",".join(f"{k}={json.dumps(str(v))}" for k, v in sorted(labels.items()))
        return f"{metric}{{{inner}}}"

    def series_values(self, metric: str, **labels: str) -> list[tuple[int, float]]:
        """All (timestamp_ms, value) samples of matching series, sorted by time."""
        out: list[tuple[int, float]] = []
        for series in self.export(self.selector(metric, **labels)):
            out.extend(zip(series["timestamps"], series["values"], strict=True))
        return sorted(out)

    def count(self, match: str) -> int:
        """Total number of samples in all series matching ``match``."""
        return sum(len(s["values"]) for s in self.export(match))

    def wait_for_count(self, match: str, n: int, timeout: float = 10.0) -> int:
        """Poll (with force_flush) until at least ``n`` samples match; return the count."""
        deadline = time.monotonic() + timeout
        while True:
            self.force_flush()
            got = self.count(match)
            if got >= n:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"{match}: {got} samples after {timeout}s, wanted {n}")
            time.sleep(0.1)


class InfluxDB1(_Server):
    """A private InfluxDB 1.x (tested with 1.6.7): only v1 ``/write`` and ``/query``."""

    binary = "influxd"
    start_timeout = 30.0

    def __init__(self, *, workdir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(workdir)
        self.rpc_port = free_port()
        self.conf_path = self.dir / "influxdb.conf"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _port_taken_by_other(self) -> bool:
        return port_open(self.host, self.port) or port_open(self.host, self.rpc_port)

    def _pick_ports(self) -> None:
        self.port = free_port()
        self.rpc_port = free_port()

    def _prepare(self) -> None:
        d = self.dir
        self.conf_path.write_text(
            f"""reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = "{d / "meta"}"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  wal-fsync-delay = "0s"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""
        )

    def _argv(self) -> list[str]:
        return [self.exe, "-config", str(self.conf_path)]

    def _ready(self) -> bool:
        status, _ = http_request(f"{self.url}/ping", timeout=1.0)
        return status == 204

    # -- helpers --------------------------------------------------------------------
    def query(self, q: str, db: str | None = None, *, epoch: str | None = "ns") -> dict[str, Any]:
        """Run InfluxQL via POST /query; timestamps as integers in ``epoch`` units."""
        params = {"q": q}
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        status, body = http_request(
            f"{self.url}/query",
            data=urllib.parse.urlencode(params).encode(),
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        result: dict[str, Any] = json.loads(body) if body else {}
        if status != 200 or "error" in result:
            raise ServerError(f"query {q!r} -> {status}: {body[:300]!r}")
        for stmt in result.get("results", []):
            if "error" in stmt:
                raise ServerError(f"query {q!r}: {stmt['error']}")
        return result

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"', epoch=None)

    def write_lines(self, db: str, lines: str | Iterable[str], precision: str = "ns") -> int:
        """POST line protocol to v1 ``/write``; returns the HTTP status (204 on success)."""
        body = lines if isinstance(lines, str) else "\n".join(lines)
        qs = urllib.parse.urlencode({"db": db, "precision": precision})
        status, _ = http_request(f"{self.url}/write?{qs}", data=body.encode(), method="POST")
        return status

    def points(self, q: str, db: str) -> list[dict[str, Any]]:
        """Rows of the first series of a SELECT as dicts keyed by column name."""
        series = self.query(q, db)["results"][0].get("series", [])
        if not series:
            return []
        cols = series[0]["columns"]
        return [dict(zip(cols, row, strict=True)) for row in series[0]["values"]]


class NatsNode(_Server):
    """One node of a `NatsCluster`: nats-server with JetStream and its MQTT listener.

    ``port`` is the MQTT listener (what a gateway connects to); the client, route and
    monitoring ports are its own too. Ready when the MQTT port accepts connections;
    the cluster waits for JetStream on top of that.
    """

    binary = "nats-server"
    start_timeout = 20.0

    def __init__(self, name: str, cluster: NatsCluster) -> None:
        super().__init__(cluster.dir / name)
        self.name = name
        self.cluster = cluster
        self.client_port = free_port()
        self.route_port = free_port()
        self.http_port = free_port()
        self.conf_path = self.dir / "nats.conf"

    @property
    def server(self) -> str:
        """``host:port`` of the MQTT listener, as in ``[mqtt] servers``."""
        return f"{self.host}:{self.port}"

    def _port_taken_by_other(self) -> bool:
        return False  # a cluster's ports are fixed in its peers' route lists

    def _prepare(self) -> None:
        routes = ", ".join(
            f'"nats-route://{n.host}:{n.route_port}"' for n in self.cluster.nodes if n is not self
        )
        store = self.dir / "js"
        # a single node is a standalone server: JetStream refuses a cluster without routes
        cluster = (
            f"""cluster {{
  name: {self.cluster.name}
  listen: {self.host}:{self.route_port}
  routes: [{routes}]
}}
"""
            if len(self.cluster.nodes) > 1
            else ""
        )
        self.conf_path.write_text(
            f"""server_name: {self.name}
listen: {self.host}:{self.client_port}
http: {self.host}:{self.http_port}
jetstream {{ store_dir: "{store}" }}
{cluster}mqtt {{
  listen: {self.host}:{self.port}
  stream_replicas: {len(self.cluster.nodes)}
  ack_wait: "{self.cluster.ack_wait}"
}}
"""
        )

    def _argv(self) -> list[str]:
        return [self.exe, "-c", str(self.conf_path)]

    def _ready(self) -> bool:
        return port_open(self.host, self.port)

    def healthy(self) -> bool:
        """True when an MQTT 3.1.1 CONNECT with a persistent session is accepted.

        NATS keeps MQTT sessions in replicated JetStream streams, so this is true only
        once the cluster has a JetStream leader and the MQTT streams exist.
        """
        return mqtt_connect_ok(self.host, self.port, f"edge-probe-{self.name}")


class NatsCluster:
    """A private N-node NATS cluster (nats-server 2.9) on loopback, each node with
    JetStream and an MQTT listener with ``stream_replicas: N``: a real clustered MQTT
    broker whose QoS 1 persistent sessions survive the loss of a node.

    ``start()`` starts every node and waits until each answers ``/healthz``; ``kill(i)``
    SIGKILLs node ``i``; ``stop()`` stops them all and ``close()`` removes the dirs.
    Never touches a system NATS (4222): every port is a free one of its own.
    """

    binary = NatsNode.binary

    def __init__(self, size: int = 3, *, name: str = "edge-test", ack_wait: str = "5s") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="edge-test-nats-"))
        self.name = name
        # how long NATS waits before it redelivers an unacked QoS 1 message (its default
        # 30 s; the 5 s docs/brokers.md recommends): a failover test waits for that tail
        self.ack_wait = ack_wait
        self.nodes: list[NatsNode] = []
        self.nodes.extend(NatsNode(f"n{i + 1}", self) for i in range(size))

    @property
    def servers(self) -> list[str]:
        """``host:port`` of every node's MQTT listener, in node order."""
        return [n.server for n in self.nodes]

    def start(self, timeout: float = 30.0) -> Self:
        for n in self.nodes:  # each waits for its own MQTT port only
            n.start()
        deadline = time.monotonic() + timeout
        while not all(n.healthy() for n in self.nodes if n.running):
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n.name}\n{n.log_tail(10)}" for n in self.nodes)
                self.stop()
                raise ServerError(f"NATS cluster not healthy after {timeout:.0f}s:\n{tails}")
            time.sleep(0.1)
        return self

    def node_of(self, server: str) -> NatsNode:
        return next(n for n in self.nodes if n.server == server)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``: no goodbye to its clients or peers."""
        self.nodes[i].kill()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def close(self) -> None:
        self.stop()
        if not os.environ.get("EDGE_KEEP_SERVER_DIRS"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NatsCluster {', '.join(self.servers)}>"


def _proc_children() -> dict[int, list[int]]:
    """{ppid: [pid, ...]} of every process now, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of /proc/pid/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def process_tree(pid: int) -> dict[int, str]:
    """``pid`` and all its descendants now, each with its start time (to tell PIDs reused)."""
    children = _proc_children()
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        start = _proc_start(p)
        if start is not None and p not in out:
            out[p] = start
            todo.extend(children.get(p, []))
    return out


class RabbitMQ(_Server):
    """A private RabbitMQ node (Debian rabbitmq-server 3.10) with the MQTT plugin.

    ``port`` is the MQTT listener; AMQP (``amqp_port``), Erlang distribution
    (``dist_port``) and an epmd of its own (``epmd_port``) are free ports too, so a
    system RabbitMQ (5672/25672) and the system epmd (4369) are neither used nor
    touched. Node name ``edge-test-<port>@localhost``; mnesia, logs, plugin expansion,
    Erlang cookie (``HOME``), config, env and enabled-plugins files live in ``dir``.
    Anonymous MQTT clients log in as ``guest`` (allowed from loopback). Ready when
    the MQTT port answers a CONNECT with "accepted" (~8 s on the 2-core machine).

    Erlang starts helpers in process groups of their own (``erl_child_setup``,
    ``inet_gethost``, the disk monitor's ``sh``), so ``stop()``/``kill()`` also kill
    every descendant of the node seen before the signal, not only its group.
    """

    binary = "rabbitmq-server"
    start_timeout = 60.0
    # Debian's /usr/sbin/rabbitmq-server is a wrapper that su's to user rabbitmq and
    # logs to /var/log/rabbitmq; the real start script sits here.
    _REAL_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")

    def __init__(self, *, workdir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(workdir)
        if self._REAL_SCRIPT.exists():
            self.exe = str(self._REAL_SCRIPT)
        epmd = find_binary("epmd")
        if epmd is None:
            raise FileNotFoundError("epmd (erlang-base) not found on PATH")
        self.epmd = epmd
        self._pick_ports()
        self.conf_path = self.dir / "rabbitmq.conf"
        self._tree: dict[int, str] = {}  # the node's processes seen while it ran
        self.last_tree: dict[int, str] = {}

    @property
    def nodename(self) -> str:
        return f"edge-test-{self.port}@localhost"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _pick_ports(self) -> None:
        self.port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()

    def _port_taken_by_other(self) -> bool:
        ports = (self.port, self.amqp_port, self.dist_port, self.epmd_port)
        return any(port_open(self.host, p) for p in ports)

    def _prepare(self) -> None:
        d = self.dir
        (d / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf
        (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.conf_path.write_text(
            f"""listeners.tcp.default = {self.host}:{self.amqp_port}
mqtt.listeners.tcp.default = {self.host}:{self.port}
mqtt.allow_anonymous = true
mqtt.default_user = guest
mqtt.default_pass = guest
mqtt.vhost = /
disk_free_limit.absolute = 1MB
log.console = true
log.console.level = warning
log.file = false
"""
        )

    def _env(self) -> dict[str, str]:
        d = self.dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d),  # the Erlang cookie of this node only
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.conf_path),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_PLUGINS_EXPAND_DIR=str(d / "plugins-expand"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=self.host,
            # never daemonize an epmd (it would outlive the test): ours runs in the group
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false",
        )
        return env

    def _argv(self) -> list[str]:
        # An epmd of its own in the node's process group, up before the node registers.
        script = (
            f'"{self.epmd}" -port {self.epmd_port} -address {self.host} & '
            "i=0; while [ $i -lt 100 ]; do "
            f'"{self.epmd}" -port {self.epmd_port} -names >/dev/null 2>&1 && break; '
            "i=$((i+1)); sleep 0.05; done; "
            f'exec "{self.exe}"'
        )
        return ["/bin/sh", "-c", script]

    def _ready(self) -> bool:
        return port_open(self.host, self.port) and mqtt_connect_ok(
            self.host, self.port, "edge-probe-rabbitmq"
        )

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            self._tree.update(process_tree(self.proc.pid))
        super()._signal_group(sig)

    def _reap(self) -> None:
        super()._reap()
        # helpers in groups of their own: gone once the VM is; make sure of it
        deadline = time.monotonic() + 5.0
        while True:
            alive = {p: t for p, t in self._tree.items() if _proc_start(p) == t}
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.last_tree, self._tree = self._tree, {}

    def leftovers(self) -> list[int]:
        """PIDs of the last stopped node's processes still alive (must be none)."""
        return [p for p, t in self.last_tree.items() if _proc_start(p) == t]


@atexit.register
def _stop_all() -> None:
    # Safety net for servers never closed (crashed test run, forgotten close()).
    for server in list(_LIVE):
        server.kill()
        server._remove_dir()
