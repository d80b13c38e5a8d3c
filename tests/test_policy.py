"""Policy: exceptions first, module order, first block wins, monitored hits reported."""

from __future__ import annotations

from atr_proxy.index.watch import SnapshotWatcher
from atr_proxy.policy import decide

from .conftest import fill


def verdict_for(index_path, client=None, host=None, url=None, dest_ip=None):
    snap = SnapshotWatcher(index_path).load()
    hits = snap.check(client=client, host=host, url=url, dest_ip=dest_ip)
    return decide(hits, snap.exceptions, client=client, host=host, url=url, dest_ip=dest_ip)


def test_no_hits_is_allow(index_path, writer):
    fill(writer, "f", [("domain", "bad.example")])
    assert verdict_for(index_path, host="good.example").action == "allow"


def test_modules_in_order_mdr_first_and_first_block_wins(index_path, writer):
    fill(writer, "tp", [("domain", "x.example")], module="third_party", action="block")
    fill(writer, "vendor", [("domain", "x.example")], module="xops", action="block")
    fill(writer, "analyst", [("domain", "x.example")], module="mdr", action="monitor")
    v = verdict_for(index_path, host="x.example")
    assert v.action == "block"
    assert v.decisive.feed.name == "vendor"
    assert [h.feed.name for h in v.hits] == ["analyst", "vendor", "tp"]
    assert [h.feed.name for h in v.monitored] == ["analyst"]


def test_feed_order_within_a_module(index_path, writer):
    fill(writer, "second", [("domain", "x.example")], position=2)
    fill(writer, "first", [("domain", "x.example")], position=1)
    assert verdict_for(index_path, host="x.example").decisive.feed.name == "first"


def test_monitor_only_hits_are_monitor(index_path, writer):
    fill(writer, "watch", [("domain", "x.example")], action="monitor")
    v = verdict_for(index_path, host="x.example")
    assert v.action == "monitor" and v.decisive is None and len(v.monitored) == 1


def test_source_exception_means_client_is_never_blocked(index_path, writer):
    fill(writer, "f", [("domain", "x.example"), ("ip", "127.0.0.5")])
    writer.add_exception("source", "ip", "127.0.0.0/29")
    v = verdict_for(index_path, client="127.0.0.5", host="x.example")
    assert v.action == "allow"
    assert sorted(h.indicator for h, _ in v.excepted) == ["127.0.0.5", "x.example"]
    assert verdict_for(index_path, client="127.0.0.9", host="x.example").action == "block"


def test_destination_exception_covers_subdomains_but_not_client_hits(index_path, writer):
    fill(writer, "f", [("domain", "example.net"), ("ip", "127.0.0.7")])
    writer.add_exception("destination", "domain", "ok.example.net")
    assert verdict_for(index_path, host="a.ok.example.net").action == "allow"
    assert verdict_for(index_path, host="bad.example.net").action == "block"
    v = verdict_for(index_path, client="127.0.0.7", host="a.ok.example.net")
    assert v.action == "block" and v.decisive.target == "client"


def test_feed_scoped_exception_only_cancels_that_feed(index_path, writer):
    a = fill(writer, "a", [("domain", "x.example")], position=1)
    fill(writer, "b", [("domain", "x.example")], position=2)
    writer.add_exception("destination", "domain", "x.example", feed_id=a)
    v = verdict_for(index_path, host="x.example")
    assert v.action == "block" and v.decisive.feed.name == "b"


def test_url_and_ip_destination_exceptions(index_path, writer):
    fill(writer, "f", [("url", "evil.example/dl/"), ("ip", "198.51.100.0/24")])
    writer.add_exception("destination", "url", "evil.example/dl/safe/")
    writer.add_exception("destination", "ip", "198.51.100.7")
    assert verdict_for(index_path, host="evil.example",
                       url="http://evil.example/dl/safe/x.zip").action == "allow"
    assert verdict_for(index_path, host="evil.example",
                       url="http://evil.example/dl/bad.zip").action == "block"
    assert verdict_for(index_path, host="198.51.100.7").action == "allow"
    assert verdict_for(index_path, dest_ip="198.51.100.8").action == "block"
