"""Alert history: every alert transition, in SQLite under the spool directory.

``{spool.dir}/history.sqlite3``, one row per transition (the alert event JSON of
SPEC §6 plus ``updated_at``), so ``GET /api/alerts/history`` and the page answer
after a restart, without InfluxDB. Off the hot path: `record` (called from
`Processor.emit` through its watchers) only appends the transitions' snapshots to a
list; a task hands them every `flush_interval_s` to the one thread that owns the
connection, which serialises and inserts them in batches (one transaction per
`CHUNK` rows, WAL, ``synchronous=NORMAL``), and prunes in the background: rows older
than `retention_days`, and the oldest beyond `max_rows`, `PRUNE_CHUNK` rows per
statement so a query never waits long. Queries run in the same thread.

A history that cannot be opened (disk, permissions) is logged once and stays off;
a file that is not a database is moved aside (``.corrupt-<time>``) and a new one
made. If the thread falls behind by more than `MAX_PENDING` rows the oldest are
dropped and counted: the history never holds up alert publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter, Gauge

from gateway.config import HistoryConfig
from gateway.core.alerts import Alert, iso_ms

log = logging.getLogger("edge.history")

FILENAME = "history.sqlite3"
SCHEMA_VERSION = 1
CHUNK = 2000  # rows per insert transaction
PRUNE_CHUNK = 5000  # rows per delete statement
MAX_PENDING = 200_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_history (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    id TEXT NOT NULL,
    equipment TEXT NOT NULL,
    sensor TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    event BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_history_at ON alert_history (at);
CREATE INDEX IF NOT EXISTS alert_history_equipment ON alert_history (equipment, at);
"""


def _iso_s(epoch_s: float) -> str:
    return iso_ms(round(epoch_s * 1000) * 1_000_000)


def _row(a: Alert) -> tuple[float, str, str, str, str, str, bytes]:
    doc = a.to_event()
    doc["updated_at"] = _iso_s(a.updated_at)
    return (a.updated_at, a.id, a.equipment, a.sensor, a.kind, a.state, orjson.dumps(doc))


