"""Detector and alert state on disk, so a restart neither re-warms every
series nor re-raises (or forgets) active alerts (SPEC §5).

Each part is one file under `<spool dir>/state/`, replaced atomically
(write to a temp file, fsync, rename). A file that cannot be read back is
moved aside as `*.corrupt` and the gateway starts with empty state for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("edge.state")


class StateStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory) / "state"
        self.usable = True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.usable = False
            log.warning(
                "state: cannot use %s (%s): detector state will not survive a restart",
                self.dir,
                e.strerror,
            )

    def load(self, name: str) -> bytes | None:
        if not self.usable:
            return None
        try:
            return (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("state: cannot read %s: %s", self.dir / name, e.strerror)
            return None

    def quarantine(self, name: str, why: str) -> None:
        src = self.dir / name
        with contextlib.suppress(OSError):
            src.replace(src.with_name(name + ".corrupt"))
        log.error("state: %s unreadable (%s); moved aside, starting without it", src, why)

    def save(self, name: str, data: bytes) -> None:
        """Atomic replace; call from a worker thread, it fsyncs."""
        if not self.usable:
            return
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
