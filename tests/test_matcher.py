"""The matcher snapshot: the matching contract of DESIGN.md, through a real index."""

from __future__ import annotations

import gc
import time

import pytest

from atr_proxy.index.watch import SnapshotWatcher
from atr_proxy.matcher import Feed, IpRanges, NameTable, build_snapshot

from .conftest import fill


@pytest.fixture
def snapshot_of(index_path, writer):
    def make():
        watcher = SnapshotWatcher(index_path)
        return watcher.load()
    return make


def values(hits):
    return sorted(h.indicator for h in hits)


def test_domain_indicator_matches_subdomains_on_label_boundary(writer, snapshot_of):
    fill(writer, "f", [("domain", "evil.com", "subtree")])
    snap = snapshot_of()
    assert values(snap.match_name("evil.com")) == ["evil.com"]
    assert values(snap.match_name("a.b.evil.com")) == ["evil.com"]
    assert snap.match_name("notevil.com") == []
    assert snap.match_name("evil.com.org") == []
    assert snap.match_name("com") == []


def test_request_host_is_normalised_before_lookup(writer, snapshot_of):
    fill(writer, "f", [("domain", "evil.com"), ("domain", "xn--bcher-kva.example")])
    snap = snapshot_of()
    assert values(snap.check(host="WWW.Evil.COM.")) == ["evil.com"]
    assert values(snap.check(host="www.bücher.example")) == ["xn--bcher-kva.example"]
    assert snap.check(host="evil.com", url="http://evil.com/%%%zz\x00<") != []


def test_exact_match_mode_matches_only_the_name(writer, snapshot_of):
    fill(writer, "f", [("domain", "only.example", "exact")])
    snap = snapshot_of()
    assert values(snap.match_name("only.example")) == ["only.example"]
    assert snap.match_name("www.only.example") == []


def test_url_indicator_matches_by_safe_browsing_expressions(writer, snapshot_of):
    fill(writer, "f", [("url", "evil.com/a/")])
    snap = snapshot_of()
    assert values(snap.check(host="x.evil.com", url="http://x.evil.com/a/b?q")) == ["evil.com/a/"]
    assert snap.check(host="evil.com", url="http://evil.com/ab") == []
    assert snap.check(host="evil.com", url="http://evil.com/b/a/") == []
    # never a substring match
    assert snap.check(host="notevil.com", url="http://notevil.com/a/") == []


def test_url_indicators_mark_their_host_and_parents_for_interception(writer, snapshot_of):
    fill(writer, "f", [("url", "x.evil.com/path/file.exe")])
    snap = snapshot_of()
    assert snap.has_url_indicators("x.evil.com")
    assert snap.has_url_indicators("deep.x.evil.com")
    assert not snap.has_url_indicators("evil.com")
    assert not snap.has_url_indicators("other.com")
    # a URL indicator does not block the whole host
    assert snap.check(host="x.evil.com", url="http://x.evil.com/other") == []
    assert values(snap.check(host="x.evil.com", url="http://x.evil.com/path/file.exe")) == [
        "x.evil.com/path/file.exe"]


def test_url_indicators_on_address_hosts(writer, snapshot_of):
    fill(writer, "f", [("url", "192.0.2.9/dl/"), ("url", "[2001:db8::9]:8080/x")])
    snap = snapshot_of()
    assert values(snap.check(host="192.0.2.9", url="http://192.0.2.9/dl/a.exe")) == [
        "192.0.2.9/dl/"]
    assert snap.check(host="192.0.2.9", url="http://192.0.2.9/other") == []
    assert snap.check(host="192.0.2.10", url="http://192.0.2.10/dl/a.exe") == []
    assert values(snap.check(host="2001:db8::9", url="http://[2001:db8::9]:8080/x")) == [
        "[2001:db8::9]:8080/x"]
    assert values(snap.check(host="[2001:db8::9]", url="http://[2001:db8::9]:8080/x")) == [
        "[2001:db8::9]:8080/x"]


