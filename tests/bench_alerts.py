"""Alert benchmark (a script, not a test): alerts while other alerts flow, and in a storm.

    python -m tests.bench_alerts [--quick] [--out FILE] [--baseline-src DIR]
    make bench            # tests/bench.py runs these cases too, after its own

Cases, each on a private mosquitto on a free loopback port (tests.servers):

publisher throughput
    `gateway.daemon.publish.Publisher` on `adapters.mqtt.MqttLink`, in this process:
    ``--messages`` QoS 1 messages (events on 10,000 topics) put at once; rate =
    messages / (run start -> last PUBACK). Unpaced (the publisher's capacity) and with
    the default pacing of the normal lane (`PACE_PER_S` after a `PACE_BURST`).
noisy background
    ``edge-gateway run`` (VictoriaMetrics as its TSDB when installed) with z-score alerts
    on every series raised on the first outlier (``zscore_alert_after = 1``; chattering
    and flood summaries off, so the background's own alerts flow: ~0.3 % of readings
    are beyond 3 sigma). A load generator process (tests.bench) offers ``--bg-rate``
    readings/s of Gaussian noise (1 per message) on ``--series`` series, after a
    warm-up that fills every series' window. A probe then publishes ``--spikes`` spikes
    (value 1000, one warm ``probe-NNN/pressure`` series each, every 50 ms; a rule makes
    it ``critical``) and times spike publish -> its alert event received on MQTT, for
    three responders subscribed to the same broker in the same run:

    - the gateway (``alerts/events/...``);
    - the echo peer: a trivial paho client subscribed to the probe's topics only that
      republishes every spike at once (``echo/events/...``): the floor of the set-up;
    - a Node-RED flow doing the gateway's job on the same input (every series: a rolling
      z-score over 100 readings, a threshold on the probe, one event per raise and per
      clear, ``nodered/events/...``). Node-RED is installed with npm into
      ``~/.cache/edge-gateway/node-red`` if missing; if that fails it is skipped (said
      in the results).

    p50 / p99 / max and the count missing (no event within 2 s of the last spike).
storm
    tests/bench_storm.py: 10,000 equipment fall silent at once; time from the first
    offline event at a subscriber to the last offline event and the last status
    message, and the latency of a critical spike 0.2 s into the storm.

``--baseline-src DIR`` runs the gateway cases a second time with the gateway from DIR
(e.g. ``git archive <commit> | tar -x -C DIR``) on PYTHONPATH: before and after in the
same run. Everything shares the machine's cores: broker, TSDB, gateway, load generator,
peers and probe.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from tests.bench import Generators, _pct, _say
from tests.harness import GatewayProcess
from tests.servers import HOST, Mosquitto, VictoriaMetrics, find_binary, free_port

NOISE = (50.0, 5.0)  # mean, sd of the background's Gaussian noise
SPIKE_VALUE = 1000.0
SPIKE_THRESHOLD = 100.0  # the probe rule's `high` (critical_high 200); the peers' test
SPIKE_INTERVAL_S = 0.05
WARM_READINGS = 40  # per series before the measurement (detection warmup is 30)
MISSING_AFTER_S = 2.0
NODE_RED_DIR = Path.home() / ".cache" / "edge-gateway" / "node-red"
RESPONDERS = ("gateway", "echo", "nodered")
TOPIC_PREFIX = {"gateway": "alerts", "echo": "echo", "nodered": "nodered"}

GATEWAY_TOML = """
[detection]
zscore_alert_after = 1

