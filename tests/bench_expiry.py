"""Series expiry at scale (issue 20): the sweep's cost per tick, and RSS under churn.

No I/O: the daemon's `Processor` (a publisher that only queues) with a simulated
gateway clock. Two measurements:

- ``sweep``: `--series` series, all idle; the ticks that expire them (`Processor.tick`,
  which sweeps `SWEEP_PER_TICK` series, forgets their state, prunes the caches): the
  longest tick, the total, and a tick when nothing is idle.
- ``churn``: `--distinct` distinct series in waves of `--max-series` new ones, with
  ``series_idle_s`` shorter than the pause between waves: RSS and ``edge_series_active``
  after each wave, series accepted, refused, expired. Per-equipment state (deadman,
  last_seen, status) stays until ``forget_after_s`` (30 days): 8 series per equipment
  here, so 12,500 new equipment per wave of 100,000 series.

    python -m tests.bench_expiry sweep --series 100000
    python -m tests.bench_expiry churn --distinct 1000000 --max-series 100000
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import cast

import orjson

from adapters.base import BrokerLink
from gateway.config import Settings
from gateway.core.model import RawMessage
from gateway.daemon.expiry import SWEEP_PER_TICK
from gateway.daemon.metrics import Metrics
from gateway.daemon.process import Processor
from gateway.daemon.publish import Publisher

S = 1_000_000_000
PER_BATCH = 1000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def processor(max_series: int, idle_s: float) -> Processor:
    s = Settings.model_validate(
        {
            "validation": {"max_series": max_series, "series_idle_s": idle_s},
            "detection": {"equipment": {"enabled": True}},
        }
    )
    p = Processor(s, Metrics(), Publisher(cast(BrokerLink, None)))
    # no broker here: what would be published (a status per new equipment) is dropped,
    # not queued for ever
    p.publisher.put = lambda *a, **k: None  # type: ignore[method-assign]
    return p


def feed(p: Processor, first: int, n: int, now_ns: int) -> int:
    """One reading for each of series first..first+n (8 sensors per equipment)."""
    body = orjson.dumps(1.0)  # no payload ts: stamped with the receive time
    mono = time.monotonic()
    accepted = 0
    for i in range(first, first + n, PER_BATCH):
        batch = [
            RawMessage(f"plant/l{k % 10}/eq{k // 8}/s{k % 8}", body, mono, now_ns)
            for k in range(i, min(i + PER_BATCH, first + n))
        ]
        out, _ = p.process(batch)
        accepted += len(out)
    return accepted


def tick_until_swept(p: Processor, now: float) -> tuple[int, float, float]:
    """Ticks for one whole sweep cycle at `now`: (ticks, longest s, total s)."""
    reg = p.normalizer.series
    ticks, longest, total = 0, 0.0, 0.0
    for _ in range(reg.count // SWEEP_PER_TICK + 3):
        t0 = time.perf_counter()
        p.tick(now, time.monotonic())
        dt = time.perf_counter() - t0
        ticks += 1
        longest = max(longest, dt)
        total += dt
    return ticks, longest, total


def sweep(a: argparse.Namespace) -> None:
    p = processor(a.series, a.idle_s)
    now = time.time()
    t0 = time.perf_counter()
    feed(p, 0, a.series, int(now * S))
    print(f"{a.series} series fed in {time.perf_counter() - t0:.1f} s, RSS {rss_mb():.0f} MB")
    gc.collect()
    ticks, longest, total = tick_until_swept(p, now + a.idle_s / 2)
    print(
        f"nothing idle: {ticks} ticks, longest {longest * 1e3:.2f} ms, "
        f"total {total * 1e3:.1f} ms (series left {p.detectors.series_count})"
    )
    ticks, longest, total = tick_until_swept(p, now + a.idle_s + 1)
    print(
        f"all idle: {ticks} ticks, longest {longest * 1e3:.2f} ms, total {total * 1e3:.1f} ms; "
        f"expired {p.normalizer.series.expired}, series left {p.detectors.series_count}, "
        f"RSS {rss_mb():.0f} MB"
    )


def churn(a: argparse.Namespace) -> None:
    p = processor(a.max_series, a.idle_s)
    now = time.time()
    wave = a.max_series
    accepted = 0
    gc.collect()
    print(f"start: RSS {rss_mb():.0f} MB")
    t0 = time.perf_counter()
    for w in range(a.distinct // wave):
        t = now + w * (a.idle_s + 2)
        accepted += feed(p, w * wave, wave, int(t * S))
        p.tick(t, time.monotonic())
        active = p.detectors.series_count
        tick_until_swept(p, t + a.idle_s + 1)  # the wave falls silent
        gc.collect()
        print(
            f"wave {w + 1}: edge_series_active {active} after the wave, "
            f"{p.detectors.series_count} after the silence, RSS {rss_mb():.0f} MB"
        )
    refused = p.metrics.readings_rejected.labels("series_limit")._value.get()
    print(
        f"{a.distinct} distinct series in {time.perf_counter() - t0:.0f} s: accepted "
        f"{accepted}, refused {refused:.0f}, expired {p.normalizer.series.expired}, "
        f"RSS {rss_mb():.0f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a1 = sub.add_parser("sweep")
    a1.add_argument("--series", type=int, default=100_000)
    a1.add_argument("--idle-s", type=float, default=60.0)
    a2 = sub.add_parser("churn")
    a2.add_argument("--distinct", type=int, default=1_000_000)
    a2.add_argument("--max-series", type=int, default=100_000)
    a2.add_argument("--idle-s", type=float, default=5.0)
    a = ap.parse_args(argv)
    gc.set_threshold(50_000, 20, 100)
    sweep(a) if a.cmd == "sweep" else churn(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
