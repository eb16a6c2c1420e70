"""Disk spool: append-only segment files of line-protocol batches.

Every batch bound for InfluxDB is appended here and made durable (`sync`,
one fsync per group of batches) before its MQTT messages are acknowledged.
A sender reads records back in order and `release`s each once the sink
confirmed it. The spool is bounded by `max_bytes`: past it the oldest
records are dropped and their readings counted in `dropped_readings`.
Records the sender has taken (in flight to the sink) are never dropped, so
nothing is both written and counted as dropped; the bound can be exceeded by
that one batch.

Sent history: the segment before the one being written is kept after everything in it
was sent, and at start-up the two newest segments are read back by `recent_bodies()`,
so the pipeline can rebuild its duplicate memory after a crash (the broker redelivers
what was durable here but not yet acknowledged). Disk use: pending records plus at
most two segments of sent ones.

Record layout: ``b"EGR1" | u32 length | u32 crc32(body) | u64 readings | body``.
A segment whose records do not check out at start-up (torn write, bit rot,
truncation) keeps its valid prefix (re-appended to a fresh segment) and is
renamed ``*.corrupt``; the rest of the spool is untouched.

Not thread-safe: the pipeline runs every call on one dedicated thread.

Why ~410 lines: record format, recovery and salvage, the bound, the cursor and the
sent history are one on-disk structure; each part depends on the others' layout.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("edge.spool")

MAGIC = b"EGR1"
HEADER = struct.Struct("<4sIIQ")
MAX_RECORD = 256 << 20
CURSOR_FILE = "cursor"
# the first record (and readings) of the batch handed to the sender last: if the cursor
# still points there at start-up, that write was in flight when the gateway stopped
SENDING_FILE = "sending"
# Bodies of the newest records stay in memory up to this many bytes, so a sender that
# keeps up never reads back what was just written; during an outage the rest is read
# from the segment files.
CACHE_BYTES = 4 << 20


@dataclass(slots=True)
class Record:
    seg: int
    offset: int
    length: int  # body bytes
    readings: int
    gone: bool = False  # released or dropped
    inflight: bool = False  # taken by the sender: the bound must not drop it
    body: bytes | None = None  # kept in memory (see CACHE_BYTES) so take() need not read

    @property
    def size(self) -> int:
        return HEADER.size + self.length


@dataclass(slots=True)
class Recovery:
    records: int = 0
    readings: int = 0
    quarantined: int = 0
    skipped_sent: int = 0
    inflight_readings: int = 0  # resent first, though the store may have them already


class Spool:
    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int, segment_bytes: int = 16 << 20
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.pending: list[Record] = []  # in order; pending[0] is the oldest
        self._head = 0  # index of the first pending record in `pending`
        self._drop_at = 0  # pending[_head:_drop_at] are in flight or dropped
        self.pending_bytes = 0
        self.pending_readings = 0
        self.dropped_readings = 0
        self.quarantined = 0
        self._seg = 0
        self._fh: io.BufferedWriter | None = None
        self._size = 0
        self._live: dict[int, int] = {}  # segment -> pending records in it
        self._released_since_cursor = 0
        self.cached_bytes = 0
        self._idle: set[int] = set()  # segments on disk with nothing pending (history)
        self._history: list[Record] = []  # records of the newest segments found at open

    # ------------------------------------------------------------ open/close
    def _path(self, seg: int) -> Path:
        return self.dir / f"seg-{seg:012d}.log"

    def open(self) -> Recovery:
        """Index what an earlier run left; salvage damaged segments."""
        self.dir.mkdir(parents=True, exist_ok=True)
        rec = Recovery()
        cursor, skip_from, skip_to = self._read_cursor()

        def wanted(r: Record) -> bool:  # not sent yet, not dropped by the bound
            pos = (r.seg, r.offset)
            return pos >= cursor and not skip_from <= pos < skip_to

        segs = sorted(
            int(p.name[4:-4]) for p in self.dir.glob("seg-*.log") if p.name[4:-4].isdigit()
        )
        salvage: list[tuple[bytes, int]] = []
        newest = set(segs[-2:])
        for seg in segs:
            records, damaged = self._scan(seg)
            if damaged is not None:
                self._quarantine(seg, damaged, len(records))
                rec.quarantined += 1
                corrupt = self._path(seg).with_suffix(".corrupt")
                for r in records:
                    if wanted(r):
                        salvage.append((self._read_body(r, corrupt), r.readings))
                continue
            if seg in newest:
                self._history.extend(records)
            keep = [r for r in records if wanted(r)]
            rec.skipped_sent += len(records) - len(keep)
            if skip_from < skip_to:  # copy what precedes the dropped range (was in flight)
                for r in keep:
                    if (r.seg, r.offset) < skip_from:
                        salvage.append((self._read_body(r, self._path(seg)), r.readings))
                keep = [r for r in keep if (r.seg, r.offset) >= skip_to]
            if not keep:
                if seg in newest:
                    self._idle.add(seg)  # sent history, read by recent_bodies()
                else:
                    self._path(seg).unlink(missing_ok=True)
                continue
            for r in keep:
                self._track(r)
        self._seg = (segs[-1] + 1) if segs else 1
        self._start_segment()
        for body, readings in salvage:
            self.append(body, readings)
        if salvage:
            self.sync()
        if skip_from < skip_to:
            self._write_cursor()  # one position suffices again
        rec.records = len(self.pending) - self._head
        rec.readings = self.pending_readings
        rec.inflight_readings = self._inflight_at_open()
        return rec

    def _inflight_at_open(self) -> int:
        """Readings of the batch that was being written when the last run stopped (the
        cursor still at its first record): sent again now, perhaps for the second time."""
        try:
            seg, off, n = (int(x) for x in (self.dir / SENDING_FILE).read_text().split())
        except (OSError, ValueError):
            return 0
        head = self.peek(1)
        if head and (head[0].seg, head[0].offset) == (seg, off):
            return min(n, self.pending_readings)
        return 0

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None
        self._write_cursor()

    def recent_bodies(self, max_readings: int) -> list[bytes]:
        """Bodies of the newest records found at `open()` (sent or not), oldest first.

        From the end back until they hold `max_readings` readings; once only (the
        history is forgotten after the call).
        """
        out: list[bytes] = []
        n = 0
        for r in reversed(self._history):
            if n >= max_readings:
                break
            try:
                out.append(self._read_body(r, self._path(r.seg)))
            except OSError:
                break
            n += r.readings
        self._history = []
        out.reverse()
        return out

    # ----------------------------------------------------------------- write
    def append(self, body: bytes, readings: int) -> None:
        """Buffer one record; durable after the next `sync()`."""
        if len(body) > MAX_RECORD:
            raise ValueError(f"spool record of {len(body)} bytes is too large")
        if self._fh is None or self._size >= self.segment_bytes:
            self._rotate()
        assert self._fh is not None
        header = HEADER.pack(MAGIC, len(body), zlib.crc32(body), readings)
        offset = self._size
        self._fh.write(header)
        self._fh.write(body)
        self._size += HEADER.size + len(body)
        rec = Record(self._seg, offset, len(body), readings)
        if self.cached_bytes + len(body) <= CACHE_BYTES:
            rec.body = body
            self.cached_bytes += len(body)
        self._track(rec)
        self._enforce_bound()

    def sync(self) -> None:
        """Make everything appended so far durable (flush + fsync)."""
        fh = self._fh
        if fh is None:
            return
        fh.flush()
        os.fsync(fh.fileno())

    # ------------------------------------------------------------------ read
    def peek(self, n: int = 1) -> list[Record]:
        return self.pending[self._head : self._head + n]

    def read(self, r: Record) -> bytes | None:
        """The record's body, or None if the bound dropped it meanwhile."""
        if r.gone:
            return None
        if r.body is not None:
            return r.body
        if r.seg == self._seg and self._fh is not None:
            self._fh.flush()
        return self._read_body(r, self._path(r.seg))

    def take(self, max_readings: int, max_bytes: int = 32 << 20) -> list[tuple[Record, bytes]]:
        """The oldest pending records with their bodies, up to about `max_readings`."""
        out: list[tuple[Record, bytes]] = []
        n = size = 0
        for r in self.peek(10_000):
            body = self.read(r)
            if body is None:
                continue
            r.inflight = True
            out.append((r, body))
            n += r.readings
            size += r.length
            if n >= max_readings or size >= max_bytes:
                break
        if out:  # best effort, no fsync, like the cursor
            first = out[0][0]
            tmp = self.dir / (SENDING_FILE + ".tmp")
            with contextlib.suppress(OSError):
                tmp.write_text(f"{first.seg} {first.offset} {n}\n")
                tmp.replace(self.dir / SENDING_FILE)
        return out

    def release_many(self, records: list[Record]) -> None:
        """Release a sent batch and move the cursor past it at once.

        The cursor is written once per batch (no fsync: it survives a crash of the
        process, not of the machine), so a restart resends nothing that was confirmed,
        except a batch confirmed in the instant before the crash.
        """
        for r in records:
            self._release(r)
        self._write_cursor()

    def release(self, r: Record) -> None:
        """The sink has this record: forget it (and its segment once empty)."""
        self._release(r)
        self._write_cursor_if_due()

    def _release(self, r: Record) -> None:
        if self._head < len(self.pending) and self.pending[self._head] is r:
            self._head += 1
            self._untrack(r)
            self._skip_gone()
            self._compact()

    # --------------------------------------------------------------- private
    def _track(self, r: Record) -> None:
        self.pending.append(r)
        self.pending_bytes += r.size
        self.pending_readings += r.readings
        self._live[r.seg] = self._live.get(r.seg, 0) + 1

    def _untrack(self, r: Record) -> None:
        r.gone = True
        if r.body is not None:
            self.cached_bytes -= len(r.body)
            r.body = None
        self.pending_bytes -= r.size
        self.pending_readings -= r.readings
        left = self._live[r.seg] - 1
        if left:
            self._live[r.seg] = left
        else:
            del self._live[r.seg]
            if r.seg != self._seg:
                self._idle.add(r.seg)
                self._prune_idle()

    def _prune_idle(self) -> None:
        """Delete sent segments older than the one before the current (history kept)."""
        for seg in [s for s in self._idle if s < self._seg - 1]:
            self._idle.discard(seg)
            self._path(seg).unlink(missing_ok=True)

    def _compact(self) -> None:
        if self._head > 1024 and self._head * 2 > len(self.pending):
            del self.pending[: self._head]
            self._drop_at = max(0, self._drop_at - self._head)
            self._head = 0

    def _enforce_bound(self) -> None:
        """Drop the oldest records not in flight, keeping at least the newest one."""
        pending = self.pending
        last = len(pending) - 1
        i = max(self._head, self._drop_at)
        while self.pending_bytes > self.max_bytes and i < last:
            r = pending[i]
            i += 1
            if r.gone or r.inflight:
                continue
            self.dropped_readings += r.readings
            self._untrack(r)
        self._drop_at = i
        self._skip_gone()
        self._compact()

    def _skip_gone(self) -> None:
        pending = self.pending
        while self._head < len(pending) and pending[self._head].gone:
            self._head += 1

    def _start_segment(self) -> None:
        self._fh = open(self._path(self._seg), "ab")  # noqa: SIM115
        self._size = self._fh.tell()

    def _rotate(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            if self._seg not in self._live:
                self._idle.add(self._seg)
            self._seg += 1
            self._prune_idle()
        self._start_segment()

    def _read_body(self, r: Record, path: Path) -> bytes:
        with open(path, "rb") as f:
            f.seek(r.offset + HEADER.size)
            return f.read(r.length)

    def _scan(self, seg: int) -> tuple[list[Record], int | None]:
        """Valid records of a segment, and the offset of damage (None if clean)."""
        path = self._path(seg)
        out: list[Record] = []
        offset = 0
        with open(path, "rb") as f:
            data = f.read()
        end = len(data)
        while offset < end:
            if end - offset < HEADER.size:
                return out, offset
            magic, length, crc, readings = HEADER.unpack_from(data, offset)
            body_start = offset + HEADER.size
            if magic != MAGIC or length > MAX_RECORD or body_start + length > end:
                return out, offset
            if zlib.crc32(data[body_start : body_start + length]) != crc:
                return out, offset
            out.append(Record(seg, offset, length, readings))
            offset = body_start + length
        return out, None

    def _quarantine(self, seg: int, at: int, good: int) -> None:
        path = self._path(seg)
        target = path.with_suffix(".corrupt")
        path.replace(target)
        self.quarantined += 1
        log.error(
            "spool: segment %s damaged at byte %d; %d good records before it kept, "
            "file moved to %s",
            path.name,
            at,
            good,
            target.name,
        )

    def _read_cursor(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(resume position, start and end of a dropped range after it to skip)."""
        try:
            v = [int(x) for x in (self.dir / CURSOR_FILE).read_text().split()]
        except (OSError, ValueError):
            v = []
        if len(v) == 2:
            v += [0, 0, 0, 0]
        elif len(v) != 6:
            v = [0] * 6
        return (v[0], v[1]), (v[2], v[3]), (v[4], v[5])

    def _dropped_range(self) -> str:
        """`` seg off seg off`` of records the bound dropped behind in-flight ones, or ""."""
        pending = self.pending
        for i in range(self._head, min(self._drop_at, len(pending))):
            if pending[i].gone:
                first = pending[i]
                end = pending[self._drop_at] if self._drop_at < len(pending) else None
                to = (end.seg, end.offset) if end is not None else (self._seg, self._size)
                return f" {first.seg} {first.offset} {to[0]} {to[1]}"
        return ""

    def _write_cursor_if_due(self) -> None:
        self._released_since_cursor += 1
        if self._released_since_cursor >= 16:
            self._write_cursor()

    def _write_cursor(self) -> None:
        """Best effort (no fsync): a stale cursor only means a few resends."""
        self._released_since_cursor = 0
        head = self.peek(1)
        pos = (head[0].seg, head[0].offset) if head else (self._seg, self._size)
        tmp = self.dir / (CURSOR_FILE + ".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(f"{pos[0]} {pos[1]}{self._dropped_range()}\n")
            tmp.replace(self.dir / CURSOR_FILE)