[[rules]]
equipment = "probe-*"
sensor = "pressure"
high = 100.0
critical_high = 200.0
"""
# alarm management that would summarise or hold back the background's own alerts:
# off, where this gateway has the setting (the point is alerts flowing)
ALARM_MANAGEMENT_OFF = {"chatter_count": 1_000_000, "flood_raises": 1_000_000, "fleeting_s": 0.0}


# --------------------------------------------------------------- publisher throughput


def publisher_throughput(messages: int, pace: bool) -> dict[str, Any]:
    """QoS 1 messages/s of the Publisher over MqttLink to a private mosquitto."""
    from adapters.mqtt import MqttLink
    from gateway.config import MqttConfig
    from gateway.daemon.publish import Publisher

    async def go(port: int) -> dict[str, Any]:
        link = MqttLink(MqttConfig(host=HOST, port=port, client_id="bench-publisher"))

        async def deliver(batch: object) -> None:
            return None

        task = asyncio.create_task(link.run(deliver))
        try:
            await asyncio.wait_for(link.wait_connected(), 10)
            rates = []
            for rnd in range(3):
                pub = Publisher(link) if pace else Publisher(link, pace=None)
                body = b'{"equipment":"eq","sensor":"s","state":"raised","severity":"high"}'
                for i in range(messages):
                    pub.put(f"alerts/events/eq-{i % 10_000:05d}/s-{rnd}", body, 1, False)
                t0 = time.perf_counter()
                run = asyncio.create_task(pub.run())
                pub.close()
                await asyncio.wait_for(run, 120)
                rates.append(pub.published / (time.perf_counter() - t0))
            return {"messages": messages, "paced": pace, "rates": [round(r) for r in rates],
                    "rate_median": round(sorted(rates)[1])}  # fmt: skip
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    with Mosquitto() as broker:
        r = asyncio.run(go(broker.port))
    _say(f"  publisher {'paced' if pace else 'unpaced'}: {r['rate_median']:,} msgs/s {r['rates']}")
    return r


# ---------------------------------------------------------------------- echo peer


def echo_peer(cfg: dict[str, Any]) -> dict[str, Any]:
    """A paho client that republishes every spike on its topics at once (child process)."""
    ready = threading.Event()
    loads = orjson.loads
    n = [0]

    def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if loads(m.payload)["value"] > SPIKE_THRESHOLD:
                _, _, eq, sensor = m.topic.split("/", 3)
                c.publish(f"echo/events/{eq}/{sensor}", m.payload, qos=1)
                n[0] += 1

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-echo-{os.getpid()}")
    c.on_message = on_message
    c.on_subscribe = lambda *a: ready.set()
    c.connect(cfg["host"], cfg["port"], keepalive=60)
    c.subscribe(cfg["topic"], qos=1)
    c.loop_start()
    ready.wait(10)
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    c.disconnect()
    c.loop_stop()
    return {"republished": n[0]}


class EchoPeer:
    def __init__(self, port: int, topic: str) -> None:
        cfg = json.dumps({"host": HOST, "port": port, "topic": topic})
        argv = [sys.executable, "-m", "tests.bench_alerts", "_echo", cfg]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("echo peer did not start")

    def close(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.communicate(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------ Node-RED

NODE_RED_FUNC = r"""
const S = context.get('series');
const p = msg.payload;
if (p === null || typeof p !== 'object' || typeof p.value !== 'number') return null;
const parts = msg.topic.split('/');            // plant/{line}/{equipment}/{sensor}
const eq = parts[2], sensor = parts[3], v = p.value;
const key = eq + '/' + sensor;
let s = S.get(key);
if (s === undefined) {
    s = {buf: new Float64Array(100), n: 0, i: 0, sum: 0, sq: 0, active: false, normal: 0};
    S.set(key, s);
}
let z = 0;
if (s.n >= 30) {
    const mean = s.sum / s.n;
    const sd = Math.sqrt(Math.max(s.sq / s.n - mean * mean, 1e-12));
    z = (v - mean) / sd;
}
const breach = (eq.startsWith('probe-') && sensor === 'pressure' && v > 100) || Math.abs(z) > 3;
if (s.n === 100) { const old = s.buf[s.i]; s.sum -= old; s.sq -= old * old; } else { s.n++; }
s.buf[s.i] = v; s.i = (s.i + 1) % 100; s.sum += v; s.sq += v * v;
let state = null;
if (breach) {
    s.normal = 0;
    if (!s.active) { s.active = true; state = 'raised'; }
} else if (s.active && ++s.normal >= 5) {
    s.active = false; state = 'cleared';
}
if (state === null) return null;
msg.topic = 'nodered/events/' + eq + '/' + sensor;
msg.payload = JSON.stringify({equipment: eq, sensor: sensor, state: state,
    severity: v > 200 ? 'critical' : 'high', value: v, z: z, ts: p.ts});
