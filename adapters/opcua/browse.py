"""Which variables one server session monitors: `resolve(client, cfg, owner)`.

The configured ``[[opcua.servers.nodes]]`` and/or the variables found below
``browse_root`` (chunked Browse / BrowseNext of hierarchical references;
``HasProperty`` children and the standard ``Server`` object are skipped, and so
are variables whose DataType is a non-numeric built-in type, with one log line);
a variable's browse path ``.../<line>/<equipment>/<sensor>`` names its readings.
Where the config names no unit, the ``EngineeringUnits`` property gives it
(TranslateBrowsePaths + Read). Every request carries at most
``max_items_per_request`` nodes.
"""

# asyncua annotates NodeId/DataValue fields with its own int/str/datetime aliases.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from asyncua import Client, ua

from adapters.opcua.encoding import Item, chunks, map_browse_path, plain
from adapters.opcua.errors import OpcuaFailure
from gateway.config import OpcuaServer

log = logging.getLogger("edge.opcua")

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


class Reporter(Protocol):
    """What resolution reports to the source, which outlives the session."""

    browse_logged: bool  # the skipped-variables line is logged once per source

    def error_once(self, kind: str, message: str) -> None: ...


async def resolve(client: Client, cfg: OpcuaServer, owner: Reporter) -> list[Item]:
    """The items to monitor, with their topics computed (`Item.finish`)."""
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
        owner.error_once("config", f"skipped nodes: {', '.join(bad)}")
    if cfg.browse_root:
        items.extend(await _browse(client, cfg, owner))
    need_unit = [it for it in items if not it.unit]
    if need_unit:
        units = await _units(client, cfg, [it.node for it in need_unit])
        for it in need_unit:
            it.unit = units.get(it.node, "")
    return [it.finish() for it in items]


async def _browse(client: Client, cfg: OpcuaServer, owner: Reporter) -> list[Item]:
    assert cfg.browse_root
    root, root_name = await _root(client, cfg, cfg.browse_root)
    seen = {root}
    frontier: list[tuple[ua.NodeId, tuple[str, ...]]] = [(root, ())]
    found: list[tuple[ua.NodeId, tuple[str, ...]]] = []
    for _ in range(cfg.browse_max_depth):
        if not frontier:
            break
        nxt: list[tuple[ua.NodeId, tuple[str, ...]]] = []
        for chunk in chunks(frontier, cfg.max_items_per_request):
            refs_per_node = await _browse_nodes(client, [n for n, _ in chunk])
            for (_, path), refs in zip(chunk, refs_per_node, strict=True):
                for ref in refs:
                    if not ref.IsForward or ref.ReferenceTypeId == _HAS_PROPERTY:
                        continue
                    nid = plain(ref.NodeId)
                    if nid in seen or nid == _SERVER_OBJECT:
                        continue
                    seen.add(nid)
                    p = (*path, ref.BrowseName.Name)
                    if ref.NodeClass == ua.NodeClass.Variable:
                        found.append((nid, p))
                    elif ref.NodeClass == ua.NodeClass.Object:
                        nxt.append((nid, p))
        frontier = nxt
    types = await _read(client, cfg, [n for n, _ in found], ua.AttributeIds.DataType)
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
    if skipped and not owner.browse_logged:
        log.info(
            "opcua: %s: browse of %s found %d variables, skipped %d non-numeric ones",
            cfg.endpoint,
            cfg.browse_root,
            len(found),
            skipped,
        )
        owner.browse_logged = True
    return items


async def _root(client: Client, cfg: OpcuaServer, spec: str) -> tuple[ua.NodeId, str]:
    """The browse root: a node id (``ns=2;s=Plant``) or a path like ``Objects/Plant``."""
    if spec.split(";", 1)[0].split("=", 1)[0] in ("ns", "nsu", "i", "s", "g", "b"):
        try:
            node = ua.NodeId.from_string(spec)
        except Exception:
            raise OpcuaFailure("config", f"browse_root {spec!r} is not a node id") from None
        names = await _read(client, cfg, [node], ua.AttributeIds.BrowseName)
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
        refs = (await _browse_nodes(client, [node]))[0]
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
        node, name = plain(match[0].NodeId), bare
        walked.append(bare)
    return node, name


async def _browse_nodes(client: Client, nodes: Sequence[ua.NodeId]) -> list[list[Any]]:
    session = client.uaclient.session
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


async def _read(
    client: Client, cfg: OpcuaServer, nodes: Sequence[ua.NodeId], attr: ua.AttributeIds
) -> list[ua.DataValue]:
    session = client.uaclient.session
    out: list[ua.DataValue] = []
    for chunk in chunks(nodes, cfg.max_items_per_request):
        params = ua.ReadParameters()
        params.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=attr) for n in chunk]
        out.extend(await session.read(params))
    return out


async def _units(
    client: Client, cfg: OpcuaServer, nodes: Sequence[ua.NodeId]
) -> dict[ua.NodeId, str]:
    """EngineeringUnits DisplayName of each node that has the property."""
    session = client.uaclient.session
    props: list[tuple[ua.NodeId, ua.NodeId]] = []
    for chunk in chunks(nodes, cfg.max_items_per_request):
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
                props.append((n, plain(res.Targets[0].TargetId)))
    units: dict[ua.NodeId, str] = {}
    values = await _read(client, cfg, [p for _, p in props], ua.AttributeIds.Value)
    for (n, _), dv in zip(props, values, strict=True):
        eu = dv.Value.Value if dv.Value is not None else None
        text = getattr(getattr(eu, "DisplayName", None), "Text", None)
        if isinstance(text, str) and text and text.isprintable() and len(text) <= 64:
            units[n] = text
    return units
