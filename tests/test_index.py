"""The index: schema, WAL, diffs with first_seen kept, change log, expiry, guards."""

from __future__ import annotations

import sqlite3
import time

import pytest

from atr_proxy.errors import RejectedFile, ShrinkHeld
from atr_proxy.index import FeedSpec, IndexWriter, connect, reader
from atr_proxy.index.schema import SCHEMA_VERSION

from .conftest import Item, fill


def test_new_index_is_wal_with_schema_version(index_path):
    conn = connect(index_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION
    # an operator can read it with the stock sqlite3 module
    plain = sqlite3.connect(index_path)
    tables = {r[0] for r in plain.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"feeds", "indicators", "exceptions", "changes", "events", "meta"} <= tables


def test_the_event_writer_keeps_a_small_page_cache(index_path):
    """The proxy and the resolver append events for as long as they run: with the writers'
    128 MiB page cache every page they appended stayed in their RSS (+2 MiB per 10,000
    events, the soak's DNS RSS growth)."""
    from atr_proxy.events import EVENT_CACHE_KIB, Event, EventWriter

    connect(index_path).close()
    events = EventWriter(index_path, None)
    try:
        events.emit(Event("e1", time.time(), "dns", "dns", "block", "block"))
        events.flush()
        assert events._conn is not None
        assert events._conn.execute("PRAGMA cache_size").fetchone()[0] == -EVENT_CACHE_KIB
        assert EVENT_CACHE_KIB <= 2048
    finally:
        events.close()
    assert connect(index_path).execute("PRAGMA cache_size").fetchone()[0] == -131072


def test_reopening_does_not_migrate_twice(index_path):
    connect(index_path).close()
    conn = connect(index_path)
    assert conn.execute("SELECT COUNT(*) FROM meta WHERE key='schema_version'").fetchone()[0] == 1


def test_replace_feed_diffs_and_keeps_first_seen(writer):
    feed = writer.upsert_feed(FeedSpec(name="f1"))
    d1 = writer.replace_feed(feed, [Item("domain", "a.example"), Item("domain", "b.example")],
                             now=1000.0)
    assert (d1.added, d1.removed, d1.total) == (2, 0, 2)
    d2 = writer.replace_feed(feed, [Item("domain", "b.example"), Item("ip", "192.0.2.1")],
                             now=2000.0)
    assert (d2.added, d2.removed, d2.total) == (1, 1, 2)
    rows = dict(writer.conn.execute(
        "SELECT value, first_seen FROM indicators WHERE feed_id=?", (feed,)))
    assert rows == {"b.example": 1000.0, "192.0.2.1": 2000.0}
    last_seen = writer.conn.execute(
        "SELECT last_seen FROM indicators WHERE value='b.example'").fetchone()[0]
    assert last_seen == 1000.0  # kept rows are not rewritten; the feed's sync time says it
    count = writer.conn.execute("SELECT indicator_count FROM feeds WHERE id=?", (feed,))
    assert count.fetchone()[0] == 2


def test_every_commit_advances_the_change_log(writer):
    feed = writer.upsert_feed(FeedSpec(name="f1"))
    g0 = reader.generation(writer.conn)
    writer.replace_feed(feed, [Item("domain", "a.example")])
    g1 = reader.generation(writer.conn)
    writer.add_exception("destination", "domain", "ok.example")
    g2 = reader.generation(writer.conn)
    assert g0 < g1 < g2
    ops = [c.op for c in reader.changes_since(writer.conn, g0, 100)]
    assert ops == ["add", "exception"]


def test_big_diff_is_logged_as_one_reload(writer):
    feed = writer.upsert_feed(FeedSpec(name="big"))
    before = reader.generation(writer.conn)
    writer.replace_feed(feed, [Item("domain", f"n{i}.example") for i in range(25_000)])
    changes = reader.changes_since(writer.conn, before, 100)
    assert [c.op for c in changes] == ["reload"]
    assert writer.conn.execute("SELECT COUNT(*) FROM indicators").fetchone()[0] == 25_000


def test_empty_list_does_not_empty_a_feed_unless_allowed(writer):
    feed = fill(writer, "f1", [("domain", "a.example")])
    with pytest.raises(RejectedFile, match="allow-empty"):
        writer.replace_feed(feed, [])
    assert writer.conn.execute("SELECT COUNT(*) FROM indicators").fetchone()[0] == 1
    writer.replace_feed(feed, [], allow_empty=True)
    assert writer.conn.execute("SELECT COUNT(*) FROM indicators").fetchone()[0] == 0


def test_shrink_guard_holds_back_a_big_removal(writer):
    feed = fill(writer, "f1", [("domain", f"n{i}.example") for i in range(10)])
    with pytest.raises(ShrinkHeld, match="held back"):
        writer.replace_feed(feed, [Item("domain", "n1.example")], max_shrink=0.5)
    assert writer.conn.execute("SELECT COUNT(*) FROM indicators").fetchone()[0] == 10
    writer.replace_feed(feed, [Item("domain", f"n{i}.example") for i in range(6)],
                        max_shrink=0.5)
    assert writer.conn.execute("SELECT COUNT(*) FROM indicators").fetchone()[0] == 6


def test_keep_missing_for_expires_instead_of_deleting(writer):
    feed = fill(writer, "f1", [("domain", "a.example"), ("domain", "b.example")])
    writer.replace_feed(feed, [Item("domain", "a.example")], keep_missing_for=3600, now=5000.0)
    expires = dict(writer.conn.execute("SELECT value, expires_at FROM indicators"))
    assert expires == {"a.example": None, "b.example": 8600.0}


def test_subtree_wins_when_a_name_is_listed_both_ways(writer):
    feed = writer.upsert_feed(FeedSpec(name="rpz", match="exact"))
    writer.replace_feed(feed, [Item("domain", "x.example", "exact"),
                               Item("domain", "x.example", "subtree")])
    assert writer.conn.execute("SELECT match FROM indicators").fetchone()[0] == "subtree"


def test_purge_expired_logs_deletions(writer):
    feed = writer.upsert_feed(FeedSpec(name="mdr", module="mdr"))
    writer.add_indicator(feed, "domain", "old.example", expires_at=time.time() - 1)
    writer.add_indicator(feed, "domain", "new.example", expires_at=time.time() + 3600)
    before = reader.generation(writer.conn)
    assert writer.purge_expired() == 1
    assert [c.value for c in reader.changes_since(writer.conn, before, 10)] == ["old.example"]


def test_a_second_writer_waits_instead_of_failing(index_path):
    a, b = IndexWriter(connect(index_path)), IndexWriter(connect(index_path))
    feed = a.upsert_feed(FeedSpec(name="f1"))
    a.conn.execute("BEGIN IMMEDIATE")
    try:
        b.conn.execute("PRAGMA busy_timeout=100")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            b.add_indicator(feed, "domain", "a.example")
    finally:
        a.conn.execute("ROLLBACK")
    b.add_indicator(feed, "domain", "a.example")
    assert a.conn.execute("SELECT COUNT(*) FROM indicators").fetchone()[0] == 1
