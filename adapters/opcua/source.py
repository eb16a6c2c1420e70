"""One OPC UA server endpoint as a source: session, subscription, watchdog, reconnect.

`OpcuaSource(cfg, metrics).run(deliver)` runs until cancelled. Each connection
attempt is a fresh asyncua `Client` and a fresh `_Session`:

1. security (Basic256Sha256 Sign/SignAndEncrypt: the endpoint is looked up, the
   server certificate optionally pinned), username/password, connect — all
   under ``connect_timeout_s``; every later request under ``request_timeout_s``;
2. nodes: the configured ``[[opcua.servers.nodes]]``, or the variables found
   below ``browse_root`` (browse path ``.../<line>/<equipment>/<sensor>``);
   EngineeringUnits give the unit where the config names none;
3. one subscription, monitored items created in chunks of
   ``max_items_per_request``;
4. watch: a read of Server/ServerStatus/CurrentTime every
   ``watchdog_interval_s`` that must answer within ``watchdog_timeout_s``, a
   transport-loss hook, Bad subscription status changes, and publish silence
   (no data or keep-alive for 3 keep-alive periods) all end the session.

Ending a session closes it (CloseSession, subscriptions deleted) with a short
timeout, then cancels the client's tasks and closes the socket whatever the
server does, so a frozen server cannot hang the gateway and a reconnect never
leaves a duplicate subscription behind. asyncua's own ``auto_reconnect`` is
not used. Reconnects back off from ``reconnect_min_s`` to ``reconnect_max_s``.

Data changes are handed to the pipeline one publish response at a time (one
``deliver`` per response). Values: numbers as they are, booleans as 1.0/0.0,
anything else is passed on as a string so the normalizer rejects it
(``invalid_value``); NaN/±inf become strings too (``invalid_value``). A Bad
status code becomes ``{"quality": "<name>"}`` (``bad_quality``); Uncertain
values are accepted. SourceTimestamp, else ServerTimestamp, else receive time.
"""

# asyncua annotates NodeId/DataValue fields with its own int/str/datetime aliases.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from asyncua import Client, ua
from asyncua.crypto import security_policies

from adapters.base import Deliver
from adapters.opcua import NO_LINE, SOURCE
from gateway.config import OpcuaServer
from gateway.core.backoff import Backoff
from gateway.core.model import RawMessage
from gateway.core.normalize import name_problem
from gateway.daemon.metrics import Metrics

log = logging.getLogger("edge.opcua")

_T = TypeVar("_T")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
_BAD = 0x80000000
MAX_DELIVER = 5000  # notifications per deliver() call
FORCE_CLOSE_TIMEOUT_S = 2.0
# Built-in data types that are never measurements (skipped when browsing).
_NON_NUMERIC_TYPES = frozenset(
    {
        ua.ObjectIds.String,
        ua.ObjectIds.DateTime,
        ua.ObjectIds.Guid,
        ua.ObjectIds.ByteString,
        ua.ObjectIds.XmlElement,
        ua.ObjectIds.NodeId,
        ua.ObjectIds.ExpandedNodeId,
        ua.ObjectIds.StatusCode,
        ua.ObjectIds.QualifiedName,
        ua.ObjectIds.LocalizedText,
        ua.ObjectIds.Structure,
        ua.ObjectIds.DataValue,
        ua.ObjectIds.DiagnosticInfo,
        ua.ObjectIds.LocaleId,
        ua.ObjectIds.UtcTime,
    }
)
_SERVER_OBJECT = ua.NodeId(ua.ObjectIds.Server)
_HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)
_CERT_ERRORS = (
    ua.uaerrors.BadCertificateUntrusted,
    ua.uaerrors.BadCertificateInvalid,
    ua.uaerrors.BadCertificateTimeInvalid,
    ua.uaerrors.BadCertificateUriInvalid,
    ua.uaerrors.BadCertificateHostNameInvalid,
    ua.uaerrors.BadCertificateUseNotAllowed,
    ua.uaerrors.BadCertificateRevoked,
    ua.uaerrors.BadCertificateChainIncomplete,
    ua.uaerrors.BadCertificatePolicyCheckFailed,
    ua.uaerrors.BadNoValidCertificates,
    ua.uaerrors.BadSecurityChecksFailed,
    ua.uaerrors.BadSecurityPolicyRejected,
    ua.uaerrors.BadSecurityModeRejected,
)
_LOGIN_ERRORS = (
    ua.uaerrors.BadUserAccessDenied,
    ua.uaerrors.BadIdentityTokenInvalid,
    ua.uaerrors.BadIdentityTokenRejected,
)


