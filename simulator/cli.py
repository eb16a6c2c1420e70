"""``edge-sim``: the equipment simulator's command line.

``edge-sim mqtt`` publishes the seed plant (SPEC §5) in real time; with ``--rate``
it runs load mode instead. ``edge-sim opcua`` serves the same plant as an OPC UA
server (`simulator.opcua`). Exit codes:
0 done or interrupted (Ctrl-C / SIGTERM print the totals), 1 broker unreachable,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import orjson

from simulator.anomalies import KINDS, AnomalyConfig, AnomalyEvent, Injection
from simulator.opcua import command as opcua_sim

SPIKE_AT_SERIES = "device-001:temperature"


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _nonneg_float(text: str) -> float:
    x = float(text)
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return x


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-sim", description="Factory equipment simulator.")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser(
        "mqtt",
        help="publish the seed plant (or synthetic load with --rate) to an MQTT broker",
        description="Publish the seed plant to plant/{line}/{equipment}/{sensor}; "
        "with --rate, publish synthetic load and report the achieved rate.",
    )
    conn = m.add_argument_group("broker")
    conn.add_argument("--host", default="127.0.0.1")
    conn.add_argument("--port", type=int, default=1883)
    conn.add_argument("--username")
    conn.add_argument(
        "--password", help="or set EDGE_SIM_PASSWORD (keeps it out of the process list)"
    )
    conn.add_argument("--client-id", help="default: edge-sim-PID-RANDOM")
    conn.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    conn.add_argument("--topic-prefix", default="plant")
    conn.add_argument("--connect-timeout", type=_nonneg_float, default=10.0, metavar="SECONDS")

    m.add_argument(
        "--duration",
        type=_nonneg_float,
        metavar="SECONDS",
        help="stop after this long: simulated seconds in plant mode, wall seconds with --rate",
    )
    m.add_argument("--json", action="store_true", help="also print a JSON summary at the end")
    m.add_argument("--quiet", action="store_true", help="do not print anomaly events")

    plant = m.add_argument_group("plant mode")
    plant.add_argument("--seed", type=int, default=0)
    plant.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    plant.add_argument(
        "--anomaly-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability per reading of starting a random anomaly (0..1)",
    )
    plant.add_argument(
        "--anomaly-kinds",
        default=",".join(KINDS),
        help=f"comma-separated kinds drawn by --anomaly-rate (default {','.join(KINDS)})",
    )
    plant.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="KIND:EQUIPMENT[:SENSOR]@SECONDS",
        help="deliberate anomaly at a simulated second, e.g. spike:device-001:temperature@20 "
        "or dropout:device-003@10 (repeatable)",
    )
    plant.add_argument(
        "--spike-at",
        type=_nonneg_float,
        action="append",
        default=[],
        metavar="SECONDS",
        help=f"shorthand for --inject spike:{SPIKE_AT_SERIES}@SECONDS",
    )
    plant.add_argument("--dropout-s", type=_nonneg_float, default=45.0, metavar="SECONDS")

    load = m.add_argument_group("load mode")
    load.add_argument(
        "--rate", type=float, metavar="N", help="readings/s in total (0 = as fast as possible)"
    )
    load.add_argument("--batch", type=_positive_int, metavar="K", help="readings per message (1)")
    load.add_argument("--series", type=_positive_int, metavar="S", help="distinct series (100)")
    load.add_argument("--count", type=int, metavar="TOTAL", help="stop after TOTAL readings")

    opcua_sim.add_parser(sub)
    _add_sparkplug_parser(sub)
    e = sub.add_parser(
        "events",
        help="production events of the seed plant, with duplicates and late updates",
    )
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=1883)
    e.add_argument("--duration", type=float, help="simulated seconds (default: forever)")
    e.add_argument("--speed", type=float, default=1.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--duplicate-rate", type=float, default=0.05)
    e.add_argument("--update-rate", type=float, default=0.02)
    return parser


def _add_sparkplug_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "sparkplug",
        help="the seed plant as Sparkplug B edge nodes (births, alias-only data, deaths)",
        description="One Sparkplug B edge node per line (group = line, node edge-LINE), one "
        "device per equipment; answers Node Control/Rebirth.",
    )
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=1883)
    sp.add_argument("--username")
    sp.add_argument("--password", help="or set EDGE_SIM_PASSWORD")
    sp.add_argument("--duration", type=_nonneg_float, metavar="SECONDS", help="simulated seconds")
    sp.add_argument("--speed", type=float, default=1.0)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--bdseq", type=int, default=0, help="bdSeq of this session (0-255)")
    sp.add_argument(
        "--spike-at", type=_nonneg_float, action="append", default=[], metavar="SECONDS",
        help=f"spike on {SPIKE_AT_SERIES} at this simulated second (repeatable)",
    )  # fmt: skip
    sp.add_argument("--ddeath-at", type=_nonneg_float, metavar="SECONDS")
    sp.add_argument("--ddeath-device", default="device-003")
    sp.add_argument("--ndeath-at", type=_nonneg_float, metavar="SECONDS", help="NDEATH, then end")


def _run_sparkplug(args: argparse.Namespace) -> int:
    from simulator.mqtt import Broker
    from simulator.sparkplug import run_sparkplug

    broker = Broker(
        args.host,
        args.port,
        username=args.username,
        password=args.password or os.environ.get("EDGE_SIM_PASSWORD"),
    )
    injections = [Injection.parse(f"spike:{SPIKE_AT_SERIES}@{t}") for t in args.spike_at]
    result = run_sparkplug(
        broker,
        duration=args.duration,
        speed=args.speed,
        seed=args.seed,
        injections=injections,
        ddeath_at=args.ddeath_at,
        ddeath_device=args.ddeath_device,
        ndeath_at=args.ndeath_at,
        bdseq=args.bdseq & 0xFF,
        on_event=_print_event,
    )
    print(result.summary_line(), flush=True)
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _print_event(ev: AnomalyEvent) -> None:
    where = ev.equipment + (f"/{ev.sensor}" if ev.sensor else "")
    if ev.phase == "end":
        print(f"t={ev.t:.1f}s {ev.kind} ended {where}", flush=True)
    elif ev.value is not None:
        print(f"t={ev.t:.1f}s {ev.kind} {where} value={ev.value:g}", flush=True)
    else:
        print(f"t={ev.t:.1f}s {ev.kind} {where}", flush=True)


def _run_mqtt(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from simulator.mqtt import Broker, run_load, run_plant

    broker = Broker(
        host=args.host,
        port=args.port,
        username=args.username,
        password=args.password or os.environ.get("EDGE_SIM_PASSWORD"),
        client_id=args.client_id,
        connect_timeout_s=args.connect_timeout,
    )
    if args.rate is None:
        for opt in ("batch", "series", "count"):
            if getattr(args, opt) is not None:
                parser.error(f"--{opt} only applies to load mode (--rate)")
        try:
            kinds = tuple(k.strip() for k in args.anomaly_kinds.split(",") if k.strip())
            config = AnomalyConfig(rate=args.anomaly_rate, kinds=kinds, dropout_s=args.dropout_s)
            injections = [Injection.parse(s) for s in args.inject]
            injections += [Injection.parse(f"spike:{SPIKE_AT_SERIES}@{t}") for t in args.spike_at]
            if args.speed <= 0:
                raise ValueError("--speed must be > 0")
            print(
                f"edge-sim: seed plant -> {args.host}:{args.port} under {args.topic_prefix}/ "
                f"(seed {args.seed}, anomaly rate {args.anomaly_rate:g}, speed {args.speed:g}x)",
                file=sys.stderr,
                flush=True,
            )
            result = run_plant(
                topic_prefix=args.topic_prefix,
                seed=args.seed,
                anomalies=config,
                injections=injections,
                duration=args.duration,
                qos=args.qos,
                speed=args.speed,
                broker=broker,
                on_event=None if args.quiet else _print_event,
            )
        except ValueError as e:
            parser.error(str(e))
        print(result.summary_line(), flush=True)
        if args.json:
            print(orjson.dumps(result.as_dict()).decode(), flush=True)
        return 0

    if args.inject or args.spike_at or args.anomaly_rate:
        parser.error("--inject, --spike-at and --anomaly-rate apply to plant mode, not --rate")
    if args.count is not None and args.count < 0:
        parser.error("--count must be >= 0")
    result_l = run_load(
        rate=args.rate,
        batch=args.batch or 1,
        series=args.series or 100,
        count=args.count,
        qos=args.qos,
        duration=args.duration,
        topic_prefix=args.topic_prefix,
        seed=args.seed,
        broker=broker,
    )
    print(result_l.summary_line(), flush=True)
    if args.json:
        print(orjson.dumps(result_l.as_dict()).decode(), flush=True)
    return 0


def _run_events(args: argparse.Namespace) -> int:
    from simulator.events import run_events
    from simulator.mqtt import Broker

    result = run_events(
        Broker(args.host, args.port),
        duration=args.duration,
        speed=args.speed,
        seed=args.seed,
        duplicate_rate=args.duplicate_rate,
        update_rate=args.update_rate,
    )
    print(result.summary_line(), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        # Ctrl-C and SIGTERM stop cleanly with totals, even when started in the
        # background by a shell that set SIGINT to "ignore".
        old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if args.command == "opcua":
            return opcua_sim.run_cli(args, parser, _print_event)
        if args.command == "events":
            return _run_events(args)
        if args.command == "sparkplug":
            return _run_sparkplug(args)
        return _run_mqtt(args, parser)
    except ConnectionError as e:
        print(f"edge-sim: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edge-sim: interrupted", file=sys.stderr)
        return 0
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
