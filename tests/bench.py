"""End-to-end benchmark (a script, not a test): throughput, alert latency, footprint.

    make bench        # = .venv/bin/python -m tests.bench [--quick] [--out FILE] [--profile DIR]

Starts a private mosquitto (tests.servers, persistence on, max_inflight_messages 1000),
a private VictoriaMetrics (``-dedup.minScrapeInterval=1ms``, so a count of samples is a
count of distinct points) and ``edge-gateway run`` as a subprocess with detection on
(z-score on every series plus a threshold rule on every load sensor) and alerts published
on MQTT. Everything runs on this machine and shares its cores. Measures:

throughput
    Load comes from ``--publishers`` generator PROCESSES (a minimal MQTT 3.1.1 QoS 1
    publisher over a raw socket, in this file: it costs ~1 µs per message, so the load
    generator takes little of the CPU the gateway needs; the simulator's paho publisher
    tops out around 18k msgs/s per process). Payloads are the simulator's load format
    (``{"value", "ts"}`` or an array of them) on ``plant/{run}/eq-NNNN/s-NN``, over
    ``--series`` series; each run has its own ``line`` tag, so its points are counted
    apart. Method: (1) *saturation*: the generators offer a fixed number of readings
    as fast as they can; the broker queues what the gateway cannot take yet, and the
    rate is ``readings / (first publish -> last reading queryable in VictoriaMetrics)``,
    i.e. the gateway's drain rate while saturated; the median of ``--repeat`` runs.
    (2) *paced*: the generators offer 90 % of that rate for a fixed time; it passes when
    the last reading is queryable within 2 s after the last publish (the gateway kept
    up). Every run checks zero loss: distinct points in VictoriaMetrics == readings sent,
    and no reading rejected. The 100 readings/message run comes first and fills every
    series' detector window, so the 1 reading/message runs score warm series.
bare subscriber
    The same saturation load (on ``bare/...``, which the gateway does not subscribe to)
    into a paho subscriber process that only decodes each payload with orjson (QoS 1,
    auto-ack): the ceiling of a Python MQTT client here. Ratio = gateway / bare.
alert latency
    ``--bg-rate`` readings/s (1 per message) on all series in the background; spikes
    (value 1000 on a warm series, one series per spike) every 50 ms; latency = publish
    of the spike -> its first alert event received by an MQTT subscriber (same process,
    monotonic clock). p50 / p99 / max.
footprint
    Gateway CPU seconds (utime + stime from /proc) per million readings in the
    saturation runs; peak RSS (VmHWM) after all runs with ``--series`` active series;
    and, in this process with tracemalloc, the bytes per series of the detector state,
    the alert manager and the normalizer for ``--series`` series.

alert cases (tests/bench_alerts.py, after the above, each on a broker of its own)
    Publisher throughput (QoS 1 msgs/s); spike -> alert latency under 5,000 readings/s of
    Gaussian noise whose own alerts flow, with a trivial echo peer (the floor) and a
    Node-RED flow doing the same job in the same run; the 10,000-equipment storm.
    ``--alerts-only`` runs just these, ``--no-alerts`` skips them.

scale-out (tests/bench_scale.py, last, on servers of their own)
    1 gateway vs 2 shards (``--shard 0/2`` + ``1/2``) draining the same backlog at 100
    readings/message; failover time on a 3-node NATS cluster with every reading stored
    once. ``--scale-only`` runs just these, ``--no-scale`` skips them.

Results: a markdown table on stdout, everything as JSON in ``--out`` (default
``bench-results.json``). ``--profile DIR`` also records one py-spy profile of the
gateway per throughput mode (if py-spy is installed) and lists the top functions.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.parse
from pathlib import Path
from typing import Any

import orjson

from adapters.mqtt.fastpath import varlen
from simulator.payload import load_series
from tests.harness import GatewayProcess, MqttProbe
from tests.servers import Mosquitto, VictoriaMetrics, http_request

TARGETS = {
    "throughput_1": 25_000,
    "throughput_100": 120_000,
    "alert_p99_ms": 20.0,
    "rss_mb": 200.0,
    "state_bytes_per_series": 2048,
    "ratio": 0.7,
}

GATEWAY_TOML = """
[[rules]]
sensor = "s-*"
high = 95.0
low = 5.0
"""
# A broker queue deep enough for a whole saturation run (the default 1000 would drop);
# no periodic persistence snapshot of that queue while measuring.
BROKER_CONFIG = ["max_queued_messages 0"]
LOAD_LOW, LOAD_HIGH = 20.0, 80.0  # as simulator.mqtt: never a 3-sigma outlier
SPIKE_VALUE = 1000.0
WINDOW = 20_000  # unacknowledged messages per generator (packet ids are 16 bits)
CHUNK = 500  # messages per socket write


# ------------------------------------------------------------------ machine / procfs


def cpu_s(pid: int) -> float:
    """utime + stime of a process in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _busy_processes(interval: float = 1.0, min_pct: float = 5.0) -> list[str]:
    """Processes that used more than `min_pct` % of one core over `interval` seconds."""

    def sample() -> dict[int, tuple[str, float]]:
        out = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                name = (d / "comm").read_text().strip()
                out[int(d.name)] = (name, cpu_s(int(d.name)))
        return out

    a = sample()
    time.sleep(interval)
    b = sample()
    busy = []
    for pid, (name, t) in b.items():
        if pid in a and pid != os.getpid():
            pct = 100 * (t - a[pid][1]) / interval
            if pct >= min_pct:
                busy.append(f"{name}({pid}) {pct:.0f}%")
    return busy


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "mem_gb": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": version(["mosquitto", "-h"]) if shutil.which("mosquitto") else "?",
        "loadavg_start": os.getloadavg(),
        "busy_at_start": _busy_processes(),
    }


