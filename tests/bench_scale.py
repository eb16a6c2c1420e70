"""Scale-out benchmark (a script, not a test, issue 17): 1 vs 2 shards, and broker failover.

    python -m tests.bench_scale [--quick] [--json FILE] [--only shards|failover]
    make bench        # tests/bench.py runs these cases last (--scale-only: just these)

Everything runs on this machine and shares its cores (broker, TSDB, load generator,
gateways); every server is a private one on free loopback ports (tests.servers).

shards
    One base config with two ``[[mqtt.subscriptions]]`` (``plant/line-a/+/+`` and
    ``plant/line-b/+/+``, 5,000 series each with disjoint equipment), detection on as in
    tests/bench.py. Run once as one gateway (``edge-gateway run``: both subscriptions)
    and once as two (``--shard 0/2`` + ``--shard 1/2``: one line each). Method: the
    *drain of a fixed backlog*. The gateway(s) start, connect and subscribe (persistent
    sessions), then are frozen with SIGSTOP; the load generators of tests/bench.py
    publish ``--scale-readings`` readings (100 per message, QoS 1, half per line), which
    the broker queues for them; at SIGCONT the clock starts, and the rate is
    ``readings / (SIGCONT -> last reading queryable in VictoriaMetrics)``. The
    generators have finished before the clock starts, so they take no CPU from the
    gateways while measured (at saturation they would), and neither process start-up
    (imports, state load) nor a first-message time is in the figure. Why a drain and
    not "the highest zero-loss offered rate": on a shared 2-core box a rate search
    takes many runs, each one's verdict moves with the neighbours' load, and the
    generator competes with what it measures; a drain is one number per run and
    counts zero loss exactly. Each round gets a fresh VictoriaMetrics (same port,
    empty data dir, ``-dedup.minScrapeInterval=1ms`` so a count is a count of distinct
    points) and only the sessions of the configuration measured exist on the broker
    (the other's are removed with a clean-session CONNECT). One unmeasured warm-up
    round per configuration, then ``--scale-repeat`` rounds, alternating the order
    (1, 2 / 2, 1 / ...). Reported: readings/s (median; also the *intake*, SIGCONT -> all
    readings received, i.e. acked into the spool: the store's writes lag it), the
    2-shard / 1-shard ratio (median of the per-round ratios), gateway CPU seconds per
    million readings, zero loss (distinct points == readings published, none rejected,
    none written twice: the gateways' written counters), and how the two cores were
    spent during the drain: each gateway, the broker, the TSDB, everything else on the
    machine (other users of the VM), and idle (/proc).
failover
    A 3-node NATS 2.9 cluster (JetStream, MQTT ``stream_replicas: 3``); the gateway
    lists all three nodes in ``[mqtt] servers`` (``reconnect_min_s = 0.2``,
    ``connect_timeout_s = 5``, as tests/integration/test_broker_cluster.py) and starts
    on node 1; one generator of tests/bench.py publishes ``--failover-rate`` readings/s
    (10 per message, QoS 1, 20 series) through node 3; 4 s in, node 1 is SIGKILLed.
    Failover time = the kill -> the gateway's ``/metrics`` showing
    ``edge_mqtt_connected`` 1 with another node's ``edge_mqtt_server`` 1 (polled every
    20 ms). After the load, every reading the cluster acknowledged must be stored
    exactly once: distinct (series, timestamp) points and the samples beyond them, in a
    VictoriaMetrics without de-duplication (tests.stores `stored`). A fresh cluster per
    run, ``--failover-runs`` runs, median.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench import (
    BROKER_CONFIG,
    GATEWAY_TOML,
    Generators,
    _fmt,
    _say,
    cpu_s,
    machine,
    vm_count,
)
from tests.harness import GatewayError, GatewayProcess, MqttProbe, to_toml
from tests.servers import HOST, Mosquitto, NatsCluster, VictoriaMetrics, find_binary, free_port
from tests.stores import VictoriaStore, stored

LINES = ("line-a", "line-b")
BATCH = 100  # readings per message in the shards case
BASE_ID = "bench-scale"
POLL_S = 0.1  # written-counter poll during a drain
STALL_S = 30.0  # no progress for this long: the drain failed

FO_BATCH = 10  # readings per message in the failover case (200 QoS 1 messages/s)
FO_SERIES = 20
FO_BEFORE_KILL_S = 4.0
FO_LOAD_S = 20.0  # the load lasts this long from its start (the kill is inside)
FO_BOUND_S = 60.0
FO_TOML = """
[mqtt]
servers = [{servers}]
reconnect_min_s = 0.2
connect_timeout_s = 5
"""


# ----------------------------------------------------------------------------- procfs


def machine_cpu() -> tuple[float, float, float]:
    """(busy, idle, steal) core-seconds of the whole machine so far (/proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    idle = f[3] + f[4]  # idle + iowait
    steal = f[7] if len(f) > 7 else 0
    busy = sum(f[:8]) - idle - steal  # guest time is already in user
    return busy / tck, idle / tck, steal / tck


def _cpu_or_zero(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        return cpu_s(pid)
    return 0.0


# ---------------------------------------------------------------------------- shards


def shards_toml() -> str:
    subs = "".join(
        f'[[mqtt.subscriptions]]\ntopic = "plant/{ln}/+/+"\n'
        'template = "plant/{line}/{equipment}/{sensor}"\n'
        for ln in LINES
    )
    return GATEWAY_TOML + subs


class Config:
    """One way to run the base config: one gateway (`shards` 1) or N shards of it."""

    def __init__(self, shards: int, broker: Mosquitto, vm: VictoriaMetrics, tmp: Path) -> None:
        self.shards = shards
        self.name = "1 shard" if shards == 1 else f"{shards} shards"
        base_port = free_port()
        self.gws: list[GatewayProcess] = []
        for k in range(shards):
            gw = GatewayProcess(
                broker.port, vm.url, tmp, client_id=f"{BASE_ID}-{shards}-{k}",
                extra_toml=shards_toml(), start=False, ready_timeout=60,
                args=["--shard", f"{k}/{shards}"] if shards > 1 else [],
            )  # fmt: skip
            # one base config: the same client id, spool dir and HTTP port in every file
            gw.config["mqtt"]["client_id"] = BASE_ID
            gw.config["spool"]["dir"] = str(tmp / "spool")
            gw.config["http"]["port"] = base_port
            gw.http_port = base_port + k
            gw.url = f"http://{HOST}:{gw.http_port}"
            gw.config_path.write_text(to_toml(gw.config) + "\n")
            self.gws.append(gw)

    @property
    def client_ids(self) -> list[str]:
        if self.shards == 1:
            return [BASE_ID]
        return [f"{BASE_ID}-shard{k}" for k in range(self.shards)]

    def start(self, wait: bool = True) -> None:
        for gw in self.gws:
            gw.start(wait=False)
        if wait:
            for gw in self.gws:
                gw.wait_ready(60)

    def stop(self) -> None:
        for gw in self.gws:
            if gw.running:
                try:
                    gw.stop(timeout=60)
                except GatewayError as e:
                    _say(f"  {e}")
            else:
                gw.kill()

    def counters(self) -> list[tuple[float, float]]:
        """(readings written, readings received) of each gateway (0, 0 before it serves)."""
        out = []
        for gw in self.gws:
            if not gw.running:
                raise GatewayError(f"gateway exited:\n{gw.log_tail()}")
            try:
                m = gw.metrics()
                out.append(
                    (
                        sum(x.value for x in m["edge_readings_written_total"]),
                        sum(x.value for x in m["edge_readings_received_total"]),
                    )
                )
            except (OSError, GatewayError, KeyError):
                out.append((0.0, 0.0))
        return out

    def signal(self, sig: int) -> None:
        """SIGSTOP freezes the gateways (the broker queues for them), SIGCONT resumes."""
        for gw in self.gws:
            if gw.pid is not None:
                os.kill(gw.pid, sig)

    def problems(self) -> list[str]:
        out = []
        for gw in self.gws:
            out += [ln for ln in gw.log_text().splitlines() if "ERROR" in ln or "Traceback" in ln]
        return out[:10]


class ShardBench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.broker = Mosquitto(BROKER_CONFIG, autosave_interval=3600, workdir=tmp / "broker")
        self.vm = VictoriaMetrics(["-dedup.minScrapeInterval=1ms"], workdir=tmp / "vm")

    def __enter__(self) -> ShardBench:
        self.broker.start()
        self.vm.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.vm.stop()
        self.broker.stop()

    def fresh_tsdb(self) -> None:
        self.vm.stop()
        shutil.rmtree(self.vm.data_dir, ignore_errors=True)
        self.vm.start()

    def wipe_sessions(self, client_ids: list[str]) -> None:
        """A clean-session CONNECT ends a client's persistent session (MQTT 3.1.1)."""
        for cid in client_ids:
            MqttProbe(self.broker.port, client_id=cid).close()

    def publish_backlog(self, readings: int) -> dict[str, Any]:
        """`readings` readings, half per line, into the (offline) persistent sessions."""
        a = self.args
        per_line = readings // len(LINES)
        per_series = a.series // len(LINES)
        gens = [
            Generators(
                max(1, a.publishers // len(LINES)), host=self.broker.host, port=self.broker.port,
                prefix="plant", line=ln, series=per_series, series_offset=i * per_series,
                batch=BATCH, readings=per_line, rate=None, start_at=time.time() + 0.3,
            )
            for i, ln in enumerate(LINES)
        ]  # fmt: skip
        try:
            pubs = [p for g in gens for p in g.results()]
        finally:
            for g in gens:
                g.kill()
        t0 = min(p["t_first"] for p in pubs)
        t1 = max(p["t_acked"] or p["t_sent"] for p in pubs)
        return {
            "readings": sum(p["readings"] for p in pubs),
            "unacked_publishes": sum(p["messages"] - p["acked"] for p in pubs),
            "publish_s": round(t1 - t0, 2),
        }

    def drain(self, cfg: Config, readings: int) -> dict[str, Any]:
        """One round: cfg's gateways frozen, a backlog queued for them, then the drain."""
        a = self.args
        unit = BATCH * len(LINES) * max(1, a.publishers // len(LINES))
        readings -= readings % unit
        self.fresh_tsdb()
        cfg.start()  # connected and subscribed (persistent sessions), state loaded
        time.sleep(1.0)  # past the start-up work
        assert self.broker.proc is not None and self.vm.proc is not None
        others = (self.broker.proc.pid, self.vm.proc.pid)

        def snap() -> dict[str, Any]:
            return {
                "t": time.time(),
                "gw": [_cpu_or_zero(gw.pid) for gw in cfg.gws],
                "broker": cpu_s(others[0]),
                "tsdb": cpu_s(others[1]),
                "machine": machine_cpu(),
            }

        snaps: list[dict[str, Any]] = []  # one per poll, with (written, received)
        frozen = True
        cfg.signal(signal.SIGSTOP)
        try:
            backlog = self.publish_backlog(readings)  # the broker queues all of it
            n = backlog["readings"]
            base = snap()
            t_start = base["t"]
            cfg.signal(signal.SIGCONT)
            frozen = False
            last, since = (-1.0, -1.0), time.monotonic()
            while True:  # intake: the gateways' counters
                time.sleep(POLL_S)
                cur = snap()
                counts = cfg.counters()
                cur["w"], cur["rx"] = sum(c[0] for c in counts), sum(c[1] for c in counts)
                snaps.append(cur)
                if cur["rx"] >= n:
                    break
                if (cur["w"], cur["rx"]) != last:
                    last, since = (cur["w"], cur["rx"]), time.monotonic()
                elif time.monotonic() - since > STALL_S:
                    break
            t_done, distinct = 0.0, 0
            last_d, since = -1, time.monotonic()
            while time.monotonic() - since < STALL_S:  # then the store, closely
                self.vm.force_flush()
                distinct = sum(vm_count(self.vm, ln) for ln in LINES)
                if distinct >= n:
                    t_done = time.time()
                    break
                if distinct != last_d:
                    last_d, since = distinct, time.monotonic()
                time.sleep(0.05)
            end = snap()
            per_gw_written = [c[0] for c in cfg.counters()]
            rejected = sum(gw.metric("edge_readings_rejected_total") for gw in cfg.gws)
        finally:
            if frozen:
                cfg.signal(signal.SIGCONT)
            cfg.stop()
        dt = (t_done - t_start) if t_done else float("nan")
        t_rx = next((x["t"] for x in snaps if x["rx"] >= n), float("nan"))
        wall = end["t"] - base["t"]
        gw_cpu = [e - b for e, b in zip(end["gw"], base["gw"], strict=True)]
        broker_cpu = end["broker"] - base["broker"]
        tsdb_cpu = end["tsdb"] - base["tsdb"]
        m_busy, m_idle, m_steal = (
            e - b for e, b in zip(end["machine"], base["machine"], strict=True)
        )
        ours = sum(gw_cpu) + broker_cpu + tsdb_cpu
        r = {
            "config": cfg.name,
            "shards": cfg.shards,
            "readings": n,
            "backlog": backlog,
            "drain_s": round(dt, 3),
            "rate": round(n / dt) if dt == dt and dt > 0 else 0,
            # readings/s taken from the broker (acked once in the spool or the store)
            "intake_rate": round(n / (t_rx - t_start)) if t_rx == t_rx else 0,
            "distinct_points": distinct,
            "written": [int(x) for x in per_gw_written],
            "lost": n - distinct,
            "duplicated": max(0, int(sum(per_gw_written)) - distinct),
            "rejected": int(rejected),
            "gateway_cpu_s": [round(x, 2) for x in gw_cpu],
            "cpu_s_per_million": round(sum(gw_cpu) / n * 1e6, 2),
            "broker_cpu_s_per_million": round(broker_cpu / n * 1e6, 2),
            "tsdb_cpu_s_per_million": round(tsdb_cpu / n * 1e6, 2),
            # cores in use during the drain (2 = both cores busy all the time)
            "cores": {
                "gateways": [round(x / wall, 2) for x in gw_cpu],
                "broker": round(broker_cpu / wall, 2),
                "tsdb": round(tsdb_cpu / wall, 2),
                "everything_else": round(max(0.0, m_busy - ours) / wall, 2),
                "idle": round(m_idle / wall, 2),
                "steal": round(m_steal / wall, 2),
            },
            "problems": cfg.problems(),
            # (s since SIGCONT, written, received) every `POLL_S` until all received
            "timeline": [(round(x["t"] - t_start, 2), int(x["w"]), int(x["rx"])) for x in snaps],
            "queryable_after_received_s": round(t_done - t_rx, 3) if t_done else None,
        }
        r["zero_loss"] = bool(t_done) and r["lost"] == 0 and r["rejected"] == 0
        r["zero_loss"] = r["zero_loss"] and r["duplicated"] == 0
        c = r["cores"]
        _say(
            f"  {cfg.name}: {n:,} readings drained in {dt:.2f} s -> {r['rate']:,}/s "
            f"(intake {r['intake_rate']:,}/s), lost {r['lost']}, dup {r['duplicated']}, "
            f"{r['cpu_s_per_million']} gateway cpu-s/M; cores: gateways {c['gateways']}, "
            f"broker {c['broker']}, TSDB {c['tsdb']}, else {c['everything_else']}, "
            f"idle {c['idle']}"
        )
        return r


def shards_case(args: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="edge-bench-scale-", dir=args.workdir) as tmp,
        ShardBench(args, Path(tmp)) as sb,
    ):
        one = Config(1, sb.broker, sb.vm, Path(tmp))
        two = Config(2, sb.broker, sb.vm, Path(tmp))
        configs = {1: one, 2: two}
        warm = []
        for k in (1, 2):  # unmeasured: fills every series' detector window, warms caches
            _say(f"  warm-up, {configs[k].name}")
            sb.wipe_sessions(configs[3 - k].client_ids)
            warm.append(sb.drain(configs[k], args.scale_warmup))
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        ratios = []
        for i in range(args.scale_repeat):
            order = (1, 2) if i % 2 == 0 else (2, 1)
            for k in order:
                sb.wipe_sessions(configs[3 - k].client_ids)
                runs[k].append(sb.drain(configs[k], args.scale_readings))
            r1, r2 = runs[1][-1]["rate"], runs[2][-1]["rate"]
            ratios.append(round(r2 / r1, 3) if r1 else 0.0)
        sb.wipe_sessions(one.client_ids + two.client_ids)

    def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "rate_median": round(statistics.median(r["rate"] for r in rs)),
            "rates": [r["rate"] for r in rs],
            "intake_rate_median": round(statistics.median(r["intake_rate"] for r in rs)),
            "cpu_s_per_million_median": statistics.median(r["cpu_s_per_million"] for r in rs),
            "zero_loss": all(r["zero_loss"] for r in rs),
        }

    res = {
        "method": "drain of a pre-published backlog (100 readings/msg, QoS 1)",
        "readings_per_run": runs[1][0]["readings"],
        "series": args.series,
        "one": summary(runs[1]),
        "two": summary(runs[2]),
        "ratios": ratios,
        "ratio_median": statistics.median(ratios),
        "warmup": warm,
        "runs": runs[1] + runs[2],
    }
    res["ratio_of_medians"] = round(
        res["two"]["rate_median"] / max(1, res["one"]["rate_median"]), 3
    )
    return res


# -------------------------------------------------------------------------- failover


class PublisherLost(RuntimeError):
    """Node 3 closed the load generator's connection: which readings it acked is unknown."""


def failover_run(
    args: argparse.Namespace, vm: VictoriaMetrics, tmp: Path, i: int
) -> dict[str, Any]:
    t0 = time.monotonic()
    with NatsCluster(3) as cluster:
        cluster_start_s = time.monotonic() - t0
        first, _second, third = cluster.nodes
        servers = ", ".join(f'"{s}"' for s in cluster.servers)
        gw = GatewayProcess(
            first.port, vm.url, tmp / f"failover-{i}", client_id=f"bench-failover-{i}",
            extra_toml=GATEWAY_TOML + FO_TOML.format(servers=servers), ready_timeout=60,
        )  # fmt: skip
        line = f"failover-{i}-{int(time.time())}"
        rate = args.failover_rate
        readings = int(rate * FO_LOAD_S) // FO_BATCH * FO_BATCH
        gens = Generators(
            1, host=third.host, port=third.port, prefix="plant", line=line, series=FO_SERIES,
            batch=FO_BATCH, readings=readings, rate=rate, start_at=time.time() + 0.3,
        )  # fmt: skip
        try:
            if gw.metric("edge_mqtt_server", server=first.server) != 1:
                raise RuntimeError(f"gateway not on {first.server}:\n{gw.log_tail()}")
            time.sleep(0.3 + FO_BEFORE_KILL_S)
            t_kill = time.monotonic()
            cluster.kill(0)
            failover_s, now_on = float("nan"), ""
            while time.monotonic() - t_kill < FO_BOUND_S:
                with contextlib.suppress(OSError, GatewayError):
                    m = gw.metrics()
                    connected = sum(s.value for s in m.get("edge_mqtt_connected", []))
                    on = [s.labels.get("server", "") for s in m.get("edge_mqtt_server", [])
                          if s.value == 1]  # fmt: skip
                    if connected == 1 and on and on[0] != first.server:
                        failover_s, now_on = time.monotonic() - t_kill, on[0]
                        break
                time.sleep(0.02)
            try:
                pubs = gens.results(timeout=FO_LOAD_S + 180)
            except RuntimeError as e:  # the publishing node dropped the generator
                raise PublisherLost(f"{e}; node 3 log:\n{third.log_tail(12)}") from None
            acked = sum(p["acked"] for p in pubs) * FO_BATCH
            sent = sum(p["readings"] for p in pubs)
            store = VictoriaStore(vm)
            deadline = time.monotonic() + 60
            while store.count(line=line) < acked and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # anything beyond (a duplicate) has arrived too
            distinct, extra, per_series = stored(store, line=line)
            log = gw.log_text().splitlines()
            node_changes = sum("broker node changed" in ln for ln in log)
            # why it took that long: the gateway's broker lines (unavailable / changed)
            broker_log = [ln[:240] for ln in log if "mqtt: broker" in ln][:8]
        finally:
            gens.kill()
            with contextlib.suppress(GatewayError):
                gw.stop(timeout=30)
            if gw.running:
                gw.kill()
    r = {
        "failover_s": round(failover_s, 2),
        "moved_to": "node " + str(1 + cluster.servers.index(now_on)) if now_on else None,
        "readings_sent": sent,
        "readings_acked_by_cluster": acked,
        "stored_distinct": distinct,
        "lost": max(0, acked - distinct),
        "duplicated": extra,
        "series": len(per_series),
        "node_changes_logged": node_changes,
        "broker_log": broker_log,
        "cluster_start_s": round(cluster_start_s, 1),
        "problems": [ln for ln in gw.log_text().splitlines() if "Traceback" in ln][:5],
    }
    _say(
        f"  failover run {i + 1}: {r['failover_s']} s to {r['moved_to']}; {sent:,} readings "
        f"sent, {acked:,} acked, {distinct:,} stored, {r['lost']} lost, {extra} twice"
    )
    return r


def failover_case(args: argparse.Namespace) -> dict[str, Any]:
    if find_binary(NatsCluster.binary) is None:
        _say("  nats-server not installed: failover case skipped")
        return {"skipped": "nats-server not installed"}
    with (
        tempfile.TemporaryDirectory(prefix="edge-bench-failover-", dir=args.workdir) as tmp,
        VictoriaMetrics(workdir=Path(tmp) / "vm") as vm,  # no de-dup: duplicates show
    ):
        runs: list[dict[str, Any]] = []
        discarded: list[str] = []
        while len(runs) < args.failover_runs and len(discarded) < 3:
            try:
                runs.append(failover_run(args, vm, Path(tmp), len(runs) + len(discarded)))
            except PublisherLost as e:
                _say(f"  failover run discarded: {str(e).splitlines()[0]}")
                discarded.append(str(e))
    times = [r["failover_s"] for r in runs if r["failover_s"] == r["failover_s"]]
    return {
        "rate": args.failover_rate,
        "readings_per_message": FO_BATCH,
        "times_s": [r["failover_s"] for r in runs],
        "median_s": round(statistics.median(times), 2) if times else None,
        "stored": sum(r["stored_distinct"] for r in runs),
        "acked": sum(r["readings_acked_by_cluster"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "duplicated": sum(r["duplicated"] for r in runs),
        "exactly_once": all(r["lost"] == 0 and r["duplicated"] == 0 for r in runs),
        "runs": runs,
        # runs in which node 3 closed the publisher's connection (not measured, retried)
        "discarded": discarded,
    }


# ----------------------------------------------------------------------------- report


def table(res: dict[str, Any]) -> str:
    out = ["| Scale-out case | Result |", "|---|---:|"]
    for name in ("shards", "failover"):
        if "error" in res.get(name, {}):
            out.append(f"| {name} | failed: {res[name]['error'][:120]} |")
    s = res.get("shards")
    if s and "error" not in s:
        n = s["readings_per_run"]
        for key, label in (("one", "1 gateway"), ("two", "2 shards (`--shard 0/2` + `1/2`)")):
            x = s[key]
            runs = " / ".join(f"{v:,}" for v in x["rates"])
            out.append(f"| {label}, 100 readings/msg, drain of {n:,} (readings/s; runs {runs}) "
                       f"| {x['rate_median']:,} |")  # fmt: skip
            out.append(
                f"|   intake: readings/s taken from the broker | {x['intake_rate_median']:,} |"
            )
            out.append(
                f"|   gateway CPU s per million readings | {_fmt(x['cpu_s_per_million_median'])} |"
            )
            out.append(f"|   zero loss, none twice | {'yes' if x['zero_loss'] else '**no**'} |")
        rs = ", ".join(f"{v:.2f}" for v in s["ratios"])
        out.append(f"| 2 shards / 1 gateway (median of rounds {rs}) | {s['ratio_median']:.2f} |")
        for k in (1, 2):
            rr = [r for r in s["runs"] if r["shards"] == k]
            c = rr[len(rr) // 2]["cores"]
            gws = " + ".join(f"{g:.2f}" for g in c["gateways"])
            out.append(
                f"|   cores during a {k}-gateway drain: gateway {gws}, broker {c['broker']:.2f}, "
                f"TSDB {c['tsdb']:.2f}, rest of the VM {c['everything_else']:.2f}, idle "
                f"{c['idle']:.2f} | |"
            )
    f = res.get("failover")
    if f and "error" in f:
        pass
    elif f and "skipped" not in f:
        ts = " / ".join(f"{t:.2f}" for t in f["times_s"])
        out.append(f"| NATS 3-node failover, SIGKILL -> connected on another node (s; runs {ts}) "
                   f"| {_fmt(f['median_s'])} |")  # fmt: skip
        out.append(
            f"|   {f['rate']:,.0f} readings/s QoS 1: acked / stored once / lost / twice "
            f"| {f['acked']:,} / {f['stored']:,} / {f['lost']} / {f['duplicated']} |"
        )
        if f["discarded"]:
            out.append(
                f"|   runs discarded (node 3 closed the publisher) | {len(f['discarded'])} |"
            )
    elif f:
        out.append(f"| NATS failover | skipped: {f['skipped']} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------- main


def add_args(ap: argparse.ArgumentParser) -> None:
    """The options of these cases (tests/bench.py takes them too)."""
    ap.add_argument("--scale-readings", type=int,
                    help="shards: readings per drain (default 2 M; --quick 1 M)")  # fmt: skip
    ap.add_argument("--scale-repeat", type=int, help="shards: rounds (default 3; --quick 1)")
    ap.add_argument("--scale-warmup", type=int, help="shards: readings of the warm-up drains")
    ap.add_argument("--failover-runs", type=int, help="failover runs (default 3; --quick 1)")
    ap.add_argument("--failover-rate", type=float, default=2000.0, help="failover: readings/s")


def finish_args(a: argparse.Namespace) -> None:
    defaults = {
        "scale_readings": 1_000_000 if a.quick else 2_000_000,
        "scale_repeat": 1 if a.quick else 3,
        "scale_warmup": 300_000 if a.quick else 500_000,
        "failover_runs": 1 if a.quick else 3,
    }
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)


def run(args: argparse.Namespace, only: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "loadavg_start": os.getloadavg()}  # fmt: skip
    t0 = time.monotonic()
    cases = {"shards": shards_case, "failover": failover_case}
    for name, case in cases.items():
        if only in (None, name):
            _say(f"bench scale: {name}")
            try:
                res[name] = case(args)
            except Exception as e:  # one failed case must not lose the other's figures
                _say(f"  {name} failed: {e!r}")
                res[name] = {"error": repr(e)}
    res["loadavg_end"] = os.getloadavg()
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (~2 min)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--only", choices=("shards", "failover"))
    ap.add_argument("--publishers", type=int, default=2, help="load generator processes")
    ap.add_argument("--series", type=int, default=10_000, help="shards: series (both lines)")
    ap.add_argument("--workdir", help="where spools and servers live (default: temp dir)")
    add_args(ap)
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    finish_args(a)
    m = machine()
    res = run(a, a.only)
    res["machine"] = m
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"\n({res['elapsed_s']:.0f} s; load average "
          f"{', '.join(f'{x:.2f}' for x in res['loadavg_start'])} at the start)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
