"""``edge-sim opcua``: an OPC UA server (asyncua) exposing the simulated plant.

Address space (namespace ``urn:edge-gateway:simulator``, index 2)::

    Objects/Plant/<line>/<equipment>/<sensor>     Double, EngineeringUnits + EURange
    Objects/Plant/<line>/<equipment>/running      Boolean (always true)
    Objects/Plant/<line>/<equipment>/firmware     String (not a measurement)
    Objects/Plant/load/load-NNN/vNN               Double, with --load N (--load-name)

Node ids are strings ``ns=2;s=<line>.<equipment>.<sensor>`` (e.g.
``ns=2;s=line-1.device-001.temperature``). Values change at the profile periods
through the pure `Plant` (same seeds and anomaly injection as ``edge-sim mqtt``);
every write carries a SourceTimestamp. All variables are writable, so a test
client can write a value with its own SourceTimestamp or a Bad status code.

``--secure`` serves only Basic256Sha256 (Sign and SignAndEncrypt) endpoints with a
self-signed server certificate generated into ``--cert-dir``, together with a
client certificate/key pair that the server trusts; ``--trust FILE`` replaces that
default so only the given client certificates are accepted.

``--status-file`` is rewritten (atomically) every 0.5 s with the server-side view:
sessions, subscriptions, monitored items (and the most items on any one node),
and the number of value changes written. Tests use it to prove that reconnects
leave no duplicate subscriptions or leaked sessions behind.

This module imports asyncua lazily, so the ``edge-sim`` parser stays cheap.
"""

# asyncua annotates NodeId/DataValue fields with its own int/str/datetime aliases.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.anomalies import KINDS, AnomalyConfig, AnomalyEvent, Injection
from simulator.plant import Plant
from simulator.profiles import SEED_PLANT, SensorProfile

if TYPE_CHECKING:
    from asyncua import Server, ua

NAMESPACE_URI = "urn:edge-gateway:simulator"
SERVER_APP_URI = "urn:edge-gateway:simulator:server"
CLIENT_APP_URI = "urn:edge-gateway:client"
LOAD_LINE = "load"
LOAD_PER_EQUIPMENT = 100
FIRMWARE = "1.4.2"
STATUS_INTERVAL_S = 0.5
SPIKE_AT_SERIES = "device-001:temperature"

log = logging.getLogger("edge.sim.opcua")


# ----------------------------------------------------------------- certificates


def make_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    app_uri: str,
    common_name: str,
    *,
    days: int = 365,
) -> None:
    """Write a self-signed RSA-2048 application certificate (DER) and key (PEM).

    The certificate names ``app_uri`` as a URI SubjectAltName and covers
    localhost, this host name and 127.0.0.1, with the key usages OPC UA
    Basic256Sha256 needs; it is usable as client and as server certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    hosts = sorted({"localhost", socket.gethostname()})
    san = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier(app_uri),
            *(x509.DNSName(h) for h in hosts),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.DER))
    Path(key_path).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)


@dataclass(frozen=True, slots=True)
class CertFiles:
    """The files ``--secure`` writes into the certificate directory."""

    dir: Path

    @property
    def server_cert(self) -> Path:
        return self.dir / "server-cert.der"

    @property
    def server_key(self) -> Path:
        return self.dir / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client-cert.der"

    @property
    def client_key(self) -> Path:
        return self.dir / "client-key.pem"

    def ensure(self) -> None:
        """Generate the server and the default client pair unless present."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.server_cert.exists() and self.server_key.exists()):
            make_certificate(self.server_cert, self.server_key, SERVER_APP_URI, "edge-sim opcua")
        if not (self.client_cert.exists() and self.client_key.exists()):
            make_certificate(self.client_cert, self.client_key, CLIENT_APP_URI, "edge-gateway")


# ------------------------------------------------------------------ the server


@dataclass(slots=True)
class SimOptions:
    host: str = "127.0.0.1"
    port: int = 4840
    seed: int = 0
    speed: float = 1.0
    anomalies: AnomalyConfig = field(default_factory=AnomalyConfig)
    injections: Sequence[Injection] = ()
    plant: bool = True
    load: int = 0
    load_name: str = LOAD_LINE
    load_interval_ms: float = 100.0
    load_wait_items: int = 0
    load_duration_s: float | None = None
    secure: bool = False
    cert_dir: Path = Path("opcua-certs")
    trust: Sequence[Path] = ()
    users: dict[str, str] = field(default_factory=dict)
    status_file: Path | None = None
    duration_s: float | None = None


