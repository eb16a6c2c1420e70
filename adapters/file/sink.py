"""Line-protocol file sink: the demo's stand-in when no InfluxDB answers.

Appends each batch to one file; `influx write --file` or Telegraf's `file`
input can load it later.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from adapters.base import SinkError


class FileSink:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"file {self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, body: bytes) -> None:
        with self.path.open("ab") as f:
            f.write(body)
            if not body.endswith(b"\n"):
                f.write(b"\n")

    async def write(self, body: bytes) -> None:
        try:
            await asyncio.to_thread(self._append, body)
        except OSError as e:
            raise SinkError(f"cannot append to {self.path}: {e.strerror}", retryable=True) from None

    async def close(self) -> None:
        return None