return msg;
"""


def node_red_flow() -> list[dict[str, Any]]:
    return [
        {"id": "tab", "type": "tab", "label": "bench: z-score alerts"},
        {"id": "broker", "type": "mqtt-broker", "name": "bench broker",
         "broker": "${MQTT_HOST}", "port": "${MQTT_PORT}", "clientid": "",
         "autoConnect": True, "usetls": False, "protocolVersion": "4", "keepalive": "60",
         "cleansession": True},
        {"id": "in", "type": "mqtt in", "z": "tab", "name": "readings",
         "topic": "plant/+/+/+", "qos": "1", "datatype": "json", "broker": "broker",
         "nl": False, "rap": True, "rh": 0, "inputs": 0, "wires": [["zscore"]]},
        {"id": "zscore", "type": "function", "z": "tab", "name": "z-score + threshold",
         "func": NODE_RED_FUNC, "outputs": 1, "noerr": 0,
         "initialize": "context.set('series', new Map());", "finalize": "", "libs": [],
         "wires": [["out"]]},
        {"id": "out", "type": "mqtt out", "z": "tab", "name": "alert events", "topic": "",
         "qos": "1", "retain": "false", "broker": "broker", "wires": []},
    ]  # fmt: skip


def node_red_exe() -> tuple[str | None, str]:
    """(path of red.js, how it was found); installs it with npm if missing."""
    red = NODE_RED_DIR / "node_modules" / "node-red" / "red.js"
    node = find_binary("node")
    if node is None:
        return None, "node not installed"
    if red.exists():
        return str(red), "cached"
    npm = find_binary("npm")
    if npm is None:
        return None, "npm not installed"
    NODE_RED_DIR.mkdir(parents=True, exist_ok=True)
    _say(f"  installing Node-RED with npm into {NODE_RED_DIR} ...")
    try:
        out = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix",
             str(NODE_RED_DIR), "node-red"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"npm install node-red failed: {e}"
    if out.returncode != 0 or not red.exists():
        return None, f"npm install node-red failed: {(out.stderr or out.stdout)[-300:]}"
    return str(red), "installed now"


class NodeRed:
    """Node-RED running `node_red_flow()` against the broker; `close()` stops it."""

    def __init__(self, red_js: str, port: int, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        flows = workdir / "flows.json"
        flows.write_text(json.dumps(node_red_flow()))
        node = find_binary("node") or "node"
        env = dict(os.environ, MQTT_HOST=HOST, MQTT_PORT=str(port))
        self.log_path = workdir / "node-red.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        argv = [node, red_js, "--userDir", str(workdir), "--port", str(free_port()), str(flows)]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=workdir, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while b"Connected to broker" not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_bytes()[-500:].decode(errors="replace")
                self.close()
                raise RuntimeError(f"Node-RED did not connect:\n{tail}")
            time.sleep(0.2)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -------------------------------------------------------------------- noisy case


class Probe:
    """Publishes the spikes and records when each responder's event for them arrives."""

    def __init__(self, port: int) -> None:
        self.sent: dict[str, float] = {}  # probe equipment -> spike publish time
        self.got: dict[str, dict[str, float]] = {r: {} for r in RESPONDERS}
        self.background_alerts = 0  # the gateway's alert messages for other equipment
        self.counting = False
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-probe-sub")
        self.sub.on_message = self._on_message
        self.sub.on_subscribe = lambda *a: self._subscribed.set()
        self.sub.connect(HOST, port, keepalive=60)
        self.sub.subscribe([("alerts/#", 1), ("echo/events/#", 1), ("nodered/events/#", 1)])
        self.sub.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("probe: no SUBACK")
        self.pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-probe-pub")
        self.pub.connect(HOST, port, keepalive=60)
        self.pub.loop_start()

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        prefix, _, rest = m.topic.partition("/")
        kind, _, rest = rest.partition("/")
        eq = rest.partition("/")[0]
        if not eq.startswith("probe-"):
            if prefix == "alerts" and self.counting:
                self.background_alerts += 1
            return
        if kind != "events":
            return
        who = {"alerts": "gateway", "echo": "echo", "nodered": "nodered"}.get(prefix)
        if who is None:
            return
        if who != "echo":
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if orjson.loads(m.payload)["state"] != "raised":
                    return
        with self._lock:
            t0 = self.sent.get(eq)
            if t0 is not None and t >= t0:
                self.got[who].setdefault(eq, t)

    def warm(self, n: int) -> None:
        """WARM_READINGS normal readings on each probe series (fast, QoS 1)."""
        start_ms = int(time.time() * 1000) - 2 * WARM_READINGS
        infos = []
        for j in range(WARM_READINGS):
            for k in range(n):
                body = orjson.dumps({"value": NOISE[0], "ts": start_ms + j})
                infos.append(self.pub.publish(f"plant/probe/probe-{k:03d}/pressure", body, qos=1))
        for info in infos:
            info.wait_for_publish(30)

    def spike(self, k: int) -> None:
        eq = f"probe-{k:03d}"
        body = orjson.dumps({"value": SPIKE_VALUE, "ts": int(time.time() * 1000)})
        with self._lock:
            self.sent[eq] = time.monotonic()
        self.pub.publish(f"plant/probe/{eq}/pressure", body, qos=1)

    def close(self) -> None:
        for c in (self.pub, self.sub):
            c.disconnect()
            c.loop_stop()

    def result(self, who: str) -> dict[str, Any]:
        with self._lock:
            lat = sorted((self.got[who][eq] - t0) * 1000 for eq, t0 in self.sent.items()
                         if eq in self.got[who])  # fmt: skip
        return {
            "received": len(lat),
            "missing": len(self.sent) - len(lat),
            "p50_ms": round(_pct(lat, 50), 2) if lat else None,
            "p99_ms": round(_pct(lat, 99), 2) if lat else None,
            "max_ms": round(lat[-1], 2) if lat else None,
        }


