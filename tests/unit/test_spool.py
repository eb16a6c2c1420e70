"""Disk spool: order, durability across reopen, the bound, damaged segments."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.spool import Spool, segments


def _bodies(sp: Spool) -> list[bytes]:
    out = []
    for r in sp.peek(10_000):
        body = sp.read(r)
        assert body is not None
        out.append(body)
    return out


def _drain(sp: Spool) -> list[bytes]:
    got = []
    while sp.peek(1):
        r = sp.peek(1)[0]
        body = sp.read(r)
        assert body is not None
        got.append(body)
        sp.release(r)
    return got


def test_records_come_back_in_order_and_release_frees_segments(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=100)
    sp.open()
    for i in range(20):
        sp.append(b"line %d" % i, 1)
    sp.sync()
    assert sp.pending_readings == 20
    assert len(list(tmp_path.glob("seg-*.log"))) > 3
    assert _drain(sp) == [b"line %d" % i for i in range(20)]
    assert sp.pending_readings == 0 and sp.pending_bytes == 0
    # the active segment and the sent one before it (history for duplicate memory)
    assert len(list(tmp_path.glob("seg-*.log"))) == 2


def test_unsent_records_survive_a_restart_and_sent_ones_are_skipped(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=64)
    sp.open()
    for i in range(40):
        sp.append(b"r%02d" % i, 2)
    sp.sync()
    for _ in range(25):
        r = sp.peek(1)[0]
        sp.release(r)
    sp.close()

    again = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=64)
    rec = again.open()
    assert rec.records == 15 and rec.readings == 30
    assert _bodies(again) == [b"r%02d" % i for i in range(25, 40)]


def test_unclosed_spool_keeps_everything_synced(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=1 << 30)
    sp.open()
    for i in range(5):
        sp.append(b"x%d" % i, 1)
    sp.sync()  # no close(): like a SIGKILL right after the fsync
    again = Spool(tmp_path, max_bytes=1 << 30)
    assert again.open().records == 5
    assert _bodies(again) == [b"x%d" % i for i in range(5)]


def test_bound_drops_oldest_and_counts_readings(tmp_path: Path) -> None:
    bodies = [b"%03d" % i + b"y" * 997 for i in range(30)]  # told apart by their number
    sp = Spool(tmp_path, max_bytes=10_000, segment_bytes=4096)
    sp.open()
    for body in bodies:
        sp.append(body, 7)
    sp.sync()
    kept = len(sp.peek(1000))
    assert sp.pending_bytes <= 10_000
    assert 0 < kept < 30
    assert sp.dropped_readings == (30 - kept) * 7
    # the survivors are the newest ones, in order, still readable
    assert _bodies(sp) == bodies[30 - kept :]
    # and after a reopen the dropped ones stay dropped
    sp.close()
    again = Spool(tmp_path, max_bytes=10_000, segment_bytes=4096)
    again.open()
    assert _bodies(again) == bodies[30 - kept :]


def test_damaged_segment_is_quarantined_and_the_rest_kept(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=200)
    sp.open()
    for i in range(12):
        sp.append(b"record-%02d" % i + b"." * 40, 1)
    sp.sync()
    sp.close()
    segs = sorted(tmp_path.glob("seg-*.log"))
    assert len(segs) >= 3
    victim = segs[1]
    data = bytearray(victim.read_bytes())
    first_len = 20 + 49  # header + body of one record
    data[first_len + 25] ^= 0xFF  # flip a byte in the second record's body
    victim.write_bytes(bytes(data))

    again = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=200)
    rec = again.open()
    assert rec.quarantined == 1
    assert victim.with_suffix(".corrupt").exists()
    got = [int(b[7:9]) for b in _bodies(again)]
    # 3 records per segment: the victim held 3, 4, 5; 4 is damaged, so 4 and 5
    # are lost, 3 is salvaged (re-appended last), every other segment is intact
    assert got == [0, 1, 2, 6, 7, 8, 9, 10, 11, 3]


def test_torn_tail_after_power_cut(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=1 << 30)
    sp.open()
    for i in range(3):
        sp.append(b"ok%d" % i, 1)
    sp.sync()
    seg = sorted(tmp_path.glob("seg-*.log"))[-1]
    with open(seg, "ab") as f:
        f.write(b"EGR1\x10\x00")  # half a header
    again = Spool(tmp_path, max_bytes=1 << 30)
    rec = again.open()
    assert rec.quarantined == 1
    assert sorted(_bodies(again)) == [b"ok0", b"ok1", b"ok2"]


def test_memory_cache_is_bounded_and_the_rest_is_read_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "CACHE_BYTES", 40)
    sp = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=64)
    sp.open()
    bodies = [b"record %02d" % i for i in range(10)]  # 9 bytes each: 4 fit the cache
    for b in bodies:
        sp.append(b, 1)
    sp.sync()
    assert sp.cached_bytes == 36
    assert [r.body is not None for r in sp.peek(10)] == [True] * 4 + [False] * 6
    taken = sp.take(max_readings=100)
    assert [b for _, b in taken] == bodies
    sp.release_many([r for r, _ in taken])
    assert sp.cached_bytes == 0
    sp.append(b"after", 1)  # released bytes free the cache again
    assert sp.peek(1)[0].body == b"after"


def test_recent_bodies_after_a_crash_hold_the_newest_sent_and_unsent_records(
    tmp_path: Path,
) -> None:
    sp = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=200)  # 9 records a segment
    sp.open()
    for i in range(40):
        sp.append(b"r%02d" % i, 2)
    sp.sync()
    sp.release_many([r for r, _ in sp.take(60)])  # 30 records sent, 10 pending
    # no close(): a SIGKILL. The cursor moved with the released batch.
    again = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=200)
    rec = again.open()
    assert rec.records == 10  # nothing confirmed is sent again
    recent = again.recent_bodies(max_readings=12)
    assert recent == [b"r%02d" % i for i in range(34, 40)]  # 6 records of 2 readings
    assert again.recent_bodies(12) == []  # once only
    # old sent segments are gone: pending + at most two segments of history on disk
    segs = sorted(tmp_path.glob("seg-*.log"))
    kept = sum(p.stat().st_size for p in segs)
    assert len(segs) == 3  # the two newest of the last run, the new one
    assert kept <= 2 * (200 + 23)


def test_history_segments_are_pruned_as_new_ones_fill(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=100)
    sp.open()
    for i in range(200):
        sp.append(b"line %03d" % i, 1)
        sp.release_many([r for r, _ in sp.take(10)])
    assert len(list(tmp_path.glob("seg-*.log"))) == 2


def test_a_batch_in_flight_at_a_crash_is_counted_as_resent(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=1 << 20)
    sp.open()
    for i in range(10):
        sp.append(b"r%d" % i, 3)
    sp.sync()
    sp.release_many([r for r, _ in sp.take(6)])  # 2 records (6 readings) sent and confirmed
    taken = sp.take(9)  # the next 3 records handed to the sender: the process dies now
    assert [r.readings for r, _ in taken] == [3, 3, 3]
    crashed = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=1 << 20)
    rec = crashed.open()
    assert (rec.records, rec.inflight_readings) == (8, 9)
    crashed.release_many([r for r, _ in crashed.take(9)])  # resent and confirmed this time
    crashed.close()  # a clean stop: nothing was in flight
    assert Spool(tmp_path, max_bytes=1 << 30, segment_bytes=1 << 20).open().inflight_readings == 0
