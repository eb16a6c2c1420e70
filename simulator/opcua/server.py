"""The simulated plant as an OPC UA server: `PlantServer` and its `SimOptions`.

`PlantServer.setup()` builds the address space (see the package docstring),
security and users; `run(stop)` serves it while tasks write the `Plant`'s values
at the profile periods, the optional load variables at ``load_interval_ms``, and
the status file every `STATUS_INTERVAL_S`. asyncua is imported inside the methods.
"""

# asyncua annotates NodeId/DataValue fields with its own int/str/datetime aliases.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulator.anomalies import AnomalyConfig, AnomalyEvent, Injection
from simulator.opcua import NAMESPACE_URI, SERVER_APP_URI
from simulator.opcua.certs import CertFiles
from simulator.plant import Plant
from simulator.profiles import SEED_PLANT, SensorProfile

if TYPE_CHECKING:
    from asyncua import Server, ua

LOAD_LINE = "load"
LOAD_PER_EQUIPMENT = 100
FIRMWARE = "1.4.2"
STATUS_INTERVAL_S = 0.5

log = logging.getLogger("edge.sim.opcua")


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