def gateway_toml() -> str:
    """GATEWAY_TOML plus the alarm-management settings this gateway has, turned off."""
    from gateway.config import AlertsConfig

    have = AlertsConfig.model_fields
    off = {k: v for k, v in ALARM_MANAGEMENT_OFF.items() if k in have}
    if not off:
        return GATEWAY_TOML
    return GATEWAY_TOML + "\n[alerts]\n" + "".join(f"{k} = {v!r}\n" for k, v in off.items())


def noisy(args: argparse.Namespace, gateway_src: str | None = None) -> dict[str, Any]:
    """The noisy-background case: the gateway, the echo peer and Node-RED in one run."""
    n_spikes, series, bg_rate = args.alert_spikes, args.alert_series, args.alert_bg_rate
    res: dict[str, Any] = {"series": series, "bg_rate_offered": bg_rate, "spikes": n_spikes,
                           "gateway_src": gateway_src or "this tree"}  # fmt: skip
    red_js, how = (None, "skipped (--no-node-red)") if args.no_node_red else node_red_exe()
    res["node_red"] = how
    env = {"PYTHONPATH": gateway_src} if gateway_src else None
    vm_ok = find_binary(VictoriaMetrics.binary) is not None
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-bench-alerts-")))
        broker = stack.enter_context(Mosquitto(["max_queued_messages 0"], autosave_interval=3600))
        if vm_ok:
            vm = stack.enter_context(VictoriaMetrics(["-dedup.minScrapeInterval=1ms"]))
            url, influx = vm.url, None
        else:
            url, influx = "http://127.0.0.1:9", {"enabled": False}
        res["tsdb"] = "VictoriaMetrics" if vm_ok else "none"
        toml = gateway_toml() if gateway_src is None else GATEWAY_TOML
        gw = stack.enter_context(
            GatewayProcess(broker.port, url, tmp / "gw", extra_toml=toml, env=env, influx=influx)
        )
        echo = EchoPeer(broker.port, "plant/probe/#")
        stack.callback(echo.close)
        red = None
        if red_js is not None:
            try:
                red = NodeRed(red_js, broker.port, tmp / "node-red")
                stack.callback(red.close)
            except RuntimeError as e:
                res["node_red"] = f"did not start: {e}"
                _say(f"  Node-RED {res['node_red']}")
        probe = Probe(broker.port)
        stack.callback(probe.close)
        common = {"host": broker.host, "port": broker.port, "prefix": "plant", "line": "noise",
                  "series": series, "batch": 1, "noise": NOISE}  # fmt: skip
        # warm-up: every series' window filled, as fast as it goes
        warm = Generators(1, readings=series * WARM_READINGS, rate=None,
                          start_at=time.time() + 0.2, **common)  # fmt: skip
        stack.callback(warm.kill)
        probe.warm(n_spikes)
        warm.results()
        gw.wait_metric("edge_queue_depth", lambda v: v == 0, 60, queue="publish")
        time.sleep(0.2)  # the paced run's timestamps start after the warm-up's
        settle_s = 4.0
        bg_s = settle_s + n_spikes * SPIKE_INTERVAL_S + MISSING_AFTER_S
        bg = Generators(1, readings=int(bg_rate * bg_s), rate=bg_rate,
                        start_at=time.time() + 0.2, **common)  # fmt: skip
        stack.callback(bg.kill)
        time.sleep(settle_s)  # the peers caught up with the warm-up, alerts flowing
        probe.counting = True
        t_spikes = time.monotonic()
        next_at = t_spikes
        for k in range(n_spikes):
            probe.spike(k)
            next_at += SPIKE_INTERVAL_S
            time.sleep(max(0.0, next_at - time.monotonic()))
        spikes_s = time.monotonic() - t_spikes
        probe.counting = False
        pubs = bg.results()
        time.sleep(0.5)
        sent_s = max(pubs[0]["t_sent"] - pubs[0]["t_first"], 1e-9)
        res["bg_rate"] = round(pubs[0]["readings"] / sent_s)
        res["background_alert_msgs_per_s"] = round(probe.background_alerts / spikes_s, 1)
        res["rejected"] = int(gw.metric("edge_readings_rejected_total"))
        for who in RESPONDERS:
            if who == "nodered" and red is None:
                continue
            res[who] = probe.result(who)
    for who in RESPONDERS:
        r = res.get(who)
        if r:
            _say(f"  {who}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms, "
                 f"missing {r['missing']}/{n_spikes}")  # fmt: skip
    _say(f"  background {res['bg_rate']:,} readings/s, gateway's own alert messages "
         f"{res['background_alert_msgs_per_s']}/s")  # fmt: skip
    return res


