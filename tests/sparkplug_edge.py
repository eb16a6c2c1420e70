"""A scripted Sparkplug B edge node for the tests: builds payloads, keeps seq."""

from __future__ import annotations

import time
from typing import Any

from gateway.core.sparkplug import schema as s
from gateway.core.sparkplug.host import REBIRTH_METRIC


class Edge:
    """A scripted edge node: builds payloads, keeps seq."""

    def __init__(self, group: str = "Plant1", node: str = "Edge1", bdseq: int = 0) -> None:
        self.group, self.node, self.bdseq, self.seq = group, node, bdseq, 0
        self.ts = int(time.time() * 1000) - 60_000

    def topic(self, typ: str, device: str | None = None) -> str:
        t = f"spBv1.0/{self.group}/{typ}/{self.node}"
        return t if device is None else f"{t}/{device}"

    def payload(self, metrics: list[dict[str, Any]], seq: int | None = -1) -> bytes:
        self.ts += 1
        p = s.Payload(timestamp=self.ts)
        if seq == -1:
            p.seq = self.seq
            self.seq = (self.seq + 1) & 0xFF
        elif seq is not None:
            p.seq = seq
        for m in metrics:
            props = m.pop("props", None)
            x = p.metrics.add(**m)
            for k, v in (props or {}).items():
                x.properties.keys.append(k)
                if isinstance(v, str):
                    x.properties.values.add(type=s.STRING, string_value=v)
                else:
                    x.properties.values.add(type=s.INT32, int_value=v)
        return bytes(p.SerializeToString())

    def nbirth(self, extra: list[dict[str, Any]] | None = None) -> tuple[str, bytes]:
        self.seq = 0
        metrics = [
            {"name": "bdSeq", "datatype": s.INT64, "long_value": self.bdseq},
            {"name": REBIRTH_METRIC, "datatype": s.BOOLEAN, "boolean_value": False},
            *(extra or []),
        ]
        return self.topic("NBIRTH"), self.payload(metrics)

    def ndeath(self, bdseq: int | None = None) -> tuple[str, bytes]:
        bd = self.bdseq if bdseq is None else bdseq
        m = [{"name": "bdSeq", "datatype": s.INT64, "long_value": bd}]
        return self.topic("NDEATH"), self.payload(m, seq=None)
