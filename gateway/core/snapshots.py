"""Snapshot encoding in pieces (pure): large state is serialised a chunk at a time,
so the caller (the pipeline) can let the event loop run between pieces.

>>> rows = iter([[[1, "a"], [2, "b"]], [], [[3, "c"]]])
>>> b"".join(json_pieces(1, "rows", rows))
b'{"version":1,"rows":[[1,"a"],[2,"b"],[3,"c"]]}'
>>> b"".join(json_pieces(1, "rows", iter([])))
b'{"version":1,"rows":[]}'
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson


def json_pieces(version: int, key: str, chunks: Iterable[list[Any]]) -> Iterator[bytes]:
    """``orjson.dumps({"version": version, key: [items...]})``, one piece per chunk."""
    yield b'{"version":%d,"%s":[' % (version, key.encode())
    sep = b""
    for items in chunks:
        if items:
            yield sep + orjson.dumps(items)[1:-1]
            sep = b","
    yield b"]}"