def storm_case(equipment: int, gateway_src: str | None = None) -> dict[str, Any]:
    from tests.bench_storm import storm

    r = storm(equipment, env={"PYTHONPATH": gateway_src} if gateway_src else None)
    r["gateway_src"] = gateway_src or "this tree"
    _say(f"  storm of {equipment:,}: last offline event {r['last_offline_event_s']} s, "
         f"last status {r['last_status_s']} s, spike {r['spike_latency_ms']} ms")  # fmt: skip
    return r


# ----------------------------------------------------------------------- reporting


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f}"


def table(res: dict[str, Any]) -> str:
    out = ["| Alert case | Result | Goal | Met |", "|---|---:|---:|:---:|"]

    def row(name: str, value: str, goal: str = "", ok: bool | None = None) -> None:
        mark = "" if ok is None else ("yes" if ok else "**no**")
        out.append(f"| {name} | {value} | {goal} | {mark} |")

    for key, label in (("throughput_unpaced", "unpaced"), ("throughput_paced", "paced")):
        t = res.get(key)
        if t:
            ok = t["rate_median"] >= 20_000 if key == "throughput_unpaced" else None
            row(f"Publisher, QoS 1 msgs/s to mosquitto ({label})", f"{t['rate_median']:,}",
                ">= 20,000" if ok is not None else "", ok)  # fmt: skip
    for tag, nz in (("", res.get("noisy")), (" (baseline)", res.get("noisy_baseline"))):
        if not nz:
            continue
        g, e, r = nz.get("gateway"), nz.get("echo"), nz.get("nodered")
        bg = f"{nz['bg_rate']:,}/s noisy, {nz['background_alert_msgs_per_s']} alert msgs/s"
        if g:
            ok = g["p99_ms"] is not None and g["p99_ms"] <= 10 and not g["missing"]
            row(f"Spike -> alert, gateway{tag}, p50 / p99 / max ms ({bg})",
                f"{_ms(g['p50_ms'])} / {_ms(g['p99_ms'])} / {_ms(g['max_ms'])}",
                "p99 <= 10, none missing", ok)  # fmt: skip
            row(f"  missing{tag}", str(g["missing"]))
        if e:
            row(f"  echo peer{tag} (the floor), p50 / p99 ms",
                f"{_ms(e['p50_ms'])} / {_ms(e['p99_ms'])}")  # fmt: skip
        if g and e and g["p99_ms"] and e["p99_ms"]:
            ratio = g["p99_ms"] / e["p99_ms"]
            row(f"  gateway / echo peer p99{tag}", f"{ratio:.2f}", "<= 2", ratio <= 2)
        if r:
            row(f"  Node-RED{tag}, p50 / p99 ms (missing {r['missing']})",
                f"{_ms(r['p50_ms'])} / {_ms(r['p99_ms'])}")  # fmt: skip
            if g and g["p99_ms"] and r["p99_ms"]:
                ratio = g["p99_ms"] / r["p99_ms"]
                row(f"  gateway / Node-RED p99{tag}", f"{ratio:.2f}", "<= 0.25", ratio <= 0.25)
        else:
            row(f"  Node-RED{tag}", nz.get("node_red", "n/a"))
    for tag, st in (("", res.get("storm")), (" (baseline)", res.get("storm_baseline"))):
        if not st:
            continue
        n = st["equipment"]
        row(
            f"Storm of {n:,}{tag}: last offline event (s after the first)",
            f"{st['last_offline_event_s']:.2f}",
            "<= 2",
            st["last_offline_event_s"] <= 2,
        )
        row(f"  last status message (s){tag}", f"{st['last_status_s']:.2f}", "<= 2",
            st["last_status_s"] <= 2)  # fmt: skip
        sp = st["spike_latency_ms"]
        row(f"  critical spike 0.2 s into the storm (ms){tag}", _ms(sp), "<= 100",
            sp is not None and sp <= 100)  # fmt: skip
        row(
            f"  offline events / storm status messages received{tag}",
            f"{st['offline_events_received']:,} / {st['storm_status_received']:,}",
        )
    return "\n".join(out)


