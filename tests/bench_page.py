"""What the operator page costs the pipeline (a script, not a test).

1. ``rings``: `Processor.process` (the pipeline's own batch step) over the messages of
   tests/bench_core.py, with ``[http] series_points = 0`` (no rings: `latest` only, as
   before) and the default 120, alternated, best of `--repeat`: µs per reading.
2. ``history``: a storm of `--transitions` alert transitions recorded at once into the
   SQLite history (`gateway.daemon.history`) while a 1 ms ticker runs on the event loop:
   the time `record` took (what `Processor.emit` pays), the time until every row is
   in SQLite, and the event loop's worst lateness meanwhile (what the alert publisher,
   a task on the same loop, would have waited).

    python -m tests.bench_page --readings 200000 --transitions 10000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from typing import Any, cast

from adapters.base import BrokerLink
from gateway.config import HistoryConfig, HttpConfig, InfluxConfig, Settings
from gateway.core.alerts import Alert
from gateway.daemon.history import AlertHistory
from gateway.daemon.metrics import Metrics
from gateway.daemon.process import Processor
from gateway.daemon.publish import Publisher
from tests.bench_core import messages


def process_us(msgs: list[Any], points: int, per_batch: int = 1000) -> float:
    """µs per reading of the second half of `msgs` (the first half makes the series,
    their detector state and rings: the steady state is measured)."""
    s = Settings(influx=InfluxConfig(enabled=False), http=HttpConfig(series_points=points))
    p = Processor(s, Metrics(), Publisher(cast(BrokerLink, None)))
    half = len(msgs) // 2
    for i in range(0, half, per_batch):
        p.process(msgs[i : min(i + per_batch, half)])
    gc.collect()
    n = 0
    t0 = time.perf_counter()
    for i in range(half, len(msgs), per_batch):
        out, _ = p.process(msgs[i : i + per_batch])
        n += len(out)
    return (time.perf_counter() - t0) / n * 1e6


def bench_rings(readings: int, series: int, repeat: int) -> dict[str, Any]:
    msgs = messages(2 * readings, series, 1)
    best = {0: float("inf"), 120: float("inf")}
    for _ in range(repeat):
        for points in (0, 120):
            best[points] = min(best[points], process_us(msgs, points))
    return {
        "readings": readings,
        "series": series,
        "us_per_reading_no_rings": round(best[0], 3),
        "us_per_reading_rings_120": round(best[120], 3),
        "ring_cost_percent": round((best[120] / best[0] - 1) * 100, 1),
    }


def storm_alerts(n: int) -> list[Alert]:
    now = time.time()
    return [
        Alert(
            id=f"storm-{i}",
            equipment=f"storm-{i:05d}",
            sensor="",
            line="storm",
            kind="offline",
            severity="high",
            state="raised",
            value=None,
            z=None,
            mean=None,
            std=None,
            threshold=None,
            ts=int(now * 1e9),
            raised_at=now,
            updated_at=now,
            message=f"storm-{i:05d} offline: no data for 30 s",
        )
        for i in range(n)
    ]


async def bench_history(transitions: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        h = AlertHistory(HistoryConfig(), tmp)
        assert await h.start()
        lateness = 0.0
        stop = False

        async def ticker() -> None:
            nonlocal lateness
            while not stop:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                lateness = max(lateness, time.perf_counter() - t - 0.001)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        lateness = 0.0
        alerts = storm_alerts(transitions)
        t0 = time.perf_counter()
        h.record(alerts)
        record_s = time.perf_counter() - t0
        while h.rows < transitions:
            await asyncio.sleep(0.001)
        stored_s = time.perf_counter() - t0
        stop = True
        await tick
        rows = len(await h.query(limit=transitions))
        await h.close()
    return {
        "transitions": transitions,
        "record_ms": round(record_s * 1000, 2),
        "all_in_sqlite_ms": round(stored_s * 1000, 1),
        "loop_max_lateness_ms": round(lateness * 1000, 1),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--transitions", type=int, default=10_000)
    a = ap.parse_args(argv)
    gc.set_threshold(50_000, 20, 100)
    print(json.dumps({"rings": bench_rings(a.readings, a.series, a.repeat)}))
    print(json.dumps({"history": asyncio.run(bench_history(a.transitions))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