# ------------------------------------------------------------ raw MQTT load generator


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def _mqtt_connect(host: str, port: int, client_id: str) -> socket.socket:
    """CONNECT (MQTT 3.1.1, clean session, keepalive off) and wait for CONNACK."""
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack("!H", len(cid)) + cid
    sock.sendall(b"\x10" + varlen(len(body)) + body)
    ack = _recv_exact(sock, 4)
    if ack[0] != 0x20 or ack[3] != 0:
        raise ConnectionError(f"CONNACK refused: {ack!r}")
    sock.settimeout(None)
    return sock


def generate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Publish cfg["readings"] readings (QoS 1) on this generator's share of the series.

    Series `i` with ``i % parts == part`` belong to this generator, so timestamps of a
    series (epoch ms, strictly increasing) never collide between generators. With
    cfg["series_offset"] the series are ``load_series(offset + i)`` (another line's
    equipment, when two lines must not share equipment names).
    """
    parts, part, batch = cfg["parts"], cfg["part"], cfg["batch"]
    mine = [i for i in range(cfg["series"]) if i % parts == part]
    offset = cfg.get("series_offset", 0)  # load_series(offset + i): disjoint equipment
    topics = []
    for i in mine:
        eq, sensor = load_series(offset + i)
        t = f"{cfg['prefix']}/{cfg['line']}/{eq}/{sensor}".encode()
        topics.append(struct.pack("!H", len(t)) + t)
    total_msgs = cfg["readings"] // batch
    rate = cfg.get("rate")  # readings/s for this generator, None = as fast as possible
    sock = _mqtt_connect(cfg["host"], cfg["port"], f"bench-gen-{os.getpid()}")
    acked = [0, 0.0]  # PUBACKs (every packet from the broker is a 4-byte PUBACK), time

    def reader() -> None:
        got = 0
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            got += len(data)
            acked[1] = time.time()
            acked[0] = got // 4

    threading.Thread(target=reader, daemon=True).start()
    rng = random.Random(part)
    rnd = rng.random
    noise = cfg.get("noise")  # (mean, sd): Gaussian values instead of LOAD_LOW..LOAD_HIGH
    span = LOAD_HIGH - LOAD_LOW
    dumps = orjson.dumps
    last = [0] * len(mine)
    n = len(mine)
    msgs = 0
    delay = cfg["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    t_first = time.time()
    while msgs < total_msgs:
        now = time.time()
        k = min(CHUNK, total_msgs - msgs, WINDOW - (msgs - acked[0]))
        if rate:
            k = min(k, math.ceil((rate * (now - t_first)) / batch) - msgs)
        if k <= 0:
            time.sleep(0.001)
            continue
        now_ms = int(now * 1000)
        out = []
        for _ in range(k):
            s = msgs % n
            first = last[s] + 1 if last[s] >= now_ms else now_ms
            last[s] = first + batch - 1
            if batch == 1:
                v = rng.gauss(*noise) if noise else LOAD_LOW + span * rnd()
                payload = dumps({"value": round(v, 2), "ts": first})
            else:
                payload = dumps(
                    [
                        {"value": round(LOAD_LOW + span * rnd(), 2), "ts": first + j}
                        for j in range(batch)
                    ]
                )
            mid = msgs % 65535 + 1
            tp = topics[s]
            out.append(b"\x32" + varlen(len(tp) + 2 + len(payload)))
            out.append(tp)
            out.append(mid.to_bytes(2, "big"))
            out.append(payload)
            msgs += 1
        sock.sendall(b"".join(out))
    t_sent = time.time()
    deadline = time.monotonic() + 120
    while acked[0] < msgs and time.monotonic() < deadline:
        time.sleep(0.002)
    sock.close()
    return {
        "messages": msgs,
        "readings": msgs * batch,
        "acked": acked[0],
        "t_first": t_first,
        "t_sent": t_sent,
        "t_acked": acked[1],
    }


class Generators:
    """`parts` generator processes sharing one run; `results()` waits for them."""

    def __init__(self, parts: int, **cfg: Any) -> None:
        self.procs = []
        for part in range(parts):
            c = dict(cfg, parts=parts, part=part)
            if c.get("rate"):
                c["rate"] = c["rate"] / parts
            c["readings"] = cfg["readings"] // parts
            argv = [sys.executable, "-m", "tests.bench", "_gen", json.dumps(c)]
            self.procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE))

    def results(self, timeout: float = 300) -> list[dict[str, Any]]:
        out = []
        for p in self.procs:
            stdout, _ = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"load generator exited with {p.returncode}")
            out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        return out

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ------------------------------------------------------------------ bare subscriber


def bare_subscriber(cfg: dict[str, Any]) -> dict[str, Any]:
    """A paho subscriber that only decodes payloads; stops at cfg["readings"]."""
    import paho.mqtt.client as mqtt

    done = threading.Event()
    subscribed = threading.Event()
    st = {"messages": 0, "readings": 0, "t_first": 0.0, "t_last": 0.0}
    want = cfg["readings"]
    loads = orjson.loads

    def on_message(c: Any, u: Any, m: Any) -> None:
        data = loads(m.payload)
        st["readings"] += len(data) if type(data) is list else 1
        st["messages"] += 1
        st["t_last"] = time.time()
        if not st["t_first"]:
            st["t_first"] = st["t_last"]
        if st["readings"] >= want:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{os.getpid()}")
    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(cfg["host"], cfg["port"], keepalive=60)
    c.subscribe(cfg["topic"], qos=1)
    c.loop_start()
    subscribed.wait(10)
    print("ready", flush=True)
    last: float = -1
    while not done.wait(5):  # stop when complete, or after 5 s without progress
        if st["readings"] == last:
            break
        last = st["readings"]
    c.disconnect()
    c.loop_stop()
    return st


# ---------------------------------------------------------------------- VictoriaMetrics


def vm_count(vm: VictoriaMetrics, line: str) -> int:
    """Distinct points (dedup 1 ms) of series readings_value{line=...}."""
    q = f'sum(count_over_time(readings_value{{line="{line}"}}[1d]))'
    qs = urllib.parse.urlencode({"query": q, "time": f"{time.time() + 3600:.3f}"})
    status, body = http_request(f"{vm.url}/api/v1/query?{qs}", timeout=30)
    if status != 200:
        raise RuntimeError(f"VictoriaMetrics query -> {status}: {body[:200]!r}")
    result = json.loads(body)["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


# ------------------------------------------------------------------------ measurements


class Bench:
    def __init__(self, args: argparse.Namespace, broker: Mosquitto, vm: VictoriaMetrics,
                 gw: GatewayProcess) -> None:  # fmt: skip
        self.args = args
        self.broker = broker
        self.vm = vm
        self.gw = gw
        assert gw.pid is not None
        self.pid = gw.pid
        self.runs = 0

    def _others_cpu(self) -> tuple[float, float]:
        """CPU seconds of the broker and the TSDB so far (they share the cores)."""
        assert self.broker.proc is not None and self.vm.proc is not None
        return cpu_s(self.broker.proc.pid), cpu_s(self.vm.proc.pid)

    def _tag(self, name: str) -> str:
        self.runs += 1
        return f"{name}-{self.runs}"

    def wait_written(self, target: float, stall_s: float = 15.0) -> float:
        """Poll the gateway's written counter until `target`; the time it got there."""
        last, since = -1.0, time.monotonic()
        while True:
            v = self.gw.metric("edge_readings_written_total")
            if v >= target:
                return time.time()
            if v != last:
                last, since = v, time.monotonic()
            elif time.monotonic() - since > stall_s:
                return 0.0
            time.sleep(0.05)

    def load_run(
        self, name: str, batch: int, readings: int, rate: float | None = None,
        profile: Path | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """One run through the gateway: offer, wait until all queryable, check loss."""
        a = self.args
        readings -= readings % (batch * a.publishers)
        line = self._tag(name)
        gw = self.gw
        written0 = gw.metric("edge_readings_written_total")
        rejected0 = gw.metric("edge_readings_rejected_total")
        cpu0 = cpu_s(self.pid)
        others0 = self._others_cpu()
        gens = Generators(
            a.publishers, host=self.broker.host, port=self.broker.port, prefix="plant",
            line=line, series=a.series, batch=batch, readings=readings, rate=rate,
            start_at=time.time() + 0.3,
        )  # fmt: skip
        spy = _start_profile(self.pid, profile) if profile else None
        try:
            t_written = self.wait_written(written0 + readings)
            cpu1 = cpu_s(self.pid)
            others1 = self._others_cpu()
            pubs = gens.results()
        finally:
            gens.kill()
            if spy is not None:
                _stop_profile(spy)
        # first time every reading is queryable (VM makes rows searchable on flush)
        t_done, distinct = 0.0, 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            self.vm.force_flush()
            distinct = vm_count(self.vm, line)
            if distinct >= readings:
                t_done = time.time()
                break
            if not t_written:
                break
            time.sleep(0.05)
        t_first = min(p["t_first"] for p in pubs)
        t_pub_end = max(p["t_acked"] or p["t_sent"] for p in pubs)
        rejected = gw.metric("edge_readings_rejected_total") - rejected0
        e2e = (t_done - t_first) if t_done else float("nan")
        r = {
            "name": name,
            "line": line,
            "batch": batch,
            "readings": readings,
            "offered_rate": round(readings / max(t_pub_end - t_first, 1e-9)),
            "target_rate": rate,
            "e2e_s": round(e2e, 3),
            "rate": round(readings / e2e) if t_done else 0,
            "distinct_points": distinct,
            "lost": readings - distinct,
            "rejected": int(rejected),
            "unacked_publishes": sum(p["messages"] - p["acked"] for p in pubs),
            "gateway_cpu_s": round(cpu1 - cpu0, 2),
            "cpu_s_per_million": round((cpu1 - cpu0) / readings * 1e6, 2),
            "broker_cpu_s_per_million": round((others1[0] - others0[0]) / readings * 1e6, 2),
            "tsdb_cpu_s_per_million": round((others1[1] - others0[1]) / readings * 1e6, 2),
            "lag_after_last_publish_s": round(t_done - t_pub_end, 3) if t_done else None,
            "rss_peak_mb_so_far": round(proc_status_kb(self.pid, "VmHWM") / 1024, 1),
        }
        r["zero_loss"] = r["lost"] == 0 and r["rejected"] == 0 and bool(t_done)
        _say(
            f"  {name}: {readings} readings, batch {batch}, offered {r['offered_rate']}/s -> "
            f"{r['rate']}/s end to end ({e2e:.2f} s), lost {r['lost']}, "
            f"{r['cpu_s_per_million']} cpu-s/M (broker {r['broker_cpu_s_per_million']}, "
            f"TSDB {r['tsdb_cpu_s_per_million']})"
        )
        return r

    def throughput(self, batch: int, readings: int) -> dict[str, Any]:
        a = self.args
        name = f"sat{batch}"
        runs = []
        for i in range(a.repeat):
            prof = Path(a.profile) / f"gateway-{batch}-per-msg" if a.profile and i == 0 else None
            runs.append(self.load_run(name, batch, readings, profile=prof))
        ok = [r for r in runs if r["zero_loss"]]
        median = statistics.median(r["rate"] for r in runs)
        paced_rate = 0.9 * median
        paced_readings = int(paced_rate * a.paced_s)
        paced = self.load_run(f"paced{batch}", batch, paced_readings, rate=paced_rate)
        paced["kept_up"] = bool(
            paced["zero_loss"] and paced["lag_after_last_publish_s"] is not None
            and paced["lag_after_last_publish_s"] <= 2.0
        )  # fmt: skip
        return {
            "batch": batch,
            "rate_median": round(median),
            "rates": [r["rate"] for r in runs],
            "zero_loss": len(ok) == len(runs) and paced["zero_loss"],
            "cpu_s_per_million_median": statistics.median(r["cpu_s_per_million"] for r in runs),
            "paced": paced,
            "runs": runs,
        }

    def bare(self, readings: int) -> dict[str, Any]:
        """The same saturation load into a bare paho subscriber process."""
        a = self.args
        readings -= readings % a.publishers
        line = self._tag("bare")
        cfg = {"host": self.broker.host, "port": self.broker.port, "topic": f"bare/{line}/#",
               "readings": readings}  # fmt: skip
        argv = [sys.executable, "-m", "tests.bench", "_bare", json.dumps(cfg)]
        sub = subprocess.Popen(argv, stdout=subprocess.PIPE)
        assert sub.stdout is not None
        if sub.stdout.readline().strip() != b"ready":
            raise RuntimeError("bare subscriber did not start")
        cpu0 = cpu_s(sub.pid)
        gens = Generators(
            a.publishers, host=self.broker.host, port=self.broker.port, prefix="bare",
            line=line, series=a.series, batch=1, readings=readings, rate=None,
            start_at=time.time() + 0.3,
        )  # fmt: skip
        try:
            pubs = gens.results()
            cpu1 = cpu_s(sub.pid)
            out, _ = sub.communicate(timeout=120)
        finally:
            gens.kill()
            if sub.poll() is None:
                sub.kill()
        st = json.loads(out.decode().strip().splitlines()[-1])
        t_first = min(p["t_first"] for p in pubs)
        e2e = st["t_last"] - t_first
        r = {
            "readings": readings,
            "received": st["readings"],
            "e2e_s": round(e2e, 3),
            "rate": round(st["readings"] / e2e) if e2e > 0 else 0,
            "cpu_s_per_million": round((cpu1 - cpu0) / readings * 1e6, 2),
        }
        _say(f"  bare paho subscriber: {r['received']}/{readings} readings, {r['rate']}/s")
        return r

    def latency(self) -> dict[str, Any]:
        """Spikes on warm series under background load; publish -> alert event."""
        a = self.args
        n = a.spikes
        interval = 0.05
        bg_s = n * interval + 8  # + up to 5 s for the online storm to drain
        line = self._tag("lat")
        recv: dict[tuple[str, str], float] = {}
        lock = threading.Lock()

        sub = MqttProbe(self.broker.port, [])
        base_on_message = sub.client.on_message

        def on_message(c: Any, u: Any, m: Any) -> None:
            t = time.monotonic()
            with contextlib.suppress(ValueError, KeyError):
                ev = orjson.loads(m.payload)
                key = (ev["equipment"], ev["sensor"])
                with lock:
                    recv.setdefault(key, t)
            if base_on_message is not None:
                base_on_message(c, u, m)

        sub.client.on_message = on_message
        sub.subscribe("alerts/events/#")
        pub = MqttProbe(self.broker.port, [])
        bg_readings = int(a.bg_rate * bg_s)
        gens = Generators(
            a.publishers, host=self.broker.host, port=self.broker.port, prefix="plant",
            line=line, series=a.series, batch=1, readings=bg_readings, rate=a.bg_rate,
            start_at=time.time() + 0.2,
        )  # fmt: skip
        sent: dict[tuple[str, str], float] = {}
        cpu0 = cpu_s(self.pid)
        try:
            time.sleep(1.5)  # background running
            # Series idle since the last run (> offline_after_s) come back online now:
            # measure steady state, after those status and alert publishes went out.
            t_storm = time.monotonic()
            while time.monotonic() - t_storm < 5:
                if self.gw.metric("edge_queue_depth", queue="publish") == 0:
                    break
                time.sleep(0.1)
            storm_s = time.monotonic() - t_storm
            step = max(1, a.series // n)
            for k in range(n):
                eq, sensor = load_series((k * step + 7) % a.series)
                payload = orjson.dumps({"value": SPIKE_VALUE})
                t0 = time.monotonic()
                pub.client.publish(f"plant/{line}/{eq}/{sensor}", payload, qos=1)
                sent[(eq, sensor)] = t0
                time.sleep(interval)
            pubs = gens.results()
            time.sleep(1.0)
        finally:
            gens.kill()
            cpu1 = cpu_s(self.pid)
            pub.close()
            sub.close()
        lat = sorted((recv[k] - t0) * 1000 for k, t0 in sent.items() if k in recv and recv[k] >= t0)
        bg_rate = sum(p["readings"] for p in pubs) / max(
            max(p["t_sent"] for p in pubs) - min(p["t_first"] for p in pubs), 1e-9
        )
        r = {
            "spikes": n,
            "alerts_received": len(lat),
            "background_rate": round(bg_rate),
            "p50_ms": round(_pct(lat, 50), 2) if lat else None,
            "p99_ms": round(_pct(lat, 99), 2) if lat else None,
            "max_ms": round(lat[-1], 2) if lat else None,
            "gateway_cpu_pct": round(100 * (cpu1 - cpu0) / (bg_s + 1), 1),
            "online_storm_drained_s": round(storm_s, 2),
        }
        _say(
            f"  alert latency at {r['background_rate']}/s: p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms ({len(lat)}/{n} alerts)"
        )
        return r


def _pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def _start_profile(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        _say("  (py-spy not installed: no profile)")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [exe, "record", "-p", str(pid), "-r", "200", "--nonblocking", "-f", "raw",
            "-o", str(out.with_suffix(".txt")), "--threads"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_profile(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(timeout=30)


def profile_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_n: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        frames = [f.split(" (")[0] + " " + f.split(" (")[-1].rstrip(")").split(":")[0]
                  for f in stack.split(";")[1:]]  # fmt: skip
        if not frames:
            continue
        total += k
        self_n[frames[-1]] += k
        for f in set(frames):
            incl[f] += k

    def pct(c: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * v / total, 1)) for f, v in c.most_common(top)]

    return {"samples": total, "self": pct(self_n), "inclusive": pct(incl)}


# ------------------------------------------------------------------ state footprint


def state_footprint(series: int, per_series: int) -> dict[str, Any]:
    """Bytes per series of detector, alert, normalizer and line-protocol state (tracemalloc).

    Feeds `per_series` readings to each of `series` series through the same classes and
    settings the gateway uses, and measures what each part keeps once the readings are
    gone. The normalizer's de-dup memory is reported apart: it is bounded by
    ``[validation] dedup_window`` (200k keys), not by the number of series.
    """
    from gateway.config import Rule, Settings
    from gateway.core.alerts import AlertManager
    from gateway.core.detectors import Detectors, OfflineTracker, RuleSet
    from gateway.core.lineproto import ReadingLines
    from gateway.core.model import RawMessage, Reading, Score
    from gateway.core.normalize import Normalizer

    settings = Settings(rules=[Rule(sensor="s-*", high=95.0, low=5.0)])
    rules = RuleSet(settings.rules)
    start_ms = int(time.time() * 1000) - per_series
    rnd = random.Random(1).random
    msgs = []
    for i in range(series):
        eq, sensor = load_series(i)
        body = [{"value": round(20 + 60 * rnd(), 2), "ts": start_ms + j} for j in range(per_series)]
        msgs.append(RawMessage(f"plant/load/{eq}/{sensor}", orjson.dumps(body), 0.0,
                               time.time_ns()))  # fmt: skip

    def bounds(e: str, s: str, li: str) -> tuple[float | None, float | None]:
        rule = rules.resolve(e, s, li)
        return rule.min, rule.max

    def mem() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    gc.collect()
    tracemalloc.start()
    m0 = mem()
    normalizer = Normalizer(settings.mqtt.subscriptions, settings.validation, bounds=bounds)
    readings: list[Reading] = []
    for m in msgs:
        readings.extend(normalizer.normalize(m)[0])
    m1 = mem()
    detectors = Detectors(settings.detection, rules)
    score = detectors.score
    latest: dict[tuple[str, str], tuple[Reading, Score]] = {}  # as Gateway.latest
    for r in readings:
        latest[(r.equipment, r.sensor)] = (r, score(r))
    m2 = mem()
    alerts = AlertManager(settings.alerts)
    offline = OfflineTracker(settings.alerts.offline_after_s)
    for r, sc in latest.values():
        offline.seen(r.equipment, r.line, 0.0)
        alerts.seen(r.equipment, r.ts)
        alerts.observe(r, sc, 0.0)
    m3 = mem()
    lines = ReadingLines()
    lines.build(list(latest.values()))
    m4 = mem()
    n_readings = len(readings)
    del latest
    m5 = mem()
    del readings
    m6 = mem()
    dedup_entries = len(normalizer.recent)
    normalizer.recent.clear()
    m7 = mem()
    tracemalloc.stop()
    n = series
    reading_bytes = (m5 - m6) / max(1, n_readings - n)  # one Reading (kept by `latest`)
    latest_b = (m4 - m5) / n + reading_bytes
    det_b = (m2 - m1 - (m4 - m5)) / n
    alerts_b = (m3 - m2) / n
    lp_b = (m4 - m3) / n
    norm_b = (m7 - m0) / n - det_b - alerts_b - lp_b
    keep = (detectors, alerts, offline, lines, normalizer)  # alive until measured
    del keep
    return {
        "series": n,
        "readings_per_series": per_series,
        "detector_bytes_per_series": round(det_b),
        "alerts_bytes_per_series": round(alerts_b),
        "normalizer_bytes_per_series": round(norm_b),
        "lineproto_cache_bytes_per_series": round(lp_b),
        "latest_map_bytes_per_series": round(latest_b),
        "total_bytes_per_series": round(det_b + alerts_b + norm_b + lp_b + latest_b),
        "dedup_entries": dedup_entries,
        "dedup_bytes": m6 - m7,
    }


# ----------------------------------------------------------------------- reporting


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.2f}{unit}"
    return f"{int(v):,}{unit}"


def table(res: dict[str, Any]) -> str:
    t1, t100 = res["throughput_1"], res["throughput_100"]
    lat, fp, bare = res["latency"], res["footprint"], res["bare"]
    rows = [
        ("Throughput, 1 reading/msg, zero loss (readings/s)", t1["rate_median"],
         f">= {TARGETS['throughput_1']:,}", t1["rate_median"] >= TARGETS["throughput_1"]
         and t1["zero_loss"]),
        ("  paced at 90 %: kept up, lag after last publish (s)",
         t1["paced"]["lag_after_last_publish_s"], "<= 2", t1["paced"]["kept_up"]),
        ("Throughput, 100 readings/msg, zero loss (readings/s)", t100["rate_median"],
         f">= {TARGETS['throughput_100']:,}", t100["rate_median"] >= TARGETS["throughput_100"]
         and t100["zero_loss"]),
        ("  paced at 90 %: kept up, lag after last publish (s)",
         t100["paced"]["lag_after_last_publish_s"], "<= 2", t100["paced"]["kept_up"]),
        (f"Alert latency p50 at {lat['background_rate']:,}/s (ms)", lat["p50_ms"], "", None),
        (f"Alert latency p99 at {lat['background_rate']:,}/s (ms)", lat["p99_ms"],
         f"<= {TARGETS['alert_p99_ms']:g}",
         lat["p99_ms"] is not None and lat["p99_ms"] <= TARGETS["alert_p99_ms"]
         and lat["alerts_received"] == lat["spikes"]),
        ("Alert latency max (ms)", lat["max_ms"], "", None),
        ("Gateway CPU s per million readings, 1/msg", t1["cpu_s_per_million_median"], "", None),
        ("Gateway CPU s per million readings, 100/msg", t100["cpu_s_per_million_median"], "",
         None),
        (f"Peak RSS with {res['series_active']:,} series (MB)", res["rss_peak_mb"],
         f"<= {TARGETS['rss_mb']:g}", res["rss_peak_mb"] <= TARGETS["rss_mb"]),
        ("Detector state per series (bytes)", fp["detector_bytes_per_series"],
         f"<= {TARGETS['state_bytes_per_series']:,}",
         fp["detector_bytes_per_series"] <= TARGETS["state_bytes_per_series"]),
        ("All per-series state in the gateway (bytes; de-dup memory apart)",
         fp["total_bytes_per_series"], "", None),
        ("Bare paho subscriber, 1 reading/msg (readings/s)", bare["rate"], "", None),
        ("Gateway / bare subscriber, 1 reading/msg", res["ratio"], f">= {TARGETS['ratio']}",
         res["ratio"] >= TARGETS["ratio"]),
    ]  # fmt: skip
    out = ["| Measure | Result | Target | Met |", "|---|---:|---:|:---:|"]
    for name, v, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "**no**")
        out.append(f"| {name} | {_fmt(v)} | {target} | {mark} |")
    m = res["machine"]
    out.append("")
    out.append(
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gb']} GB, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['mosquitto']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_end'])}; busy at start: "
        f"{', '.join(m['busy_at_start']) or 'nothing'}."
    )
    return "\n".join(out)