class AlertHistory:
    """The SQLite alert history; `start`, then `record` from the pipeline, `close`."""

    def __init__(self, cfg: HistoryConfig, spool_dir: str, registry: Any = None) -> None:
        self.cfg = cfg
        self.path = Path(spool_dir) / FILENAME
        self._pending: list[Alert] = []
        self._db: sqlite3.Connection | None = None
        self._ex: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.ok = False
        self.m_written = Counter(
            "edge_history_rows_written_total",
            "Alert transitions written to the SQLite history",
            registry=registry,
        )
        self.m_dropped = Counter(
            "edge_history_rows_dropped_total",
            "Alert transitions not written to the history (it fell behind, or failed)",
            registry=registry,
        )
        self.m_pruned = Counter(
            "edge_history_rows_pruned_total",
            "History rows deleted for [history] retention_days or max_rows",
            registry=registry,
        )
        self.m_rows = Gauge(
            "edge_history_rows", "Rows in the SQLite alert history", registry=registry
        )
        self.rows = 0

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> bool:
        """Open (create, migrate) the database; False (logged) if it cannot be."""
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
        try:
            await self._call(self._open)
        except (OSError, sqlite3.Error) as e:
            log.warning("history: %s cannot be opened (%s); alert history is off", self.path, e)
            self._ex.shutdown(wait=False)
            self._ex = None
            return False
        self.ok = True
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="history")
        log.info("history: %s (%d transitions)", self.path, self.rows)
        return True

    async def close(self) -> None:
        """Write what is pending, close the database and the thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ex is None:
            return
        with contextlib.suppress(sqlite3.Error, OSError):
            await self.flush()
        with contextlib.suppress(sqlite3.Error):
            await self._call(self._close)
        self._ex.shutdown(wait=True)
        self._ex = None
        self.ok = False

    # ---------------------------------------------------------- hot path
    def record(self, transitions: list[Alert], _changes: object = None) -> None:
        """A `Processor` watcher: keep the transitions for the next flush."""
        if not transitions or not self.ok:
            return
        pending = self._pending
        pending.extend(transitions)
        if len(pending) > MAX_PENDING:
            drop = len(pending) - MAX_PENDING
            del pending[:drop]
            self.m_dropped.inc(drop)
        if len(pending) >= CHUNK and self._wake is not None:
            self._wake.set()

    # ----------------------------------------------------------- queries
    async def query(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        equipment: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Transitions newest first: `start` <= at < `end` (gateway epoch seconds)."""
        if not self.ok:
            return []
        return await self._call(self._select, start, end, equipment, kind, limit)

    # ------------------------------------------------------------ the task
    async def _run(self) -> None:
        assert self._wake is not None
        next_prune = time.monotonic() + min(5.0, self.cfg.prune_interval_s)
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.flush_interval_s)
            self._wake.clear()
            try:
                await self.flush()
                if time.monotonic() >= next_prune:
                    await self.prune()
                    next_prune = time.monotonic() + self.cfg.prune_interval_s
                if failing:
                    failing = False
                    log.info("history: writes work again")
            except (sqlite3.Error, OSError) as e:
                if not failing:  # one line when it starts failing, one when it recovers
                    failing = True
                    log.warning("history: write failed (%s); retrying", e)
                await asyncio.sleep(min(5.0, self.cfg.prune_interval_s))

    async def flush(self) -> int:
        """Insert everything pending; the number of rows written."""
        n = 0
        while self._pending:
            batch = self._pending[:CHUNK]
            try:
                await self._call(self._insert, batch)
            except (sqlite3.Error, OSError):
                if len(self._pending) > MAX_PENDING // 2:  # failing for long: make room
                    self.m_dropped.inc(len(batch))
                    del self._pending[: len(batch)]
                raise
            del self._pending[: len(batch)]
            n += len(batch)
        return n

    async def prune(self) -> int:
        """Delete rows past retention or the row cap, a chunk per statement."""
        total = 0
        while True:
            n = await self._call(self._prune_chunk, time.time())
            total += n
            if n < PRUNE_CHUNK:
                return total

    async def _call(self, fn: Any, *args: Any) -> Any:
        assert self._ex is not None
        return await asyncio.get_running_loop().run_in_executor(self._ex, fn, *args)

    # ------------------------------------------------- in the history thread
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect()
        except sqlite3.DatabaseError as e:  # not a database: keep it aside, start anew
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.warning("history: %s is unreadable (%s); moved to %s", self.path, e, aside)
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f"{self.path}{suffix}")
            db = self._connect()
        self._db = db
        self.rows = int(db.execute("SELECT count(*) FROM alert_history").fetchone()[0])
        self.m_rows.set(self.rows)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this gateway")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _insert(self, batch: list[Alert]) -> None:
        db = self._db
        assert db is not None
        rows = [_row(a) for a in batch]
        with db:  # BEGIN ... COMMIT
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO alert_history (at, id, equipment, sensor, kind, state, event) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        self.rows += len(rows)
        self.m_written.inc(len(rows))
        self.m_rows.set(self.rows)

    def _prune_chunk(self, now: float) -> int:
        db = self._db
        assert db is not None
        horizon = now - self.cfg.retention_days * 86400.0
        over = self.rows - self.cfg.max_rows
        cur = db.execute(
            "DELETE FROM alert_history WHERE seq IN (SELECT seq FROM alert_history "
            "WHERE at < ? ORDER BY seq LIMIT ?)",
            (horizon, PRUNE_CHUNK),
        )
        n = max(0, cur.rowcount)
        if n < PRUNE_CHUNK and over - n > 0:
            cur = db.execute(
                "DELETE FROM alert_history WHERE seq IN (SELECT seq FROM alert_history "
                "ORDER BY seq LIMIT ?)",
                (min(PRUNE_CHUNK - n, over - n),),
            )
            n += max(0, cur.rowcount)
        if n:
            self.rows = max(0, self.rows - n)
            self.m_pruned.inc(n)
            self.m_rows.set(self.rows)
        return n

    def _select(
        self,
        start: float | None,
        end: float | None,
        equipment: str | None,
        kind: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        db = self._db
        assert db is not None
        where: list[str] = []
        args: list[Any] = []
        if start is not None:
            where.append("at >= ?")
            args.append(start)
        if end is not None:
            where.append("at < ?")
            args.append(end)
        if equipment is not None:
            where.append("equipment = ?")
            args.append(equipment)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        sql = "SELECT event FROM alert_history"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [orjson.loads(e) for (e,) in db.execute(sql, args)]
