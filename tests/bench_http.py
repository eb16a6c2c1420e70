"""Benchmark (not a test): readings/s through ``POST /api/v2/write`` with 5,000-line bodies.

Starts a private mosquitto and VictoriaMetrics and `edge-gateway run` with
``[http_ingest]`` on, builds `--bodies` bodies of `--lines` lines each (one numeric
field a line, 100 equipment x 5 sensors, ms timestamps), and POSTs them from
`--clients` concurrent aiohttp clients. Prints

- readings/s answered 204 (each 204 means: normalized, scored, in the spool, fsynced),
- readings/s until all are queryable in VictoriaMetrics.

Bodies are built before the clock starts. Run:
``.venv/bin/python -m tests.bench_http [--bodies N] [--lines L] [--clients C] [--gzip]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import tempfile
import time
import uuid

import aiohttp

from tests.harness import GatewayProcess
from tests.servers import Mosquitto, VictoriaMetrics

TOKEN = "bench-token"
TOML = f'[http_ingest]\nenabled = true\ntoken = "{TOKEN}"\n'


def bodies(run: str, n: int, lines: int) -> list[bytes]:
    base_ms = (int(time.time()) - 3600) * 1000
    out = []
    for b in range(n):
        rows = []
        for i in range(lines):
            k = b * lines + i
            eq, sensor = k % 100, (k // 100) % 5
            rows.append(
                f"bench,equipment={run}-{eq},line=L1 s{sensor}={20 + (k % 37) / 4} "
                f"{base_ms + k // 500}"
            )
        out.append("\n".join(rows).encode())
    return out


async def post_all(url: str, payloads: list[bytes], clients: int, gz: bool) -> float:
    headers = {"Authorization": f"Token {TOKEN}"}
    if gz:
        headers["Content-Encoding"] = "gzip"
        payloads = [gzip.compress(p, 1) for p in payloads]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for p in payloads:
        queue.put_nowait(p)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            while True:
                async with session.post(url, data=body, headers=headers) as resp:
                    if resp.status == 204:
                        break
                    if resp.status not in (429, 503):
                        raise RuntimeError(f"{resp.status}: {await resp.text()}")
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))

    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bodies", type=int, default=40)
    ap.add_argument("--lines", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--gzip", action="store_true")
    args = ap.parse_args(argv)
    run = f"b{uuid.uuid4().hex[:6]}"
    payloads = bodies(run, args.bodies, args.lines)
    n = args.bodies * args.lines
    with (
        tempfile.TemporaryDirectory() as tmp,
        Mosquitto() as broker,
        VictoriaMetrics() as vm,
        GatewayProcess(broker.port, vm.url, tmp, extra_toml=TOML) as gw,
    ):
        url = f"{gw.url}/api/v2/write?org=plant&bucket=factory&precision=ms"
        t0 = time.perf_counter()
        answered = asyncio.run(post_all(url, payloads, args.clients, args.gzip))
        match = vm.selector("readings_value", source="http")
        while True:
            vm.force_flush()
            if vm.count(match) >= n:
                break
            if time.perf_counter() - t0 > 300:
                raise TimeoutError("not all readings in VictoriaMetrics after 300 s")
            time.sleep(0.05)
        stored = time.perf_counter() - t0
        received = gw.metric("edge_readings_received_total", source="http")
    mb = sum(len(p) for p in payloads) / 1e6
    print(
        f"{args.bodies} bodies x {args.lines} lines ({mb:.1f} MB{', gzip' if args.gzip else ''}), "
        f"{args.clients} clients, {received:.0f} readings received:"
    )
    print(f"  all answered 204 (durable): {answered:.2f} s, {n / answered:,.0f} readings/s")
    print(f"  all in VictoriaMetrics:     {stored:.2f} s, {n / stored:,.0f} readings/s")


if __name__ == "__main__":
    main()