def test_ip_indicators_exact_and_any_covering_range_v4_and_v6(writer, snapshot_of):
    fill(writer, "f", [("ip", "192.0.2.7"), ("ip", "198.51.100.0/24"), ("ip", "10.0.0.0/8"),
                       ("ip", "2001:db8::/32"), ("ip", "2001:db8:1::5")])
    snap = snapshot_of()
    assert values(snap.match_ip("192.0.2.7")) == ["192.0.2.7"]
    assert snap.match_ip("192.0.2.8") == []
    assert values(snap.match_ip("198.51.100.255")) == ["198.51.100.0/24"]
    assert values(snap.match_ip("10.200.1.1")) == ["10.0.0.0/8"]
    assert values(snap.match_ip("2001:db8:1::5")) == ["2001:db8:1::5", "2001:db8::/32"]
    assert snap.match_ip("2001:db9::1") == []
    # an IPv4-mapped IPv6 address is the IPv4 address
    assert values(snap.match_ip("::ffff:192.0.2.7")) == ["192.0.2.7"]


def test_nested_ranges_all_reported(writer, snapshot_of):
    fill(writer, "a", [("ip", "10.0.0.0/8"), ("ip", "10.1.0.0/16"), ("ip", "10.1.2.3"),
                       ("ip", "10.2.0.0/16")])
    snap = snapshot_of()
    assert values(snap.match_ip("10.1.2.3")) == ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3"]
    assert values(snap.match_ip("10.3.0.1")) == ["10.0.0.0/8"]
    assert values(snap.match_ip("11.0.0.0")) == []


def test_check_reports_client_host_and_destination_hits(writer, snapshot_of):
    fill(writer, "f", [("ip", "127.0.0.2"), ("domain", "bad.example"), ("ip", "203.0.113.9")])
    snap = snapshot_of()
    hits = snap.check(client="127.0.0.2", host="www.bad.example", dest_ip="203.0.113.9")
    assert sorted((h.target, h.indicator) for h in hits) == [
        ("client", "127.0.0.2"), ("host", "bad.example"), ("ip", "203.0.113.9")]
    # an IP literal host is checked as an address
    assert [h.target for h in snap.check(host="203.0.113.9")] == ["host"]
    assert snap.check(client="127.0.0.1", host="good.example", dest_ip="203.0.113.10") == []


def test_same_value_in_two_feeds_reports_both(writer, snapshot_of):
    fill(writer, "one", [("domain", "dup.example")])
    fill(writer, "two", [("domain", "dup.example")], module="xops", action="monitor")
    snap = snapshot_of()
    assert sorted(h.feed.name for h in snap.match_name("dup.example")) == ["one", "two"]


def test_disabled_feed_does_not_match(writer, snapshot_of):
    fill(writer, "off", [("domain", "off.example")], enabled=False)
    assert snapshot_of().match_name("off.example") == []


def test_expired_indicator_is_not_loaded(writer, snapshot_of):
    fill(writer, "f", [("domain", "gone.example", None, time.time() - 5),
                       ("domain", "later.example", None, time.time() + 3600)])
    snap = snapshot_of()
    assert snap.match_name("gone.example") == []
    assert values(snap.match_name("later.example")) == ["later.example"]


def test_patch_applies_adds_and_deletes_without_rebuild(writer, snapshot_of):
    feed = fill(writer, "f", [("domain", "a.example"), ("url", "u.example/x"), ("ip", "192.0.2.1")])
    snap = snapshot_of()
    rows = [(ident, v, k, m) for ident, v, k, m in writer.conn.execute(
        "SELECT id, value, kind, match FROM indicators")]
    changes = [("del", ident, feed, kind, value, match, None) for ident, value, kind, match in rows]
    changes += [("add", 1000, feed, "domain", "b.example", "subtree", None),
                ("add", 1001, feed, "url", "u.example/y", "exact", None),
                ("add", 1002, feed, "ip", "198.51.100.0/24", "exact", None)]
    snap.confirm = None  # ids 1000+ exist only in this delta, not in the index
    new = snap.patch(changes, generation=snap.generation + 1)
    assert new is not snap and new.names is not snap.names
    assert new.match_name("a.example") == []
    assert new.has_url_indicators("u.example")
    assert values(new.match_name("x.b.example")) == ["b.example"]
    assert values(new.check(host="u.example", url="http://u.example/y")) == ["u.example/y"]
    assert new.check(host="u.example", url="http://u.example/x") == []
    assert values(new.match_ip("198.51.100.3")) == ["198.51.100.0/24"]
    assert new.match_ip("192.0.2.1") == []
    # the old snapshot is untouched
    assert values(snap.match_name("a.example")) == ["a.example"]
    assert values(snap.match_ip("192.0.2.1")) == ["192.0.2.1"]
    assert new.count() == 3 and snap.count() == 3


