"""The snapshot watcher: deltas, reloads, expiry and an unreadable index."""

from __future__ import annotations

import asyncio
import os
import time

from atr_proxy.index import FeedSpec, IndexWriter, connect
from atr_proxy.index.watch import SnapshotWatcher

from .conftest import Item, fill


def names(snap, name):
    return sorted(h.feed.name for h in snap.match_name(name))


def test_committed_change_is_applied_as_a_delta(index_path, writer):
    feed = fill(writer, "f", [("domain", "a.example")])
    watcher = SnapshotWatcher(index_path)
    first = watcher.load()
    writer.add_indicator(feed, "domain", "b.example")
    assert watcher.poll() is True
    snap = watcher.snapshot
    assert snap is not first and snap.generation > first.generation
    assert names(snap, "b.example") == ["f"] and names(snap, "a.example") == ["f"]
    assert first.match_name("b.example") == []  # published snapshots never change
    assert watcher.poll() is False  # nothing new: nothing done


def test_feed_settings_change_takes_effect_without_rebuild(index_path, writer):
    fill(writer, "f", [("domain", "a.example")])
    watcher = SnapshotWatcher(index_path)
    watcher.load()
    writer.upsert_feed(FeedSpec(name="f", action="monitor"))
    watcher.poll()
    assert [h.feed.action for h in watcher.snapshot.match_name("a.example")] == ["monitor"]
    writer.upsert_feed(FeedSpec(name="f", enabled=False))
    watcher.poll()
    assert watcher.snapshot.match_name("a.example") == []


def test_new_feed_and_exceptions_arrive_by_delta(index_path, writer):
    watcher = SnapshotWatcher(index_path)
    fill(writer, "f", [])
    watcher.load()
    fill(writer, "g", [("ip", "192.0.2.0/24")])
    writer.add_exception("destination", "ip", "192.0.2.5")
    watcher.poll()
    snap = watcher.snapshot
    assert [h.feed.name for h in snap.match_ip("192.0.2.9")] == ["g"]
    assert [e.value for e in snap.exceptions.items] == ["192.0.2.5"]


def test_reload_marker_rebuilds(index_path, writer):
    feed = fill(writer, "f", [("domain", "old.example")])
    watcher = SnapshotWatcher(index_path)
    watcher.load()
    writer.replace_feed(feed, [Item("domain", f"n{i}.example") for i in range(25_000)])
    assert watcher.poll() is True
    assert watcher.last_error is None
    rebuilt = watcher.snapshot
    assert rebuilt.match_name("old.example") == []
    assert names(rebuilt, "n24999.example") == ["f"]
    assert rebuilt.count() == 25_000
    assert watcher.poll() is False and watcher.snapshot is rebuilt  # no second rebuild


def test_expired_indicator_stops_matching_without_resync(index_path, writer):
    feed = fill(writer, "mdr", [], module="mdr")
    writer.add_indicator(feed, "domain", "brief.example", expires_at=time.time() + 0.6)
    watcher = SnapshotWatcher(index_path)
    watcher.load()
    assert names(watcher.snapshot, "brief.example") == ["mdr"]
    deadline = time.time() + 3
    while watcher.snapshot.match_name("brief.example") and time.time() < deadline:
        time.sleep(0.1)
        watcher.poll()
    assert watcher.snapshot.match_name("brief.example") == []
    assert writer.conn.execute("SELECT COUNT(*) FROM indicators").fetchone()[0] == 1  # no purge


def test_unreadable_index_keeps_last_snapshot_and_recovers(index_path, writer, tmp_path):
    feed = fill(writer, "f", [("domain", "kept.example")])
    watcher = SnapshotWatcher(index_path)
    watcher.load()
    moved = tmp_path / "moved.db"
    writer.conn.close()
    os.replace(index_path, moved)
    with open(index_path, "wb") as garbage:
        garbage.write(b"this is not a database" * 100)
    assert watcher.poll() is False
    assert watcher.last_error
    assert names(watcher.snapshot, "kept.example") == ["f"]
    os.replace(moved, index_path)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(moved) + suffix):
            os.replace(str(moved) + suffix, str(index_path) + suffix)
    w2 = IndexWriter(connect(index_path))
    w2.add_indicator(feed, "domain", "new.example")
    watcher.poll()
    assert watcher.last_error is None
    assert names(watcher.snapshot, "new.example") == ["f"]


async def test_run_loop_picks_up_changes_within_a_second(index_path, writer):
    feed = fill(writer, "f", [])
    watcher = SnapshotWatcher(index_path, interval=0.1)
    watcher.load()
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    writer.add_indicator(feed, "domain", "live.example")
    committed = time.monotonic()
    while not watcher.snapshot.match_name("live.example"):
        assert time.monotonic() - committed < 1.0, "change not visible within 1 s"
        await asyncio.sleep(0.02)
    stop.set()
    await task


def test_chunked_columns_give_the_same_rows_as_the_row_query(index_path, writer):
    from atr_proxy.index import reader

    fill(writer, "f", [("domain", f"n{i}.example", "exact" if i % 3 else "subtree")
                       for i in range(500)]
         + [("url", f"h{i % 9}.example:8080/p{i}") for i in range(200)]
         + [("ip", f"192.0.2.{i}") for i in range(50)] + [("ip", "2001:db8::/48")])
    rows = sorted(reader.live_indicators(writer.conn, time.time()))
    chunked = []
    for ids, feeds, codes, values, hosts in reader.live_indicator_chunks(
            writer.conn, time.time(), size=97):
        chunked += zip(ids, feeds, map(int, codes), values, hosts, strict=True)
    assert sorted((i, f, c, v, h or None) for i, f, c, v, h in chunked) == rows
    assert {h for _, _, c, _, h in rows if c == 2} == {f"h{i}.example" for i in range(9)}


def test_confirmations_are_read_once_per_snapshot_and_forgotten_at_the_next(index_path,
                                                                            writer):
    """A flood of names under one listed domain (tunnelling, DGA) asks SQLite once, not once
    per name; and a confirmed value is forgotten when the next snapshot is published, since
    SQLite may give a deleted row's id to the next new row."""
    feed = fill(writer, "f", [("domain", "tunnel.example")])
    watcher = SnapshotWatcher(index_path)
    watcher.load()
    assert names(watcher.snapshot, "x0.tunnel.example") == ["f"]
    reads: list[str] = []
    watcher._confirm_conn.set_trace_callback(reads.append)
    for i in range(1, 200):
        assert names(watcher.snapshot, f"x{i}.tunnel.example") == ["f"]
    assert not [r for r in reads if r.startswith("SELECT")]
    # the row goes, and a new one takes its id with another value
    (ident,) = writer.conn.execute("SELECT id FROM indicators").fetchone()
    writer.remove_indicator(ident)
    new = writer.add_indicator(feed, "domain", "other.example")
    assert new == ident  # SQLite reused the id
    assert watcher.poll() is True
    assert names(watcher.snapshot, "x1.tunnel.example") == []
    assert names(watcher.snapshot, "www.other.example") == ["f"]
    watcher.close()
