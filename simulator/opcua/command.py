"""The ``edge-sim opcua`` sub-command: `add_parser`, `options_from_args`, `serve`, `run_cli`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulator.anomalies import KINDS, AnomalyConfig, AnomalyEvent, Injection
from simulator.opcua.server import LOAD_LINE, PlantServer, SimOptions

SPIKE_AT_SERIES = "device-001:temperature"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``opcua`` sub-command to `edge-sim`'s sub-parsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "opcua",
        help="serve the seed plant (and optional load variables) as an OPC UA server",
        description="An OPC UA server with the seed plant under Objects/Plant/<line>/"
        "<equipment>/<sensor>; values change at the profile periods with anomaly injection.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4840)
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    p.add_argument("--quiet", action="store_true", help="do not print anomaly events")
    p.add_argument("--status-file", type=Path, metavar="FILE", help="JSON server-side status")
    plant = p.add_argument_group("plant")
    plant.add_argument("--no-plant", action="store_true", help="do not expose the seed plant")
    plant.add_argument("--seed", type=int, default=0)
    plant.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    plant.add_argument("--anomaly-rate", type=float, default=0.0, metavar="P")
    plant.add_argument("--anomaly-kinds", default=",".join(KINDS))
    plant.add_argument(
        "--inject", action="append", default=[], metavar="KIND:EQUIPMENT[:SENSOR]@SECONDS"
    )
    plant.add_argument("--spike-at", type=float, action="append", default=[], metavar="SECONDS")
    plant.add_argument("--dropout-s", type=float, default=45.0, metavar="SECONDS")
    load = p.add_argument_group("load")
    load.add_argument("--load", type=int, default=0, metavar="N", help="N extra variables")
    load.add_argument("--load-interval-ms", type=float, default=100.0, metavar="MS")
    load.add_argument(
        "--load-name",
        default=LOAD_LINE,
        metavar="NAME",
        help="folder Plant/NAME/NAME-NNN/vNN for the load variables (default load)",
    )
    load.add_argument(
        "--rate",
        type=float,
        metavar="N",
        help="load value changes/s in total (sets --load-interval-ms; --load defaults to 1000)",
    )
    load.add_argument(
        "--load-wait-items",
        type=int,
        default=0,
        metavar="K",
        help="start changing load variables once K monitored items exist",
    )
    load.add_argument("--load-duration", type=float, metavar="SECONDS")
    sec = p.add_argument_group("security")
    sec.add_argument(
        "--secure", action="store_true", help="serve Basic256Sha256 Sign/SignAndEncrypt only"
    )
    sec.add_argument("--cert-dir", type=Path, default=Path("opcua-certs"), metavar="DIR")
    sec.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        metavar="CERT",
        help="trust only these client certificates (default: the generated client cert)",
    )
    sec.add_argument(
        "--user", action="append", default=[], metavar="NAME:PASSWORD", help="require a login"
    )
    return p


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """`SimOptions` from parsed arguments; ValueError with a message on bad input."""
    kinds = tuple(k.strip() for k in args.anomaly_kinds.split(",") if k.strip())
    injections = [Injection.parse(s) for s in args.inject]
    injections += [Injection.parse(f"spike:{SPIKE_AT_SERIES}@{t}") for t in args.spike_at]
    if args.speed <= 0:
        raise ValueError("--speed must be > 0")
    if args.load < 0 or args.load_interval_ms <= 0:
        raise ValueError("--load must be >= 0 and --load-interval-ms > 0")
    load, interval_ms = args.load, args.load_interval_ms
    name = args.load_name
    if not name or not name.isprintable() or any(c in name for c in " ./+#:"):
        raise ValueError(f"--load-name must be a plain name, got {args.load_name!r}")
    if args.rate is not None:
        if args.rate <= 0:
            raise ValueError("--rate must be > 0")
        load = load or 1000
        interval_ms = load * 1000.0 / args.rate
    if args.no_plant and (injections or args.anomaly_rate):
        raise ValueError("--inject/--spike-at/--anomaly-rate need the plant (no --no-plant)")
    users: dict[str, str] = {}
    for u in args.user:
        name, sep, pw = u.partition(":")
        if not sep or not name:
            raise ValueError(f"--user must be NAME:PASSWORD, got {u!r}")
        users[name] = pw
    return SimOptions(
        host=args.host,
        port=args.port,
        seed=args.seed,
        speed=args.speed,
        anomalies=AnomalyConfig(rate=args.anomaly_rate, kinds=kinds, dropout_s=args.dropout_s),
        injections=injections,
        plant=not args.no_plant,
        load=load,
        load_name=args.load_name,
        load_interval_ms=interval_ms,
        load_wait_items=args.load_wait_items,
        load_duration_s=args.load_duration,
        secure=args.secure,
        cert_dir=args.cert_dir,
        trust=list(args.trust),
        users=users,
        status_file=args.status_file,
        duration_s=args.duration,
    )


async def serve(opts: SimOptions, on_event: Callable[[AnomalyEvent], None] | None = None) -> None:
    """Run the server until SIGINT/SIGTERM (or ``duration_s``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    server = PlantServer(opts, on_event)
    await server.run(stop)
    s = server.status()
    print(f"edge-sim: served {s['changes']} value changes", flush=True)


def run_cli(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    on_event: Callable[[AnomalyEvent], None] | None = None,
) -> int:
    """Entry point for ``edge-sim opcua``: 0 on a clean stop, 1 if the port is taken."""
    try:
        opts = options_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    if opts.secure:
        print(f"edge-sim: certificates in {opts.cert_dir}", file=sys.stderr, flush=True)
    try:
        asyncio.run(serve(opts, None if args.quiet else on_event))
    except OSError as e:
        print(f"edge-sim: cannot serve on {opts.host}:{opts.port}: {e}", file=sys.stderr)
        return 1
    return 0
