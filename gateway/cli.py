"""`edge-gateway run | check-config | demo | state export|import` (SPEC §2)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import signal
import sys

import orjson

from gateway.config import ConfigError, Settings, dump_settings, load_settings, shard_settings

log = logging.getLogger("edge.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gateway", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("run", "run the gateway daemon"),
        ("check-config", "validate and print the effective config (secrets masked)"),
        ("demo", "simulator + gateway on this machine, with a live status line"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", "-c", help="TOML config file (default: $EDGE_CONFIG)")
    sub.choices["run"].add_argument(
        "--shard",
        metavar="K/N",
        help="run shard K (0-based) of N from one config: own client id, spool dir, "
        "HTTP port + K, subscriptions i with i mod N == K (docs/scale-out.md)",
    )
    sub.choices["check-config"].add_argument("--shard", metavar="K/N", help="as for run")
    st = sub.add_parser("state", help="move a line's detector and alert state between gateways")
    st_sub = st.add_subparsers(dest="state_command", required=True)
    ex = st_sub.add_parser("export", help="write the state of some equipment to a bundle file")
    im = st_sub.add_parser("import", help="merge a bundle into this gateway's state")
    for sp in (ex, im):
        sp.add_argument("--config", "-c", help="TOML config file (default: $EDGE_CONFIG)")
        sp.add_argument("--shard", metavar="K/N", help="the shard whose state it is")
    ex.add_argument("--line", action="append", default=[], help="line glob (repeatable)")
    ex.add_argument("--equipment", action="append", default=[], help="equipment glob (repeatable)")
    ex.add_argument("--output", "-o", required=True, help="bundle file to write")
    ex.add_argument(
        "--keep",
        action="store_true",
        help="copy: leave the state in this gateway too (default: it moves out)",
    )
    im.add_argument("bundle", help="bundle file from `edge-gateway state export`")
    sub.choices["demo"].add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0 = Ctrl-C)"
    )
    return p


def _load(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """Default handling, except one known harmless race that would log a traceback.

    aiomqtt asks the loop (from paho's side) to watch the MQTT socket for writes; when
    the broker has just dropped the connection the socket is closed by the time the
    loop runs that request (EBADF). The link is being torn down and reconnects anyway.
    """
    exc = context.get("exception")
    if (
        isinstance(exc, OSError)
        and exc.errno == errno.EBADF
        and "add_writer" in str(context.get("message", ""))
    ):
        log.debug("mqtt: socket closed before the loop could watch it")
        return
    loop.default_exception_handler(context)


GC_THRESHOLD = 50_000


async def _run(settings: Settings) -> int:
    from gateway.app import build
    from gateway.daemon.pipeline import SpoolUnavailable, StateInUse

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_exception)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gw = build(settings)
    # The hot path allocates a few short-lived container objects per reading; with the
    # default threshold (700) the cyclic GC runs hundreds of times a second and its
    # full collections walk every series' state, stalling the loop (docs/performance.md).
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    try:
        await gw.run(stop)
    except (SpoolUnavailable, StateInUse) as e:
        print(str(e), file=sys.stderr)
        return 1
    except OSError as e:
        # typically: the HTTP port is taken
        print(
            f"edge-gateway: {e.strerror or e} ({settings.http.host}:{settings.http.port})",
            file=sys.stderr,
        )
        return 1
    return 0


def _state(args: argparse.Namespace, settings: Settings) -> int:
    """`state export | import`, with the gateway of that spool dir stopped (docs/scale-out.md)."""
    from pathlib import Path

    from gateway.core import statemove
    from gateway.daemon.state import StateInUse, StateStore, export_state, import_state

    store = StateStore(settings.spool.dir)
    try:
        if args.state_command == "export":
            if not args.line and not args.equipment:
                print("state export: give --line or --equipment (globs)", file=sys.stderr)
                return 2
            keep = statemove.selector(args.line, args.equipment)
            selected = {"line": args.line, "equipment": args.equipment}
            n = export_state(store, keep, selected, Path(args.output), remove=not args.keep)
            verb = "copied" if args.keep else "moved out"
            print(f"state export: {_counted(n)} {verb} of {store.dir} into {args.output}")
        else:
            n = import_state(store, Path(args.bundle))
            print(f"state import: {_counted(n)} from {args.bundle} into {store.dir}")
    except (StateInUse, statemove.StateMoveError) as e:
        print(str(e), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"state {args.state_command}: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def _counted(n: dict[str, int]) -> str:
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in n.items())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _load(args.config)
    if getattr(args, "shard", None):
        try:
            settings = shard_settings(settings, args.shard)
        except ConfigError as e:
            print(str(e), file=sys.stderr)
            return 2
    if args.command == "state":
        return _state(args, settings)
    if args.command == "check-config":
        sys.stdout.write(orjson.dumps(dump_settings(settings), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return 0
    from gateway.daemon.logs import setup_logging

    setup_logging(settings.log.level, settings.log.format)
    if args.command == "demo":
        from gateway.demo import run_demo

        return asyncio.run(run_demo(settings, duration=args.duration))
    return asyncio.run(_run(settings))


if __name__ == "__main__":
    raise SystemExit(main())