class OpcuaFailure(Exception):
    """Why a session ended: `kind` is the label of edge_opcua_errors_total."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def classify(exc: BaseException) -> OpcuaFailure:
    """An exception from asyncua (or the network) as a failure kind and a clear message."""
    if isinstance(exc, OpcuaFailure):
        return exc
    if isinstance(exc, _CERT_ERRORS):
        return OpcuaFailure(
            "certificate", f"certificate refused: {type(exc).__name__} ({_ua_text(exc)})"
        )
    if isinstance(exc, _LOGIN_ERRORS):
        return OpcuaFailure("login", f"login refused: {type(exc).__name__} ({_ua_text(exc)})")
    if isinstance(exc, TimeoutError):
        return OpcuaFailure("timeout", "no answer from the server in time")
    if isinstance(exc, ua.UaStatusCodeError):
        return OpcuaFailure("protocol", f"{type(exc).__name__} ({_ua_text(exc)})")
    if isinstance(exc, ua.UaError) and "No matching endpoints" in str(exc):
        return OpcuaFailure(
            "security", f"server offers no endpoint for our security settings ({exc})"
        )
    if isinstance(exc, ConnectionRefusedError):
        return OpcuaFailure("connect", "connection refused")
    if isinstance(exc, OSError | ConnectionError):
        return OpcuaFailure("connect", str(exc) or type(exc).__name__)
    return OpcuaFailure("error", f"{type(exc).__name__}: {exc}")


def _ua_text(exc: BaseException) -> str:
    text = str(exc)
    cut = text.rfind("(")
    return (text[:cut] if cut > 0 else text).strip().rstrip(".")


def _chunks(seq: Sequence[_T], n: int) -> Iterator[Sequence[_T]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _plain(node: ua.NodeId) -> ua.NodeId:
    """An ExpandedNodeId as a plain NodeId (hashable like the others)."""
    return ua.NodeId(node.Identifier, node.NamespaceIndex, node.NodeIdType)


def ts_ns(value: dt.datetime | None) -> int:
    """A UTC datetime as ns since the epoch; 0 for None or times before 1970."""
    if value is None:
        return 0
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    us = (value - _EPOCH) // _US
    return us * 1000 if us > 0 else 0


def _non_numeric(v: object) -> object:
    if v is None or type(v) is str:
        return v
    return f"<{type(v).__name__}>"


# --------------------------------------------------------------------- items


@dataclass(slots=True)
class Item:
    """One monitored variable and what its readings are called."""

    node: ua.NodeId
    equipment: str
    sensor: str
    line: str = ""
    unit: str = ""
    topic: str = ""
    extra: tuple[tuple[str, object], ...] = ()

    def finish(self) -> Item:
        """Compute the topic and the payload extras once (not per value)."""
        levels = []
        for v in (self.line or NO_LINE, self.equipment, self.sensor):
            # A name the topic cannot carry travels in the payload, where the
            # normalizer rejects it with a clear reason.
            levels.append(v if name_problem(v) is None else NO_LINE)
        self.topic = f"{SOURCE}/{levels[0]}/{levels[1]}/{levels[2]}"
        extra: list[tuple[str, object]] = []
        if self.unit:
            extra.append(("unit", self.unit))
        if levels[0] == NO_LINE:
            extra.append(("line", self.line))
        if levels[1] == NO_LINE:
            extra.append(("equipment", self.equipment))
        if levels[2] == NO_LINE:
            extra.append(("sensor", self.sensor))
        self.extra = tuple(extra)
        return self


def encode(item: Item, dv: ua.DataValue) -> bytes:
    """The JSON payload for one data change of `item` (see the module docstring)."""
    d: dict[str, object] = {}
    sc = dv.StatusCode
    if sc is not None and sc.value & _BAD:
        d["quality"] = sc.name
    else:
        variant = dv.Value
        v = None if variant is None else variant.Value
        t = type(v)
        if t is float:
            if v - v != 0.0:  # type: ignore[operator]
                v = repr(v)  # NaN / inf: JSON has no such number
        elif t is bool:
            v = 1.0 if v else 0.0
        elif t is not int:
            v = _non_numeric(v)
        d["value"] = v
    ns = ts_ns(dv.SourceTimestamp) or ts_ns(dv.ServerTimestamp)
    if ns:
        d["ts"] = ns
    for k, x in item.extra:
        d[k] = x
    return orjson.dumps(d)


def map_browse_path(path: Sequence[str], root_name: str, default_line: str) -> tuple[str, str, str]:
    """(line, equipment, sensor) for a variable's browse path below the browse root.

    >>> map_browse_path(("Line1", "device-001", "temperature"), "Plant", "")
    ('Line1', 'device-001', 'temperature')
    >>> map_browse_path(("device-001", "temperature"), "Plant", "line-9")
    ('line-9', 'device-001', 'temperature')
    >>> map_browse_path(("temperature",), "press-1", "")
    ('', 'press-1', 'temperature')
    """
    sensor = path[-1]
    equipment = path[-2] if len(path) >= 2 else root_name
    line = path[-3] if len(path) >= 3 else default_line
    return line, equipment, sensor


# ------------------------------------------------------------------ logging


class _QuietDisconnects(logging.Filter):
    """Drop asyncua's tracebacks for connection failures this module reports itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(
            exc, ConnectionError | TimeoutError | OSError | asyncio.CancelledError
        ):
            return False
        msg = str(record.msg)
        # ServiceFault warnings and fatal ErrorMessages come back to us as exceptions,
        # which run() reports as one line per state change; the plain-text password
        # warning is logged once by OpcuaSource instead of once per connection attempt.
        return not msg.startswith(
            ("ServiceFault", "Received an error", "Sending plain-text password")
        )


