"""The pure-core microbenchmark: normalize -> detect -> alerts -> line protocol.

No I/O: raw MQTT messages (JSON objects with a payload ts, `--batch` readings per
message as an array) over `--series` series go through `Gateway.process`'s core steps
and `ReadingLines.build`, as the pipeline runs them. Prints µs per reading (best of
`--repeat` runs) and GC collections. Compare runs on the same machine in one sitting.

    python -m tests.bench_core --readings 1000000 --series 10000 --batch 1
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time

import orjson

from gateway.config import Settings
from gateway.core.alerts import AlertManager
from gateway.core.detectors import Detectors, RuleSet
from gateway.core.lineproto import ReadingLines
from gateway.core.model import RawMessage
from gateway.core.normalize import Normalizer


def messages(readings: int, series: int, batch: int, seed: int = 0) -> list[RawMessage]:
    rnd = random.Random(seed)
    t0 = time.time_ns() - 3_600 * 10**9
    out: list[RawMessage] = []
    n = 0
    m = 0
    while n < readings:
        s = m % series
        k = min(batch, readings - n)
        items = [
            {"value": round(50 + rnd.gauss(0, 1), 3), "ts": (t0 // 10**6) + n + j} for j in range(k)
        ]
        body = orjson.dumps(items[0] if k == 1 else items)
        topic = f"plant/line-{s % 10}/eq-{s // 8:05d}/s-{s % 8}"
        out.append(RawMessage(topic, body, time.monotonic(), time.time_ns(), "mqtt", 0))
        n += k
        m += 1
    return out


def run_once(msgs: list[RawMessage], per_batch: int = 1000) -> tuple[float, int, tuple[int, ...]]:
    s = Settings()
    rules = RuleSet(s.rules)
    norm = Normalizer(s.mqtt.subscriptions, s.validation)
    det = Detectors(s.detection, rules)
    alerts = AlertManager(s.alerts)
    lines = ReadingLines()
    gc.collect()
    before = tuple(st["collections"] for st in gc.get_stats())
    n = 0
    t0 = time.perf_counter()
    now = time.time()
    for i in range(0, len(msgs), per_batch):
        out = []
        for msg in msgs[i : i + per_batch]:
            readings, _ = norm.normalize(msg)
            for r in readings:
                alerts.seen(r.equipment, r.ts)
                sc = det.score(r)
                alerts.observe(r, sc, now)
                out.append((r, sc))
        for equipment, line, ep in det.drain_episodes():
            alerts.episode(equipment, line, ep, now)
        lines.build(out)
        n += len(out)
    dt = time.perf_counter() - t0
    after = tuple(st["collections"] for st in gc.get_stats())
    return dt, n, tuple(a - b for a, b in zip(after, before, strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1, help="readings per message")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gc-threshold", type=int, default=50_000, help="as the daemon sets it")
    a = ap.parse_args(argv)
    gc.set_threshold(a.gc_threshold, 20, 100)
    msgs = messages(a.readings, a.series, a.batch)
    best = None
    for _ in range(a.repeat):
        dt, n, cols = run_once(msgs)
        us = dt / n * 1e6
        print(f"{n} readings in {dt:.2f} s: {us:.2f} µs per reading, GC collections {cols}")
        best = us if best is None else min(best, us)
    print(f"best: {best:.2f} µs per reading ({a.series} series, {a.batch} per message)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