def test_build_ignores_a_low_capacity_estimate():
    feeds = [Feed(1, "f", "third_party", "block")]
    rows = [(i + 1, 1, 0, f"d{i}.example", None) for i in range(5000)]
    rows += [(9000 + i, 1, 2, f"h{i % 7}.example/p{i}", f"h{i % 7}.example") for i in range(300)]
    snap = build_snapshot(generation=1, feeds=feeds, rows=rows, capacity=10)
    assert snap.count() == 5300 and snap.url_hosts == 7
    assert [h.indicator for h in snap.match_name("d4999.example")] == ["d4999.example"]
    assert snap.has_url_indicators("h3.example")
    assert [h.indicator for h in snap.check(host="h3.example", url="http://h3.example/p10")] \
        == ["h3.example/p10"]


def test_url_host_marker_is_counted_per_url(writer, snapshot_of):
    feed = fill(writer, "f", [("url", "h.example/a"), ("url", "h.example/b")])
    snap = snapshot_of()
    ids = dict(writer.conn.execute("SELECT value, id FROM indicators"))
    one = snap.patch([("del", ids["h.example/a"], feed, "url", "h.example/a", "exact", None)],
                     generation=snap.generation + 1)
    assert one.has_url_indicators("h.example") and one.url_hosts == 1
    none = one.patch([("del", ids["h.example/b"], feed, "url", "h.example/b", "exact", None)],
                     generation=snap.generation + 2)
    assert not none.has_url_indicators("h.example") and none.count() == 0


def test_name_table_grows_and_drops_tombstones():
    table = NameTable(4)
    for i in range(100):
        if table.needs_room(1):
            table = table.grown(100)
        table.add(f"n{i}.example", 5, i + 1)
    for i in range(0, 100, 2):
        assert table.remove(f"n{i}.example", 5, i + 1)
    assert table.live == 50
    grown = table.grown(0)
    assert grown.live == 50 and grown.filled == 50
    assert grown.find("n1.example") == [(5, 2)] and grown.find("n0.example") == []


def test_bulk_build_places_entries_where_probing_finds_them():
    feeds = [Feed(1, "f", "third_party", "block"), Feed(2, "g", "xops", "monitor")]
    rows = [(i + 1, 1 + i % 2, i % 2, f"n{i}.example", None) for i in range(20_000)]
    snap = build_snapshot(generation=1, feeds=feeds, rows=rows, capacity=0)
    snap.confirm = None
    assert snap.names.size >= snap.names.base and snap.count() == 20_000
    for i in range(0, 20_000, 7):
        hits = snap.match_name(f"n{i}.example")
        assert [(h.indicator_id, h.feed.name) for h in hits] == [(i + 1, "fg"[i % 2])]
    # patches after a bulk build probe the same way (and wrap at the table's end)
    patched = snap.patch([("add", 99_999, 1, "domain", f"x{i}.example", "exact", None)
                          for i in range(3000)], generation=2)
    assert all(patched.match_name(f"x{i}.example") for i in range(0, 3000, 13))
    assert patched.match_name("n19999.example")


def test_ip_ranges_find_with_a_wide_range_far_back():
    ranges = IpRanges([(0, 1000, 1, 1)] + [(i * 10, i * 10 + 1, 1, 100 + i)
                                           for i in range(1, 90)], wide=False)
    assert [r[3] for r in ranges.find(5)] == [1]
    assert sorted(r[3] for r in ranges.find(21)) == [1, 102]
    assert ranges.find(1001) == []


def test_snapshot_holds_no_per_indicator_python_objects():
    feeds = [Feed(1, "f", "third_party", "block")]
    n = 50_000
    gc.collect()
    before = len(gc.get_objects())
    rows = [(i + 1, 1, 1, f"d{i}.example", None) for i in range(n)]
    rows += [(n + i + 1, 1, 2, f"u{i}.example/p", f"u{i}.example") for i in range(n)]
    rows += [(3 * n + i + 1, 1, 3, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", None)
             for i in range(n)]
    snap = build_snapshot(generation=1, feeds=feeds, rows=iter(rows), capacity=3 * n)
    del rows
    gc.collect()
    assert snap.count() == 3 * n
    assert len(gc.get_objects()) - before < 100  # arrays, not millions of objects