_FILTER = _QuietDisconnects()
for _name in (
    "asyncua.client.client",
    "asyncua.client.ua_client.UaClient",
    "asyncua.client.ua_client.UASocketProtocol",
    "asyncua.client.ua_session.UaSession",
):
    logging.getLogger(_name).addFilter(_FILTER)


# ------------------------------------------------------------------ session


class _Session:
    """One connection attempt: client, subscription, watchdog; `close()` always."""

    def __init__(self, src: OpcuaSource, deliver: Deliver) -> None:
        self.src = src
        self.cfg = src.cfg
        self.deliver = deliver
        self.client: Client | None = None
        self.items: dict[int, Item] = {}
        self.lost = asyncio.Event()
        self.lost_reason: OpcuaFailure | None = None
        self.last_publish = time.monotonic()
        self.in_deliver = False
        self.closing = False
        self.subscription_id = 0

    def fail(self, kind: str, message: str) -> None:
        if self.lost_reason is None and not self.closing:
            self.lost_reason = OpcuaFailure(kind, message)
        self.lost.set()

    # -- connect -------------------------------------------------------------
    async def open(self) -> None:
        cfg = self.cfg
        client = self.client = Client(
            cfg.endpoint,
            timeout=cfg.request_timeout_s,
            watchdog_intervall=3600.0,  # ours is watch(); asyncua's only notices state changes
        )
        client.name = client.description = "edge-gateway"
        client.application_uri = "urn:edge-gateway:client"
        client.session_timeout = int(cfg.session_timeout_s * 1000)
        if cfg.username:
            client.set_user(cfg.username)
            if cfg.password is not None:
                client.set_password(cfg.password.get_secret_value())
        async with asyncio.timeout(cfg.connect_timeout_s):
            if cfg.security_policy != "None":
                await self._secure(client)
            await client.connect()
        uac = client.uaclient
        add_listener = getattr(uac, "_add_state_listener", None)
        if add_listener is not None:
            add_listener(self._on_state)

    async def _secure(self, client: Client) -> None:
        cfg = self.cfg
        assert cfg.certificate and cfg.private_key
        mode = getattr(ua.MessageSecurityMode, cfg.security_mode)
        policy = security_policies.SecurityPolicyBasic256Sha256
        try:
            cert_bytes = Path(cfg.certificate).read_bytes()
            Path(cfg.private_key).read_bytes()
        except OSError as e:
            raise OpcuaFailure("certificate", f"cannot read {e.filename}: {e.strerror}") from None
        uri = _certificate_uri(cert_bytes)
        if uri:
            client.application_uri = uri
        endpoints = await client.connect_and_get_server_endpoints()
        chosen = [
            e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode
        ]
        if not chosen:
            offered = sorted(
                {
                    f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}"
                    for e in endpoints
                }
            )
            raise OpcuaFailure(
                "security",
                f"server offers no {cfg.security_policy}/{cfg.security_mode} endpoint "
                f"(offered: {', '.join(offered)})",
            )
        server_der = _first_der(chosen[0].ServerCertificate)
        if cfg.server_certificate:
            try:
                pinned = _load_der(Path(cfg.server_certificate).read_bytes())
            except (OSError, ValueError) as e:
                raise OpcuaFailure(
                    "certificate", f"cannot load server_certificate {cfg.server_certificate}: {e}"
                ) from None
            if pinned != server_der:
                raise OpcuaFailure(
                    "certificate",
                    f"server certificate does not match the pinned {cfg.server_certificate}",
                )
        await client.set_security(
            policy,
            cfg.certificate,
            cfg.private_key,
            server_certificate=server_der,
            mode=mode,
        )

    def _on_state(self, state: Any) -> None:
        """asyncua state listener (sync): a dropped socket ends the session at once."""
        if getattr(state, "name", "") == "DISCONNECTED" and not self.closing:
            if not self.in_deliver:  # a batch being handed over may finish (close() waits)
                self._cancel_publish()  # before asyncua's publish loop logs the loss
            self.fail("connect", "connection lost")

    def _cancel_publish(self) -> None:
        if self.client is None:
            return
        task = getattr(self.client.uaclient.session, "_publish_task", None)
        if task is not None and not task.done():
            task.cancel()

    # -- nodes ---------------------------------------------------------------
    async def resolve(self) -> list[Item]:
        cfg = self.cfg
        items: list[Item] = []
        bad: list[str] = []
        for n in cfg.nodes:
            try:
                node = ua.NodeId.from_string(n.node_id)
            except Exception:
                bad.append(f"{n.node_id} (not a node id)")
                continue
            items.append(Item(node, n.equipment, n.sensor, n.line or cfg.line, n.unit))
        if bad:
            self.src.error_once("config", f"skipped nodes: {', '.join(bad)}")
        if cfg.browse_root:
            items.extend(await self._browse())
        need_unit = [it for it in items if not it.unit]
        if need_unit:
            units = await self._units([it.node for it in need_unit])
            for it in need_unit:
                it.unit = units.get(it.node, "")
        return [it.finish() for it in items]

    async def _browse(self) -> list[Item]:
        cfg = self.cfg
        assert cfg.browse_root
        root, root_name = await self._root(cfg.browse_root)
        seen = {root}
        frontier: list[tuple[ua.NodeId, tuple[str, ...]]] = [(root, ())]
        found: list[tuple[ua.NodeId, tuple[str, ...]]] = []
        for _ in range(cfg.browse_max_depth):
            if not frontier:
                break
            nxt: list[tuple[ua.NodeId, tuple[str, ...]]] = []
            for chunk in _chunks(frontier, cfg.max_items_per_request):
                refs_per_node = await self._browse_nodes([n for n, _ in chunk])
                for (_, path), refs in zip(chunk, refs_per_node, strict=True):
                    for ref in refs:
                        if not ref.IsForward or ref.ReferenceTypeId == _HAS_PROPERTY:
                            continue
                        nid = _plain(ref.NodeId)
                        if nid in seen or nid == _SERVER_OBJECT:
                            continue
                        seen.add(nid)
                        p = (*path, ref.BrowseName.Name)
                        if ref.NodeClass == ua.NodeClass.Variable:
                            found.append((nid, p))
                        elif ref.NodeClass == ua.NodeClass.Object:
                            nxt.append((nid, p))
            frontier = nxt
        types = await self._read([n for n, _ in found], ua.AttributeIds.DataType)
        items: list[Item] = []
        skipped = 0
        for (nid, path), dv in zip(found, types, strict=True):
            dtype = dv.Value.Value if dv.Value is not None else None
            if (
                isinstance(dtype, ua.NodeId)
                and dtype.NamespaceIndex == 0
                and dtype.Identifier in _NON_NUMERIC_TYPES
            ):
                skipped += 1
                continue
            line, equipment, sensor = map_browse_path(path, root_name, cfg.line)
            items.append(Item(nid, equipment, sensor, line))
        if skipped and not self.src.browse_logged:
            log.info(
                "opcua: %s: browse of %s found %d variables, skipped %d non-numeric ones",
                cfg.endpoint,
                cfg.browse_root,
                len(found),
                skipped,
            )
            self.src.browse_logged = True
        return items

    async def _root(self, spec: str) -> tuple[ua.NodeId, str]:
        """The browse root: a node id (``ns=2;s=Plant``) or a path like ``Objects/Plant``."""
        if spec.split(";", 1)[0].split("=", 1)[0] in ("ns", "nsu", "i", "s", "g", "b"):
            try:
                node = ua.NodeId.from_string(spec)
            except Exception:
                raise OpcuaFailure("config", f"browse_root {spec!r} is not a node id") from None
            names = await self._read([node], ua.AttributeIds.BrowseName)
            qn = names[0].Value.Value if names[0].Value is not None else None
            status = names[0].StatusCode
            if status is None or not status.is_good() or qn is None:
                raise OpcuaFailure("browse", f"browse_root {spec!r} does not exist on the server")
            return node, qn.Name
        parts = [p for p in spec.strip("/").split("/") if p]
        if parts and parts[0] == "Objects":
            parts = parts[1:]
        node = ua.NodeId(ua.ObjectIds.ObjectsFolder)
        name = "Objects"
        walked = ["Objects"]
        for part in parts:
            ns, _, bare = part.rpartition(":")
            refs = (await self._browse_nodes([node]))[0]
            match = [
                r
                for r in refs
                if r.IsForward
                and r.BrowseName.Name == bare
                and (not ns.isdigit() or r.BrowseName.NamespaceIndex == int(ns))
            ]
            if not match:
                raise OpcuaFailure(
                    "browse", f"browse_root {spec!r}: no {bare!r} under {'/'.join(walked)}"
                )
            node, name = _plain(match[0].NodeId), bare
            walked.append(bare)
        return node, name

    async def _browse_nodes(self, nodes: Sequence[ua.NodeId]) -> list[list[Any]]:
        assert self.client is not None
        session = self.client.uaclient.session
        params = ua.BrowseParameters()
        params.View = ua.ViewDescription()
        params.RequestedMaxReferencesPerNode = 0
        params.NodesToBrowse = [
            ua.BrowseDescription(
                NodeId=n,
                BrowseDirection=ua.BrowseDirection.Forward,
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
                IncludeSubtypes=True,
                NodeClassMask=int(ua.NodeClass.Object | ua.NodeClass.Variable),
                ResultMask=int(ua.BrowseResultMask.All),
            )
            for n in nodes
        ]
        results = await session.browse(params)
        out: list[list[Any]] = []
        for res in results:
            refs = list(res.References or [])
            cp = res.ContinuationPoint
            while cp:
                nxt = ua.BrowseNextParameters()
                nxt.ReleaseContinuationPoints = False
                nxt.ContinuationPoints = [cp]
                more = (await session.browse_next(nxt))[0]
                refs.extend(more.References or [])
                cp = more.ContinuationPoint
            out.append(refs)
        return out

    async def _read(self, nodes: Sequence[ua.NodeId], attr: ua.AttributeIds) -> list[ua.DataValue]:
        assert self.client is not None
        session = self.client.uaclient.session
        out: list[ua.DataValue] = []
        for chunk in _chunks(nodes, self.cfg.max_items_per_request):
            params = ua.ReadParameters()
            params.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=attr) for n in chunk]
            out.extend(await session.read(params))
        return out

    async def _units(self, nodes: Sequence[ua.NodeId]) -> dict[ua.NodeId, str]:
        """EngineeringUnits DisplayName of each node that has the property."""
        assert self.client is not None
        session = self.client.uaclient.session
        props: list[tuple[ua.NodeId, ua.NodeId]] = []
        for chunk in _chunks(nodes, self.cfg.max_items_per_request):
            paths = [
                ua.BrowsePath(
                    StartingNode=n,
                    RelativePath=ua.RelativePath(
                        Elements=[
                            ua.RelativePathElement(
                                ReferenceTypeId=_HAS_PROPERTY,
                                IsInverse=False,
                                IncludeSubtypes=False,
                                TargetName=ua.QualifiedName("EngineeringUnits", 0),
                            )
                        ]
                    ),
                )
                for n in chunk
            ]
            results = await session.translate_browsepaths_to_nodeids(paths)
            for n, res in zip(chunk, results, strict=True):
                if res.StatusCode.is_good() and res.Targets:
                    props.append((n, _plain(res.Targets[0].TargetId)))
        units: dict[ua.NodeId, str] = {}
        values = await self._read([p for _, p in props], ua.AttributeIds.Value)
        for (n, _), dv in zip(props, values, strict=True):
            eu = dv.Value.Value if dv.Value is not None else None
            text = getattr(getattr(eu, "DisplayName", None), "Text", None)
            if isinstance(text, str) and text and text.isprintable() and len(text) <= 64:
                units[n] = text
        return units

    # -- subscription --------------------------------------------------------
    async def subscribe(self, items: list[Item]) -> int:
        """Create the subscription and its monitored items; return how many were accepted."""
        assert self.client is not None
        cfg = self.cfg
        session = self.client.uaclient.session
        pi = float(cfg.publishing_interval_ms)
        keepalive = max(1, math.ceil(cfg.keepalive_s * 1000 / pi))
        lifetime = max(3 * keepalive, math.ceil(max(cfg.session_timeout_s, 60.0) * 1000 / pi))
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = pi
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = min(lifetime, 15_000)
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        result = await session.create_subscription(params, callback=self._on_publish)
        self.subscription_id = int(result.SubscriptionId)
        revised = float(result.RevisedPublishingInterval or pi)
        self.src.keepalive_period_s = revised * int(result.RevisedMaxKeepAliveCount or 1) / 1000
        self.last_publish = time.monotonic()
        flt: ua.DataChangeFilter | None = None
        if cfg.deadband_type != "none":
            flt = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=(
                    ua.DeadbandType.Absolute
                    if cfg.deadband_type == "absolute"
                    else ua.DeadbandType.Percent
                ),
                DeadbandValue=float(cfg.deadband_value),
            )
        sampling = float(cfg.sampling_interval_ms) if cfg.sampling_interval_ms > 0 else -1.0
        refused: list[str] = []
        handle = 0
        for chunk in _chunks(items, cfg.max_items_per_request):
            reqs = []
            handles = []
            for it in chunk:
                handle += 1
                handles.append(handle)
                mp = ua.MonitoringParameters()
                mp.ClientHandle = handle
                mp.SamplingInterval = sampling
                mp.QueueSize = cfg.queue_size
                mp.DiscardOldest = True
                mp.Filter = flt
                reqs.append(
                    ua.MonitoredItemCreateRequest(
                        ItemToMonitor=ua.ReadValueId(
                            NodeId=it.node, AttributeId=ua.AttributeIds.Value
                        ),
                        MonitoringMode=ua.MonitoringMode.Reporting,
                        RequestedParameters=mp,
                    )
                )
            # Register the handles first: the first notifications can arrive before
            # CreateMonitoredItems answers.
            for h, it in zip(handles, chunk, strict=True):
                self.items[h] = it
            mparams = ua.CreateMonitoredItemsParameters()
            mparams.SubscriptionId = self.subscription_id
            mparams.TimestampsToReturn = ua.TimestampsToReturn.Both
            mparams.ItemsToCreate = reqs
            results = await session.create_monitored_items(mparams)
            for h, it, res in zip(handles, chunk, results, strict=True):
                if not res.StatusCode.is_good():
                    self.items.pop(h, None)
                    refused.append(f"{it.node.to_string()} ({res.StatusCode.name})")
        if refused:
            shown = ", ".join(refused[:5]) + (
                f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            )
            self.src.error_once("node", f"{len(refused)} node(s) refused: {shown}")
        return len(self.items)

    async def _on_publish(self, result: ua.PublishResult) -> None:
        """Called by asyncua's publish loop for every publish response (data or keep-alive)."""
        self.last_publish = time.monotonic()
        if self.closing:
            return
        try:
            batch = self._messages(result)
        except Exception as e:  # a decoding surprise must not kill the publish loop silently
            self.fail("error", f"cannot handle a publish response: {e!r}")
            return
        if not batch:
            return
        self.in_deliver = True
        try:
            for chunk in _chunks(batch, MAX_DELIVER):
                await self.deliver(list(chunk))
        finally:
            self.in_deliver = False
            self.last_publish = time.monotonic()

    def _messages(self, result: ua.PublishResult) -> list[RawMessage]:
        data = result.NotificationMessage.NotificationData
        if not data:
            return []
        mono = time.monotonic()
        now_ns = time.time_ns()
        items = self.items
        out: list[RawMessage] = []
        append = out.append
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                for mi in notif.MonitoredItems:
                    item = items.get(mi.ClientHandle)
                    if item is not None:
                        append(
                            RawMessage(item.topic, encode(item, mi.Value), mono, now_ns, SOURCE, 0)
                        )
            elif isinstance(notif, ua.StatusChangeNotification):
                status = notif.Status
                if status is not None and status.value & _BAD:
                    self.fail("subscription", f"subscription status {status.name}")
        return out

    # -- watch ---------------------------------------------------------------
    async def watch(self) -> None:
        """Return never; raise OpcuaFailure when the server stops answering."""
        assert self.client is not None
        cfg = self.cfg
        params = ua.ReadParameters()
        params.NodesToRead = [
            ua.ReadValueId(
                NodeId=ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime),
                AttributeId=ua.AttributeIds.Value,
            )
        ]
        session = self.client.uaclient.session
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), cfg.watchdog_interval_s)
            if self.lost.is_set():
                raise self.lost_reason or OpcuaFailure("connect", "connection lost")
            try:
                async with asyncio.timeout(cfg.watchdog_timeout_s):
                    await session.read(params)
            except TimeoutError:
                raise OpcuaFailure(
                    "watchdog",
                    f"server did not answer the watchdog read within {cfg.watchdog_timeout_s:g} s",
                ) from None
            except Exception as e:
                if self.lost.is_set():
                    continue
                f = classify(e)
                raise OpcuaFailure(f.kind, f"watchdog read failed: {f.message}") from None
            silent = time.monotonic() - self.last_publish
            limit = 3 * self.src.keepalive_period_s + cfg.request_timeout_s
            if not self.in_deliver and silent > limit:
                raise OpcuaFailure(
                    "subscription", f"no publish response (data or keep-alive) for {silent:.0f} s"
                )

    # -- close ---------------------------------------------------------------
    async def close(self, graceful: bool, wait_deliver: bool = True) -> None:
        """CloseSession (deleting subscriptions) if the server answers; then drop everything.

        A batch the pipeline is still taking (backpressure) gets a moment to go in
        first, unless the gateway is stopping (`wait_deliver` False).
        """
        client = self.client
        if client is None:
            return
        self.closing = True
        if wait_deliver and self.in_deliver:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FORCE_CLOSE_TIMEOUT_S):
                    while self.in_deliver:
                        await asyncio.sleep(0.02)
        self.items = {}
        proto = client.uaclient.protocol
        alive = proto is not None and not proto.is_closed
        if alive:
            timeout = min(self.cfg.request_timeout_s, FORCE_CLOSE_TIMEOUT_S if graceful else 1.0)
            with contextlib.suppress(Exception, TimeoutError):
                async with asyncio.timeout(timeout):
                    await client.disconnect()
        await _force_close(client)
        self.client = None