def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "loadavg_start": os.getloadavg()}  # fmt: skip
    t0 = time.monotonic()
    _say("bench alerts: publisher throughput")
    res["throughput_unpaced"] = publisher_throughput(args.publish_messages, pace=False)
    res["throughput_paced"] = publisher_throughput(args.publish_messages, pace=True)
    base = args.baseline_src
    if base:
        _say(f"bench alerts: noisy background, baseline gateway from {base}")
        res["noisy_baseline"] = noisy(args, base)
    _say("bench alerts: noisy background")
    res["noisy"] = noisy(args)
    if base:
        _say(f"bench alerts: storm, baseline gateway from {base}")
        res["storm_baseline"] = storm_case(args.storm_equipment, base)
    _say("bench alerts: storm")
    res["storm"] = storm_case(args.storm_equipment)
    res["loadavg_end"] = os.getloadavg()
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    """The options of these cases (tests/bench.py takes them too)."""
    ap.add_argument("--alert-series", type=int, default=2_000, help="noisy background: series")
    ap.add_argument("--alert-bg-rate", type=float, default=5_000.0,
                    help="noisy background: readings/s")  # fmt: skip
    ap.add_argument("--alert-spikes", type=int,
                    help="noisy background: spikes (default 200, --quick 60)")  # fmt: skip
    ap.add_argument("--publish-messages", type=int, default=50_000,
                    help="publisher throughput: messages per run")  # fmt: skip
    ap.add_argument("--storm-equipment", type=int, default=10_000, help="storm size")
    ap.add_argument("--no-node-red", action="store_true", help="skip the Node-RED peer")
    ap.add_argument("--baseline-src", metavar="DIR",
                    help="also run the gateway cases with the gateway from DIR")  # fmt: skip


def finish_args(a: argparse.Namespace) -> None:
    if a.alert_spikes is None:
        a.alert_spikes = 60 if a.quick else 200
    if a.baseline_src:
        a.baseline_src = str(Path(a.baseline_src).resolve())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_echo":  # child process
        print(json.dumps(echo_peer(json.loads(argv[1]))), flush=True)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench-alerts-results.json")
    add_args(ap)
    a = ap.parse_args(argv)
    finish_args(a)
    res = run(a)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"\n(full results in {a.out}; {res['elapsed_s']:.0f} s; load average "
          f"{', '.join(f'{x:.2f}' for x in res['loadavg_start'])} at the start)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
