"""`Normalizer`: untrusted messages -> readings or rejects, for one source's subscriptions.

The message level: size limit, topic -> route (template levels, format), JSON decode,
then the payload format's module (`json_format`, `fields_format`); everything ends in
the per-reading checks of `checks.ItemChecks`. Never raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import orjson

from gateway.config import Subscription, ValidationConfig
from gateway.core.model import MALFORMED, TOO_LARGE, RawMessage, Reading, Reject
from gateway.core.normalize.checks import ROUTE_CACHE_MAX, Bounds
from gateway.core.normalize.fields_format import FieldsFormat
from gateway.core.normalize.json_format import JsonFormat
from gateway.core.normalize.names import name_problem
from gateway.core.normalize.sparkplug_format import SparkplugFormat
from gateway.core.series import CachePruner

REJECT_PAYLOAD_MAX: Final = 1024
REJECT_TOPIC_MAX: Final = 1024

# A route: what a topic means. (reason, detail) are set when the topic is unusable.
# `fields` is None for format "sparkplug" (protobuf, decoded by its own module).
Route = tuple[str, str, "bool | None", str, "str | None", "str | None", dict[str, str]]

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class Normalizer(JsonFormat, FieldsFormat, SparkplugFormat):
    """Turns `RawMessage`s into readings for one source's subscriptions.

    `bounds(equipment, sensor, line) -> (min, max)` gives physical bounds
    (either may be None); results are cached per (equipment, sensor, line), so
    call `invalidate_bounds()` when the rules change.
    """

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        cfg: ValidationConfig,
        bounds: Bounds | None = None,
        source: str = "mqtt",
    ) -> None:
        super().__init__(cfg, bounds, source)
        self._subs = [(s.compiled(), s.format, s.unit) for s in subscriptions]
        self._single = len(self._subs) == 1
        self._max_payload = cfg.max_payload_bytes
        self._routes: dict[object, Route] = {}
        self._routes_pruner = CachePruner(value_at=(4, 5))  # a route's (eq, sn)

    def add_subscriptions(self, subscriptions: Sequence[Subscription]) -> None:
        """More subscriptions, numbered after the existing ones (a source's retired
        filters, `Processor.retire`); cached routes are dropped."""
        self._subs += [(s.compiled(), s.format, s.unit) for s in subscriptions]
        self._single = len(self._subs) == 1
        self._routes.clear()

    def normalize(self, msg: RawMessage) -> tuple[list[Reading], list[Reject]]:
        """Readings and rejects for one raw message; never raises."""
        try:
            return self._normalize(msg)
        except Exception as e:  # safety net: a bug must not stop ingest
            self.internal_errors += 1
            topic = getattr(msg, "topic", "")
            payload = getattr(msg, "payload", b"")
            return [], [
                Reject(
                    MALFORMED,
                    f"could not be normalized ({type(e).__name__})",
                    str(topic)[:REJECT_TOPIC_MAX],
                    bytes(payload[:REJECT_PAYLOAD_MAX]) if isinstance(payload, bytes) else b"",
                )
            ]

    def _normalize(self, msg: RawMessage) -> tuple[list[Reading], list[Reject]]:
        payload = msg.payload
        topic = msg.topic
        out: list[Reading] = []
        rej: list[Reject] = []
        self._topic = topic if len(topic) <= REJECT_TOPIC_MAX else topic[:REJECT_TOPIC_MAX]
        cut = payload if len(payload) <= REJECT_PAYLOAD_MAX else payload[:REJECT_PAYLOAD_MAX]
        self._payload = cut if type(cut) is bytes else bytes(cut)
        if len(payload) > self._max_payload:
            self._reject(
                rej, TOO_LARGE, f"payload of {len(payload)} bytes exceeds {self._max_payload}", -1
            )
            return out, rej
        idx = msg.subscription
        key: object = topic if self._single else (idx, topic)
        route = self._routes.get(key)
        if route is None:
            route = self._route(idx, topic)
            if len(topic) <= REJECT_TOPIC_MAX:
                if len(self._routes) >= ROUTE_CACHE_MAX:
                    self._routes.clear()
                self._routes[key] = route
        why, detail, fields, unit, eq, sn, tags = route
        if why:
            self._reject(rej, why, detail, -1)
            return out, rej
        if fields is None:  # format "sparkplug"
            self._sp_unit = unit
            self._sparkplug(out, rej, msg)
            return out, rej
        if not payload:
            self._reject(rej, MALFORMED, "payload is empty", -1)
            return out, rej
        try:
            data = _loads(payload)
        except _JSONDecodeError as e:
            self._reject(rej, MALFORMED, f"payload is not valid JSON ({e.msg})", -1)
            return out, rej
        now = self._now = msg.received_ns
        self._nowt = (now, "", "")
        self._received = msg.received
        if fields:
            self._fields_payload(out, rej, data, eq, tags, unit)
        else:
            self._json_payload(out, rej, data, eq, sn, tags, unit)
        return out, rej

    def prune_caches(self, budget: int) -> int:
        """Drop cached routes and bounds of series no longer registered, `budget` looked at
        per cache (`CachePruner`); routes of topics that name no sensor (or no equipment,
        or that are unusable) are kept."""
        n = self._routes_pruner.step(self._routes, self.series.view(), budget)
        return n + super().prune_caches(budget)

    def _route(self, idx: int, topic: str) -> Route:
        subs = self._subs
        n = len(subs)
        order = [idx, *(j for j in range(n) if j != idx)] if 0 <= idx < n else list(range(n))
        for j in order:
            template, fmt, unit = subs[j]
            m = template.match(topic)
            if m is None:
                continue
            if fmt == "event":
                return (MALFORMED, "event format not handled here", False, "", None, None, {})
            if fmt == "sparkplug":  # the topic's levels are read by the format itself
                return ("", "", None, unit, None, None, {})
            eq = m.pop("equipment", None)
            sn = m.pop("sensor", None)
            for name, v in (("equipment", eq), ("sensor", sn), *m.items()):
                if v is None:
                    continue
                p = name_problem(v)
                if p is not None:
                    return (p[0], f"topic level {name} {p[1]}", False, "", None, None, {})
            return ("", "", fmt == "fields", unit, eq, sn, m)
        return (MALFORMED, "topic matches no subscription template", False, "", None, None, {})