async def _force_close(client: Client) -> None:
    """Cancel every task the client started and close its socket, without asking the server."""
    uac = client.uaclient
    uac.request_disconnect()
    tasks = [
        getattr(client, "_supervisor_task", None),
        getattr(client, "_stale_watchdog_task", None),
        getattr(client, "_renew_channel_task", None),
        getattr(uac.session, "_publish_task", None),
    ]
    live = [t for t in tasks if t is not None and not t.done()]
    for t in live:
        t.cancel()
    if live:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FORCE_CLOSE_TIMEOUT_S):
                await asyncio.gather(*live, return_exceptions=True)
    proto = uac.protocol
    transport = getattr(proto, "transport", None)
    if transport is not None:
        if transport.get_write_buffer_size():
            transport.abort()  # the peer is not reading: do not wait for a flush
        else:
            transport.close()  # FIN after what was written (e.g. CloseSession) is sent
    with contextlib.suppress(Exception):
        uac.disconnect_socket()


def _certificate_uri(data: bytes) -> str:
    """The URI SubjectAltName of a PEM or DER certificate (the client's ApplicationUri)."""
    from cryptography import x509

    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return ""
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else ""


def _load_der(data: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return x509.load_der_x509_certificate(data).public_bytes(Encoding.DER)


def _first_der(chain: bytes) -> bytes:
    """The first certificate of a DER chain (servers may send theirs with its CA)."""
    from asyncua.crypto import uacrypto
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = uacrypto.x509_from_der(chain)
    if cert is None:
        raise OpcuaFailure("certificate", "server sent no certificate with its endpoint")
    return cert.public_bytes(Encoding.DER)


# ------------------------------------------------------------------- source


class OpcuaSource:
    """One ``[[opcua.servers]]`` entry; `run(deliver)` until cancelled (never raises)."""

    name = SOURCE

    def __init__(self, cfg: OpcuaServer, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.endpoint = cfg.endpoint
        self.metrics = metrics
        self.connected = False
        self.sessions = 0  # sessions opened so far
        self.monitored = 0
        self.keepalive_period_s = cfg.keepalive_s
        self.browse_logged = False
        self._last_error = ""
        self._once: set[str] = set()
        if metrics is not None:
            metrics.opcua_connected.labels(self.endpoint).set(0)
            metrics.opcua_monitored_items.labels(self.endpoint).set(0)
        if cfg.username and cfg.security_policy == "None":
            log.warning(
                "opcua: %s: user name login with security_policy None: the server may "
                "receive the password in clear text",
                self.endpoint,
            )

    def _set_connected(self, up: bool, items: int = 0) -> None:
        self.connected = up
        self.monitored = items if up else 0
        if self.metrics is not None:
            self.metrics.opcua_connected.labels(self.endpoint).set(1 if up else 0)
            self.metrics.opcua_monitored_items.labels(self.endpoint).set(self.monitored)

    def _count(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.opcua_errors.labels(self.endpoint, kind).inc()

    def error_once(self, kind: str, message: str) -> None:
        """A problem that does not end the session: counted always, logged once."""
        self._count(kind)
        if message not in self._once:
            self._once.add(message)
            log.warning("opcua: %s: %s", self.endpoint, message)

    def _failed(self, f: OpcuaFailure, was_connected: bool) -> None:
        self._count(f.kind)
        text = f"{f.kind}: {f.message}"
        if was_connected or text != self._last_error:
            log.warning(
                "opcua: %s %s: %s (retrying with backoff)",
                self.endpoint,
                "lost" if was_connected else "unavailable",
                text,
            )
        self._last_error = text

    async def run(self, deliver: Deliver) -> None:
        cfg = self.cfg
        backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        while True:
            session = _Session(self, deliver)
            was_connected = False
            graceful = True
            try:
                await session.open()
                self.sessions += 1
                items = await session.resolve()
                n = await session.subscribe(items)
                if n == 0:
                    raise OpcuaFailure("node", "no node could be monitored")
                self._set_connected(True, n)
                was_connected = True
                backoff.reset()
                self._last_error = ""
                log.info(
                    "opcua: connected to %s (%s/%s), %d monitored items",
                    self.endpoint,
                    cfg.security_policy,
                    cfg.security_mode,
                    n,
                )
                await session.watch()
            except asyncio.CancelledError:
                self._set_connected(False)
                with contextlib.suppress(Exception):
                    await session.close(graceful=True, wait_deliver=False)
                raise
            except Exception as e:  # never crash the gateway: classify, log, back off
                f = classify(e)
                graceful = f.kind not in ("watchdog", "timeout")
                self._set_connected(False)
                self._failed(f, was_connected)
            with contextlib.suppress(Exception):
                await session.close(graceful)
            await asyncio.sleep(backoff.next())


def sources(servers: Iterable[OpcuaServer], metrics: Metrics | None = None) -> list[OpcuaSource]:
    """One source per configured server."""
    return [OpcuaSource(cfg, metrics) for cfg in servers]
