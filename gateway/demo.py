"""`edge-gateway demo`: simulator + gateway on this machine, one status line a second.

Uses the broker at `[mqtt] host:port` when one answers, else starts a private
mosquitto on a free port; InfluxDB at `[influx] url` when it answers `/ping`,
else appends line protocol to `.demo/readings.lp`. With no `[[opcua.servers]]`
it also starts `edge-sim opcua` and reads three of its variables as a PLC would
be read (press-1, fermenter-2). With no `[[rules]]` in the config it uses the
seed plant's alert thresholds (SPEC §5). A few anomalies are injected on
purpose so alerts show up within the first minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from pydantic import SecretStr

from gateway.app import build
from gateway.config import OpcuaNode, OpcuaServer, Rule, Settings
from gateway.daemon.pipeline import Gateway

DEMO_DIR = Path(".demo")

# SPEC §5 seed plant thresholds.
SEED_RULES = [
    Rule(equipment="device-001", sensor="temperature", high=85.0, low=15.0),
    Rule(equipment="device-002", sensor="pressure", high=55.0, low=5.0),
    Rule(equipment="device-003", sensor="vibration", high=120.0),
    Rule(equipment="device-004", sensor="production_rate", low=50.0),
    Rule(equipment="device-005", sensor="quality", low=80.0),
    Rule(equipment="fermenter-1", sensor="temperature", high=45.0),
]
# The OPC UA simulator's variables, named as the demo's PLC equipment.
OPCUA_NODES = [
    OpcuaNode(node_id=f"ns=2;s={node}", equipment=eq, sensor=sensor, line="line-3")
    for node, eq, sensor in (
        ("line-1.device-001.temperature", "press-1", "temperature"),
        ("line-1.device-003.vibration", "press-1", "vibration"),
        ("line-2.fermenter-1.temperature", "fermenter-2", "temperature"),
    )
]
OPCUA_RULES = [
    Rule(equipment="press-1", sensor="temperature", high=85.0, low=15.0),
    Rule(equipment="press-1", sensor="vibration", high=120.0),
    Rule(equipment="fermenter-2", sensor="temperature", high=45.0),
]
OPCUA_INJECTION = "spike:device-001:temperature@15"  # -> press-1 threshold alert
# Threshold alert at once, a z-score alert after warm-up, an offline alert later.
INJECTIONS = (
    "spike:device-001:temperature@8",
    "spike:device-003:vibration@40",
    "dropout:device-005@45",
)


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if binary is None:
        raise SystemExit(
            "demo: no MQTT broker answers and no mosquitto binary found; "
            "run `make demo` (installs it) or set [mqtt] host/port"
        )
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        if _port_open("127.0.0.1", port, 0.1):
            return proc, port
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"demo: mosquitto did not start on port {port}")


def _start_opcua_sim(workdir: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    """`edge-sim opcua` on a free port; (None, reason) if it does not come up."""
    port = _free_port()
    argv = [sys.executable, "-m", "simulator.cli", "opcua", "--port", str(port), "--quiet"]
    proc = subprocess.Popen(
        [*argv, "--seed", "11", "--inject", OPCUA_INJECTION, "--cert-dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        if _port_open("127.0.0.1", port, 0.1):
            return proc, f"opc.tcp://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    return None, "OPC UA simulator did not start"


def _influx_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=1) as r:
            return bool(200 <= r.status < 300)
    except OSError:
        return False


def _sample(gw: Gateway, name: str, labels: dict[str, str] | None = None) -> float:
    return gw.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def run_demo(settings: Settings, duration: float = 0.0) -> int:
    from simulator.anomalies import AnomalyConfig, Injection
    from simulator.mqtt import run_plant

    DEMO_DIR.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="edge-demo-"))
    broker = None
    notes = []
    if _port_open(settings.mqtt.host, settings.mqtt.port):
        notes.append(f"broker {settings.mqtt.host}:{settings.mqtt.port}")
    else:
        broker, port = _start_mosquitto(workdir)
        settings.mqtt.host, settings.mqtt.port = "127.0.0.1", port
        notes.append(f"embedded mosquitto on 127.0.0.1:{port}")
    settings.mqtt.client_id = f"edge-demo-{os.getpid()}"
    settings.mqtt.clean_session = True
    sink = None
    if settings.influx.enabled and _influx_answers(settings.influx.url):
        notes.append(f"InfluxDB {settings.influx.url}")
    else:
        from adapters.file import FileSink

        sink = FileSink(DEMO_DIR / "readings.lp")
        notes.append(f"line protocol to {sink.path}")
    opcua_sim = None
    if not settings.opcua.servers:
        opcua_sim, endpoint = _start_opcua_sim(workdir)
        if opcua_sim is not None:
            settings.opcua.servers = [
                OpcuaServer(endpoint=endpoint, nodes=OPCUA_NODES, publishing_interval_ms=250)
            ]
        notes.append(f"OPC UA simulator {endpoint}" if opcua_sim else endpoint)
    if not settings.rules:
        settings.rules = list(SEED_RULES) + (OPCUA_RULES if opcua_sim else [])
    if not os.access(settings.spool.dir, os.W_OK):
        settings.spool.dir = str(DEMO_DIR / "spool")
    if settings.http.enabled and _port_open(settings.http.host, settings.http.port):
        settings.http.port = _free_port()
    notes.append(f"metrics http://{settings.http.host}:{settings.http.port}/metrics")
    if settings.http.enabled and not settings.http.api_token.get_secret_value():
        # a token of this run, handed to the page in its URL (as Jupyter does): Ack works
        settings.http.api_token = SecretStr(secrets.token_urlsafe(18))
    print("demo: " + ", ".join(notes) + "  (Ctrl-C to stop)", flush=True)
    if settings.http.enabled:
        token = settings.http.api_token.get_secret_value()
        page = f"http://{settings.http.host}:{settings.http.port}/?token={token}"
        print(f"demo: operator page {page}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gw = build(settings, sink=sink)
    gw_task = asyncio.create_task(gw.run(stop))
    await gw.started.wait()

    sim_stop = threading.Event()
    sim = threading.Thread(
        target=run_plant,
        kwargs={
            "host": settings.mqtt.host,
            "port": settings.mqtt.port,
            "seed": 7,
            "anomalies": AnomalyConfig(rate=0.002),
            "injections": [Injection.parse(s) for s in INJECTIONS],
            "stop": sim_stop,
        },
        daemon=True,
        name="simulator",
    )
    sim.start()
    started = time.monotonic()
    last_received = 0.0
    tty = sys.stdout.isatty()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            received = sum(
                _sample(gw, "edge_readings_received_total", {"source": src})
                for src in ("mqtt", "opcua")
            )
            rate = received - last_received
            last_received = received
            line = _status_line(gw, rate, time.monotonic() - started)
            print(("\r" + line + "\x1b[K") if tty else line, end="" if tty else "\n", flush=True)
            if duration and time.monotonic() - started >= duration:
                stop.set()
    finally:
        if tty:
            print()
        sim_stop.set()
        stop.set()
        await gw_task
        sim.join(timeout=5)
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=5)
        if opcua_sim is not None:
            opcua_sim.terminate()
            try:
                opcua_sim.wait(timeout=10)
            except subprocess.TimeoutExpired:
                opcua_sim.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _status_line(gw: Gateway, rate: float, elapsed: float) -> str:
    written = _sample(gw, "edge_readings_written_total")
    rejected = sum(
        v.value
        for m in gw.metrics.readings_rejected.collect()
        for v in m.samples
        if v.name.endswith("_total")
    )
    active = gw.alerts.active()
    shown = ", ".join(f"{a.equipment}/{a.sensor} {a.kind} {a.severity}" for a in active[:3]) + (
        f" +{len(active) - 3}" if len(active) > 3 else ""
    )
    return (
        f"[{elapsed:5.0f}s] {rate:6.1f} readings/s  stored {written:.0f}  rejected {rejected:.0f}"
        f"  series {gw.detectors.series_count}  alerts {len(active)}"
        + (f": {shown}" if shown else "")
    )
