"""Detector and alert state on disk, so a restart neither re-warms every
series nor re-raises (or forgets) active alerts (SPEC §5).

Each part is one file under `<spool dir>/state/`, replaced atomically
(write to a temp file, fsync, rename). A file that cannot be read back is
moved aside as `*.corrupt` and the gateway starts with empty state for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from gateway.core import statemove

log = logging.getLogger("edge.state")


class StateInUse(Exception):
    """Another process holds this state directory (a running gateway, or an export)."""


class StateStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory) / "state"
        self.usable = True
        self._lock_fd: int | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.usable = False
            log.warning(
                "state: cannot use %s (%s): detector state will not survive a restart",
                self.dir,
                e.strerror,
            )

    def lock(self) -> None:
        """Hold ``state/.lock`` (flock, released when the process ends, also on SIGKILL)
        so two gateways, or a gateway and `edge-gateway state import`, never share one
        state directory. Raises StateInUse with one line saying who holds it."""
        if not self.usable or self._lock_fd is not None:
            return
        path = self.dir / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateInUse(
                f"state: {self.dir} is in use by another process (pid {holder}): "
                "a gateway with this spool dir is running; stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

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


def _read_parts(store: StateStore) -> dict[str, dict[str, Any]]:
    parts: dict[str, dict[str, Any]] = {}
    for name in statemove.PARTS:
        data = store.load(name)
        if data is None:
            continue
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise statemove.StateMoveError(f"{store.dir / name}: not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise statemove.StateMoveError(f"{store.dir / name}: not a state file")
        parts[name] = doc
    return parts


def export_state(
    store: StateStore,
    keep: statemove.Keep,
    selected: dict[str, list[str]],
    out: Path,
    *,
    remove: bool,
) -> dict[str, int]:
    """Write the selected equipment's state to the bundle `out`; with `remove`, take it out
    of `store` too (the state is moving). Holds the store's lock: raises StateInUse while
    its gateway runs, StateMoveError on state it cannot read."""
    store.lock()
    try:
        moved, kept = statemove.split(_read_parts(store), keep)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(orjson.dumps(statemove.bundle(moved, selected)))
        os.replace(tmp, out)
        if remove:
            for name, doc in kept.items():
                store.save(name, orjson.dumps(doc))
        return statemove.counts(moved)
    finally:
        store.unlock()


def import_state(store: StateStore, src: Path) -> dict[str, int]:
    """Merge the bundle `src` into `store` (its gateway stopped): the next start restores it."""
    try:
        doc = orjson.loads(src.read_bytes())
    except orjson.JSONDecodeError as e:
        raise statemove.StateMoveError(f"{src}: not JSON ({e})") from None
    parts = statemove.unbundle(doc)
    store.lock()
    try:
        merged = statemove.merge(_read_parts(store), parts)
        for name in parts:
            store.save(name, orjson.dumps(merged[name]))
        return statemove.counts(parts)
    finally:
        store.unlock()