# ---------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests import bench_alerts, bench_scale  # (they import this module)

    res: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick}
    res["machine"] = machine()
    res["params"] = {k: v for k, v in vars(args).items() if k != "out"}
    t_start = time.monotonic()
    if args.alerts_only or args.scale_only:
        if args.alerts_only:
            res["alerts"] = bench_alerts.run(args)
        if args.scale_only:
            res["scale"] = bench_scale.run(args)
        res["machine"]["loadavg_end"] = os.getloadavg()
        res["elapsed_s"] = round(time.monotonic() - t_start, 1)
        return res
    with (
        tempfile.TemporaryDirectory(prefix="edge-bench-", dir=args.workdir) as tmp,
        Mosquitto(BROKER_CONFIG, autosave_interval=3600) as broker,
        VictoriaMetrics(["-dedup.minScrapeInterval=1ms"]) as vm,
        GatewayProcess(broker.port, vm.url, tmp, extra_toml=GATEWAY_TOML) as gw,
    ):
        b = Bench(args, broker, vm, gw)
        _say(f"bench: gateway pid {gw.pid}, broker :{broker.port}, VictoriaMetrics :{vm.port}")
        # 100/msg first: it also fills every series' detector window
        res["throughput_100"] = b.throughput(100, args.readings_100)
        res["throughput_1"] = b.throughput(1, args.readings_1)
        res["bare"] = b.bare(args.readings_1)
        res["latency"] = b.latency()
        assert gw.pid is not None
        res["rss_peak_mb"] = round(proc_status_kb(gw.pid, "VmHWM") / 1024, 1)
        res["rss_now_mb"] = round(proc_status_kb(gw.pid, "VmRSS") / 1024, 1)
        time.sleep(1.1)  # the series gauge is updated once a second
        res["series_active"] = int(gw.metric("edge_series_active"))
        res["gateway_log_errors"] = [
            line for line in gw.log_text().splitlines() if " ERROR " in line or "Traceback" in line
        ][:10]
    res["ratio"] = round(res["throughput_1"]["rate_median"] / max(res["bare"]["rate"], 1), 3)
    _say("bench: detector state footprint (tracemalloc)")
    res["footprint"] = state_footprint(args.series, args.state_readings)
    if not args.no_alerts:
        res["alerts"] = bench_alerts.run(args)
    if not args.no_scale:
        res["scale"] = bench_scale.run(args)
    if args.profile:
        res["profiles"] = {
            p.stem: profile_summary(p) for p in sorted(Path(args.profile).glob("*.txt"))
        }
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tests import bench_alerts, bench_scale

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (< 2 min)")
    ap.add_argument("--out", default="bench-results.json", help="JSON results file")
    ap.add_argument("--profile", metavar="DIR", help="py-spy profiles of the gateway here")
    ap.add_argument("--publishers", type=int, default=2, help="load generator processes")
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, help="saturation runs per mode (median)")
    ap.add_argument("--readings-1", type=int, help="readings per 1/msg saturation run")
    ap.add_argument("--readings-100", type=int, help="readings per 100/msg saturation run")
    ap.add_argument("--paced-s", type=float, help="seconds of offered load in a paced run")
    ap.add_argument("--bg-rate", type=float, default=5000.0, help="latency background load")
    ap.add_argument("--spikes", type=int, help="alert latency samples")
    ap.add_argument("--state-readings", type=int, help="readings per series, footprint")
    ap.add_argument("--workdir", help="where the gateway's spool lives (default: temp dir)")
    ap.add_argument("--alerts-only", action="store_true", help="only the alert cases")
    ap.add_argument("--no-alerts", action="store_true", help="skip the alert cases")
    ap.add_argument("--scale-only", action="store_true",
                    help="only the scale-out cases (tests/bench_scale.py)")  # fmt: skip
    ap.add_argument("--no-scale", action="store_true", help="skip the scale-out cases")
    bench_alerts.add_args(ap)
    bench_scale.add_args(ap)
    a = ap.parse_args(argv)
    bench_alerts.finish_args(a)
    bench_scale.finish_args(a)
    quick = a.quick
    defaults = {
        "repeat": 1 if quick else 3,
        "readings_1": 120_000 if quick else 400_000,
        "readings_100": a.series * (100 if quick else 200),
        "paced_s": 6.0 if quick else 12.0,
        "spikes": 40 if quick else 200,
        "state_readings": 40 if quick else 100,
    }
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_gen", "_bare"):  # child processes of the benchmark
        cfg = json.loads(argv[1])
        result = generate(cfg) if argv[0] == "_gen" else bare_subscriber(cfg)
        print(json.dumps(result), flush=True)
        return 0
    from tests import bench_alerts, bench_scale

    args = parse_args(argv)
    res = run(args)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    if not args.alerts_only and not args.scale_only:
        print(table(res))
    if "alerts" in res:
        print()
        print(bench_alerts.table(res["alerts"]))
    if "scale" in res:
        print()
        print(bench_scale.table(res["scale"]))
    print(f"\n(full results in {args.out}; {res['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