@dataclass(slots=True)
class SimStats:
    changes: int = 0
    load_changes: int = 0
    load_ticks: int = 0
    load_late_ticks: int = 0
    load_done: bool = False
    started: float = field(default_factory=time.monotonic)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PlantServer:
    """The asyncua server plus the tasks that change its values."""

    def __init__(
        self, opts: SimOptions, on_event: Callable[[AnomalyEvent], None] | None = None
    ) -> None:
        self.opts = opts
        self.on_event = on_event
        self.stats = SimStats()
        self.server: Server | None = None
        self.plant_nodes: dict[str, ua.NodeId] = {}  # "equipment/sensor" -> node id
        self.load_nodes: list[ua.NodeId] = []
        self._trusted: set[bytes] = set()

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.opts.host}:{self.opts.port}"

    # -- set-up ------------------------------------------------------------------
    async def setup(self) -> None:
        from asyncua import Server, ua
        from asyncua.server.user_managers import UserManager

        opts = self.opts
        server = self.server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edge-sim OPC UA plant")
        await server.set_application_uri(SERVER_APP_URI)
        if opts.secure:
            files = CertFiles(opts.cert_dir)
            files.ensure()
            await server.load_certificate(str(files.server_cert))
            await server.load_private_key(str(files.server_key))
            server.set_security_policy(
                [
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                    ua.SecurityPolicyType.Basic256Sha256_Sign,
                ]
            )
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            for path in opts.trust or (files.client_cert,):
                data = Path(path).read_bytes()
                cert = (
                    x509.load_pem_x509_certificate(data)
                    if data.startswith(b"-----")
                    else x509.load_der_x509_certificate(data)
                )
                self._trusted.add(cert.public_bytes(Encoding.DER))
            server.set_certificate_validator(self._validate_certificate)
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if opts.users:
            users = opts.users

            class _Users(UserManager):
                def get_user(
                    self,
                    iserver: Any,
                    username: Any = None,
                    password: Any = None,
                    certificate: Any = None,
                ) -> Any:
                    from asyncua.crypto.permission_rules import User, UserRole

                    if username is not None and users.get(username) == password:
                        return User(role=UserRole.User, name=username)
                    return None

            server.iserver.set_user_manager(_Users())
            server.set_identity_tokens([ua.UserNameIdentityToken])
        idx = await server.register_namespace(NAMESPACE_URI)
        plant = await server.nodes.objects.add_folder(ua.NodeId("Plant", idx), f"{idx}:Plant")
        containers: dict[tuple[str, ...], Any] = {}

        async def container(*path: str) -> Any:
            node = containers.get(path)
            if node is None:
                parent = plant if len(path) == 1 else await container(*path[:-1])
                node = await parent.add_object(ua.NodeId(".".join(path), idx), f"{idx}:{path[-1]}")
                containers[path] = node
            return node

        start = _now()
        if opts.plant:
            for p in SEED_PLANT:
                eq = await container(p.line, p.equipment)
                var = await eq.add_variable(
                    ua.NodeId(f"{p.line}.{p.equipment}.{p.sensor}", idx),
                    f"{idx}:{p.sensor}",
                    ua.Variant(p.mid, ua.VariantType.Double),
                )
                await var.set_writable()
                await _add_units(var, idx, p)
                self.plant_nodes[p.key] = var.nodeid
            for (line, equipment), eq in [(k, v) for k, v in containers.items() if len(k) == 2]:
                for name, value, vtype in (
                    ("running", True, ua.VariantType.Boolean),
                    ("firmware", FIRMWARE, ua.VariantType.String),
                ):
                    var = await eq.add_variable(
                        ua.NodeId(f"{line}.{equipment}.{name}", idx),
                        f"{idx}:{name}",
                        ua.Variant(value, vtype),
                    )
                    await var.set_writable()
                    await server.write_attribute_value(
                        var.nodeid,
                        ua.DataValue(
                            ua.Variant(value, vtype), SourceTimestamp=start, ServerTimestamp=start
                        ),
                    )
        for i in range(opts.load):
            eq_name = f"{opts.load_name}-{i // LOAD_PER_EQUIPMENT:03d}"
            sensor = f"v{i % LOAD_PER_EQUIPMENT:02d}"
            eq = await container(opts.load_name, eq_name)
            var = await eq.add_variable(
                ua.NodeId(f"{opts.load_name}.{eq_name}.{sensor}", idx),
                f"{idx}:{sensor}",
                ua.Variant(0.0, ua.VariantType.Double),
            )
            await server.write_attribute_value(
                var.nodeid,
                ua.DataValue(
                    ua.Variant(0.0, ua.VariantType.Double),
                    SourceTimestamp=start,
                    ServerTimestamp=start,
                ),
            )
            await var.set_writable()
            self.load_nodes.append(var.nodeid)

    async def _validate_certificate(self, cert: Any, app_description: Any) -> None:
        from asyncua import ua
        from cryptography.hazmat.primitives.serialization import Encoding

        if cert.public_bytes(Encoding.DER) not in self._trusted:
            log.warning("opcua-sim: refused untrusted client certificate %s", cert.subject)
            raise ua.uaerrors.BadCertificateUntrusted

    # -- running -----------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set (or the duration passed)."""
        if self.server is None:
            await self.setup()
        assert self.server is not None
        plant = (
            Plant(
                SEED_PLANT,
                seed=self.opts.seed,
                anomalies=self.opts.anomalies,
                injections=self.opts.injections,
            )
            if self.opts.plant
            else None
        )
        if plant is not None:
            await self._write_plant(plant, 0.0)  # values at t=0 before anyone connects
        async with self.server:
            tasks = [asyncio.create_task(self._status_loop())]
            if plant is not None:
                tasks.append(asyncio.create_task(self._plant_loop(plant)))
            if self.load_nodes:
                tasks.append(asyncio.create_task(self._load_loop()))
            print(f"edge-sim: OPC UA server on {self.endpoint}", flush=True)
            try:
                if self.opts.duration_s is None:
                    await stop.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.opts.duration_s)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self.write_status()

    async def _write_plant(self, plant: Plant, until: float) -> None:
        from asyncua import ua

        assert self.server is not None
        write = self.server.write_attribute_value
        for r in plant.readings_until(until):
            ts = _now()
            await write(
                self.plant_nodes[r.profile.key],
                ua.DataValue(
                    ua.Variant(float(r.value), ua.VariantType.Double),
                    SourceTimestamp=ts,
                    ServerTimestamp=ts,
                ),
            )
            self.stats.changes += 1
        if self.on_event is not None:
            for ev in plant.drain_events():
                self.on_event(ev)

    async def _plant_loop(self, plant: Plant) -> None:
        t0 = time.monotonic()
        speed = self.opts.speed
        while True:
            wait = t0 + plant.next_time() / speed - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._write_plant(plant, (time.monotonic() - t0) * speed)

    def monitored_items(self) -> int:
        assert self.server is not None
        subs = self.server.iserver.subscription_service.subscriptions
        return sum(len(s.monitored_item_srv._monitored_items) for s in subs.values())

    async def _load_loop(self) -> None:
        from asyncua import ua

        assert self.server is not None
        opts = self.opts
        while self.monitored_items() < opts.load_wait_items:
            await asyncio.sleep(0.05)
        write = self.server.write_attribute_value
        period = opts.load_interval_ms / 1000
        nodes = self.load_nodes
        stats = self.stats
        t0 = time.monotonic()
        end = None if opts.load_duration_s is None else t0 + opts.load_duration_s
        tick = 0
        while end is None or time.monotonic() < end:
            tick += 1
            ts = _now()
            value = ua.Variant(float(tick), ua.VariantType.Double)
            for i, node in enumerate(nodes):
                await write(node, ua.DataValue(value, SourceTimestamp=ts, ServerTimestamp=ts))
                if i % 200 == 199:
                    await asyncio.sleep(0)  # let the server answer clients mid-tick
            stats.changes += len(nodes)
            stats.load_changes += len(nodes)
            stats.load_ticks += 1
            wait = t0 + tick * period - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                stats.load_late_ticks += 1
                await asyncio.sleep(0)
        stats.load_done = True

    # -- status ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The server-side view of clients: sessions, subscriptions, monitored items."""
        assert self.server is not None
        iserver = self.server.iserver
        subs = iserver.subscription_service.subscriptions
        per_node: dict[str, int] = {}
        items = 0
        for s in subs.values():
            for m in s.monitored_item_srv._monitored_items.values():
                items += 1
                if m.read_value_id is not None:
                    key = m.read_value_id.NodeId.to_string()
                    per_node[key] = per_node.get(key, 0) + 1
        return {
            "pid": os.getpid(),
            "endpoint": self.endpoint,
            "sessions": len(iserver._external_sessions),
            "subscriptions": len(subs),
            "monitored_items": items,
            "nodes_monitored": len(per_node),
            "max_items_per_node": max(per_node.values(), default=0),
            "changes": self.stats.changes,
            "load_changes": self.stats.load_changes,
            "load_ticks": self.stats.load_ticks,
            "load_late_ticks": self.stats.load_late_ticks,
            "load_done": self.stats.load_done,
            "uptime_s": round(time.monotonic() - self.stats.started, 3),
        }

    def write_status(self) -> None:
        path = self.opts.status_file
        if path is None or self.server is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.status()))
        os.replace(tmp, path)

    async def _status_loop(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(STATUS_INTERVAL_S)


async def _add_units(var: Any, idx: int, p: SensorProfile) -> None:
    """EngineeringUnits (EUInformation, DisplayName = our unit name) and EURange properties."""
    from asyncua import ua

    eu = ua.EUInformation(
        NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
        UnitId=-1,
        DisplayName=ua.LocalizedText(p.unit),
        Description=ua.LocalizedText(p.unit),
    )
    await var.add_property(
        ua.NodeId(f"{p.line}.{p.equipment}.{p.sensor}.EngineeringUnits", idx),
        "EngineeringUnits",
        ua.Variant(eu, ua.VariantType.ExtensionObject),
    )
    await var.add_property(
        ua.NodeId(f"{p.line}.{p.equipment}.{p.sensor}.EURange", idx),
        "EURange",
        ua.Variant(ua.Range(Low=p.low, High=p.high), ua.VariantType.ExtensionObject),
    )


# ------------------------------------------------------------------------- CLI


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
