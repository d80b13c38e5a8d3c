"""The feed-sync worker end to end: a real HTTP server on loopback, a real index, and what
a look-up (the proxy's and the resolver's view) says afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from atr_proxy import config
from atr_proxy.cli import lookup_values
from atr_proxy.feeds.ingest import ingest
from atr_proxy.feeds.sync import SyncWorker, feed_status
from atr_proxy.index import FeedSpec, connect, reader
from atr_proxy.index.watch import SnapshotWatcher

from .conftest import SHARED_FEEDS, outside_holder
from .feedserver import FeedServer, Route

UUID = "5e0f9c8a-1111-4c3b-9a11-000000000001"

FORMAT_CASES = {
    "plain": (b"# list\nevil-plain.example\n203.0.113.7\nhttp://bad-plain.example/path/\n", {},
              ["www.evil-plain.example", "203.0.113.7", "http://bad-plain.example/path/x"], []),
    "hosts": (b"127.0.0.1 localhost\n0.0.0.0 evil-hosts.example\n0.0.0.0 a.example b.example\n",
              {}, ["evil-hosts.example", "b.example"], ["localhost"]),
    "adblock": (b"[Adblock Plus 2.0]\n! comment\n||evil-adblock.example^\n"
                b"@@||good.evil-adblock.example^\nexample.org##.ad\n", {},
                ["x.evil-adblock.example"], ["good.evil-adblock.example"]),
    "wildcard": (b"*.evil-wild.example\n", {}, ["a.evil-wild.example"], []),
    "rpz": (b"$TTL 300\n@ IN SOA localhost. root.localhost. (1 3600 600 86400 60)\n"
            b"  IN NS localhost.\nevil-rpz.example CNAME .\n*.evil-rpz.example CNAME .\n"
            b"32.9.113.0.203.rpz-ip CNAME .\n",
            {}, ["evil-rpz.example", "deep.evil-rpz.example", "203.0.113.9"], []),
    "csv": (b"# id,dateadded,url,url_status,threat\n"
            b'"1","2024-01-01 00:00:00","http://evil-csv.example/x.exe","online","malware"\n',
            {"options": {"column": "url"}}, ["http://evil-csv.example/x.exe"],
            ["http://evil-csv.example/other"]),
    "json": (json.dumps({"query_status": "ok", "data": [
        {"ioc": "evil-json.example", "ioc_type": "domain", "threat_type": "botnet_cc"},
        {"ioc": "198.51.100.4:443", "ioc_type": "ip:port"},
        {"ioc": "d41d8cd98f00b204e9800998ecf8427e", "ioc_type": "md5_hash"}]}).encode(),
             {}, ["evil-json.example", "198.51.100.4"], []),
    "stix2": (json.dumps({"type": "bundle", "id": "bundle--1", "objects": [
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--1",
         "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z",
         "pattern": "[domain-name:value = 'evil-stix.example' OR "
                    "url:value = 'http://evil-stix2.example/a']"},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--2", "revoked": True,
         "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z",
         "pattern": "[domain-name:value = 'revoked-stix.example']"}]}).encode(),
              {}, ["evil-stix.example", "http://evil-stix2.example/a"], ["revoked-stix.example"]),
    "misp": (json.dumps({"Event": {"info": "t", "uuid": UUID, "Attribute": [
        {"type": "domain", "value": "evil-misp.example", "to_ids": True},
        {"type": "ip-dst", "value": "198.51.100.9", "to_ids": True},
        {"type": "domain", "value": "not-ids.example", "to_ids": False}]}}).encode(),
             {}, ["evil-misp.example", "198.51.100.9"], ["not-ids.example"]),
    "misp-search": (json.dumps({"response": [{"Event": {"info": "t", "Attribute": [
        {"type": "domain|ip", "value": "evil-search.example|198.51.100.10", "to_ids": True}]}}]}
                               ).encode(), {"format": "misp"},
                    ["evil-search.example", "198.51.100.10"], []),
    "auto": (b"0.0.0.0 evil-auto.example\n0.0.0.0 evil-auto2.example\n", {"format": "auto"},
             ["evil-auto.example"], []),
}


def make_settings(tmp_path: Path, feeds: list[dict], **top) -> config.Settings:
    data = {"index": str(tmp_path / "index.db"), "feeds": feeds,
            "sync": {"retries": 0, "backoff": 0.01, **top.pop("sync", {})}, **top}
    return config.from_mapping(data, base=tmp_path, env={})


def verdicts(index: Path, *values: str) -> dict[str, str]:
    watcher = SnapshotWatcher(index)
    try:
        return {r["value"]: r["verdict"] for r in lookup_values(watcher.load(), list(values))}
    finally:
        watcher.close()


def status(index: Path, name: str) -> dict:
    conn = connect(index)
    try:
        return feed_status(conn, name)[0]
    finally:
        conn.close()


@pytest.fixture
def server():
    with FeedServer() as s:
        yield s


@pytest.fixture
def workers():
    made: list[SyncWorker] = []
    yield made
    for w in made:
        w.close()


def new_worker(workers, settings) -> SyncWorker:
    w = SyncWorker(settings)
    workers.append(w)
    return w


@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
async def test_every_format_is_fetched_parsed_and_enforced(tmp_path, server, workers, case):
    body, extra, blocked, allowed = FORMAT_CASES[case]
    url = server.add(f"/{case}.feed", Route(body))
    feed = {"name": "f", "url": url, "format": case if case in config.FORMATS else "auto",
            **extra}
    worker = new_worker(workers, make_settings(tmp_path, [feed]))
    [outcome] = await worker.sync_all()
    assert outcome.status == "ok", outcome.error
    assert outcome.added == outcome.total > 0
    got = verdicts(worker.index_path, *blocked, *allowed)
    assert {v: got[v] for v in blocked} == {v: "block" for v in blocked}
    assert {v: got[v] for v in allowed} == {v: "allow" for v in allowed}
    row = status(worker.index_path, "f")
    assert row["status"] == "ok" and row["http_status"] == 200
    assert row["indicator_count"] == outcome.total and row["bytes"] == len(body)
    assert row["last_success"] and row["next_run"] > row["last_attempt"]


async def test_adblock_exception_rules_become_exceptions_of_that_feed(tmp_path, server, workers):
    url = server.add("/ab.txt", Route(FORMAT_CASES["adblock"][0]))
    worker = new_worker(workers, make_settings(tmp_path, [{"name": "ab", "url": url,
                                                           "format": "adblock"}]))
    await worker.sync_all()
    watcher = SnapshotWatcher(worker.index_path)
    [result] = lookup_values(watcher.load(), ["good.evil-adblock.example"])
    watcher.close()
    assert result["verdict"] == "allow"
    assert result["excepted"][0]["exception"] == "good.evil-adblock.example"


async def test_not_modified_resync_writes_nothing(tmp_path, server, workers):
    url = server.add("/p.txt", Route(b"evil.example\n"))
    worker = new_worker(workers, make_settings(tmp_path, [{"name": "p", "url": url}]))
    await worker.sync_all()
    generation = reader.generation(worker.conn)
    [again] = await worker.sync_all()
    assert again.status == "not_modified" and again.mode == "none"
    assert reader.generation(worker.conn) == generation
    assert server.hits("/p.txt")[-1].headers["if-none-match"]
    row = status(worker.index_path, "p")
    assert row["status"] == "not_modified" and row["http_status"] == 304


async def test_same_bytes_from_a_server_without_validators_write_nothing(tmp_path, server,
                                                                         workers):
    url = server.add("/nv.txt", Route(b"evil.example\n", etag=False))
    worker = new_worker(workers, make_settings(tmp_path, [{"name": "nv", "url": url}]))
    await worker.sync_all()
    generation = reader.generation(worker.conn)
    [again] = await worker.sync_all()
    assert again.status == "not_modified" and again.http_status == 200
    assert reader.generation(worker.conn) == generation
    server.add("/nv.txt", Route(b"evil.example\nnew.example\n", etag=False))
    [changed] = await worker.sync_all()
    assert changed.status == "ok" and changed.added == 1


async def test_failures_keep_the_last_good_indicators_and_say_why(tmp_path, server, workers):
    server.add("/f.txt", Route(b"evil-keep.example\n"))
    worker = new_worker(workers, make_settings(tmp_path, [{"name": "f",
                                                           "url": server.url("/f.txt")}]))
    await worker.sync_all()
    cases = [
        (Route(b"boom", status=500), "HTTP 500"),
        (Route(b"<!DOCTYPE html><html><body>Please log in</body></html>",
               content_type="text/html"), "an HTML page"),
        (Route(b"evil.example\n" * 1000, truncate=True, etag=False), "incomplete"),
        (Route(b"", etag=False), "no indicators in the new list"),
    ]
    for route, reason in cases:
        server.add("/f.txt", route)
        [outcome] = await worker.sync_all()
        assert outcome.status == "error" and reason in outcome.error
        row = status(worker.index_path, "f")
        assert row["status"] == "error" and reason in row["last_error"]
        assert row["indicator_count"] == 1
        assert verdicts(worker.index_path, "evil-keep.example") == {"evil-keep.example": "block"}
    server.add("/f.txt", Route(b"evil-keep.example\nnew.example\n"))
    [outcome] = await worker.sync_all()
    assert outcome.status == "ok" and status(worker.index_path, "f")["last_error"] is None


async def test_shrink_guard_holds_back_a_big_removal(tmp_path, server, workers):
    body = b"".join(b"host%d.example\n" % i for i in range(100))
    server.add("/s.txt", Route(body))
    settings = make_settings(tmp_path, [{"name": "s", "url": server.url("/s.txt"),
                                         "max_shrink": 0.5}])
    worker = new_worker(workers, settings)
    await worker.sync_all()
    server.add("/s.txt", Route(b"".join(b"host%d.example\n" % i for i in range(30))))
    [held] = await worker.sync_all()
    assert held.status == "held" and "more than max_shrink 50%" in held.error
    row = status(worker.index_path, "s")
    assert row["status"] == "held" and row["indicator_count"] == 100
    assert verdicts(worker.index_path, "host99.example")["host99.example"] == "block"
    [again] = await worker.sync_all()  # the held body is fetched in full again, and held
    assert again.status == "held"


async def test_expire_after_keeps_a_dropped_indicator_for_a_while(tmp_path, server, workers):
    server.add("/e.txt", Route(b"stays.example\ngoes.example\n"))
    worker = new_worker(workers, make_settings(tmp_path, [{"name": "e",
                                                           "url": server.url("/e.txt"),
                                                           "expire_after": "1s"}]))
    await worker.sync_all()
    server.add("/e.txt", Route(b"stays.example\n"))
    [outcome] = await worker.sync_all()
    assert outcome.status == "ok"
    assert verdicts(worker.index_path, "goes.example")["goes.example"] == "block"
    await asyncio.sleep(1.2)
    assert verdicts(worker.index_path, "goes.example")["goes.example"] == "allow"
    assert worker.housekeeping()["purged"] == 1
    assert status(worker.index_path, "e")["indicator_count"] == 1


def test_housekeeping_prunes_events_by_age_then_by_count(tmp_path, workers):
    """Events do not grow the index forever: older than events.keep go, then the oldest past
    events.max_rows, in batches (the proxy and the resolver keep appending meanwhile)."""
    from atr_proxy.events import Event, EventWriter

    worker = new_worker(workers, make_settings(
        tmp_path, [], events={"jsonl": None, "keep": "1d", "max_rows": 2500}))
    now = time.time()
    events = EventWriter(worker.index_path, None)
    try:
        events.emit([Event(f"old{i:05d}", now - 2 * 86400 - i, "dns", "dns", "block",
                           "block", indicator="old.example") for i in range(1200)])
        events.emit([Event(f"new{i:05d}", now - 3600 + i, "dns", "dns", "block", "block",
                           indicator="new.example") for i in range(3000)])
        events.flush(10)
    finally:
        events.close()
    result = worker.housekeeping()
    assert result["events"] == 1200 + 500
    rows = worker.conn.execute("SELECT event_id FROM events ORDER BY at").fetchall()
    assert len(rows) == 2500
    assert rows[0][0] == "new00500" and rows[-1][0] == "new02999"  # the newest are kept
    assert worker.housekeeping()["events"] == 0
    forever = config.from_mapping({"events": {"keep": 0, "max_rows": 0}}, env={})
    assert forever.events.keep == 0 and forever.events.max_rows == 0


async def test_url_indicators_added_by_a_line_delta_are_enforced(tmp_path, server, workers):
    lines = [b"http://u%d.example/a/" % i for i in range(40)]
    server.add("/u.txt", Route(b"\n".join(lines)))
    worker = new_worker(workers, make_settings(tmp_path, [{"name": "u",
                                                           "url": server.url("/u.txt")}]))
    await worker.sync_all()
    server.add("/u.txt", Route(b"\n".join([*lines, b"http://late.example/x/"])))
    [outcome] = await worker.sync_all()
    assert outcome.mode == "delta" and outcome.added == 1
    assert verdicts(worker.index_path, "http://late.example/x/y", "http://u3.example/a/b") == {
        "http://late.example/x/y": "block", "http://u3.example/a/b": "block"}


async def test_line_delta_honours_expire_after_and_the_shrink_guard(tmp_path, server, workers):
    lines = [b"k%d.example" % i for i in range(40)]
    server.add("/k.txt", Route(b"\n".join(lines)))
    worker = new_worker(workers, make_settings(tmp_path, [{
        "name": "k", "url": server.url("/k.txt"), "expire_after": "1s", "max_shrink": 0.1}]))
    await worker.sync_all()
    server.add("/k.txt", Route(b"\n".join(lines[1:])))
    [dropped] = await worker.sync_all()
    assert dropped.mode == "delta" and dropped.status == "ok"
    assert verdicts(worker.index_path, "k0.example") == {"k0.example": "block"}
    await asyncio.sleep(1.2)
    assert verdicts(worker.index_path, "k0.example") == {"k0.example": "allow"}
    server.add("/k.txt", Route(b"\n".join(lines[6:])))  # 5 more of 39: over 10%
    [held] = await worker.sync_all()
    assert held.mode == "delta" and held.status == "held"
    assert verdicts(worker.index_path, "k3.example") == {"k3.example": "block"}


def _full_set(tmp_path: Path, body: bytes, fmt: str) -> set[tuple[str, str, str]]:
    conn = connect(tmp_path / f"ref-{random.random()}.db")
    ingest(conn, FeedSpec(name="ref"), body, fmt=fmt, allow_empty=True)
    rows = set(conn.execute("SELECT kind, value, match FROM indicators"))
    conn.close()
    return rows


@pytest.mark.parametrize("fmt", ["plain", "wildcard"])
async def test_line_delta_gives_exactly_what_a_full_parse_gives(tmp_path, server, workers, fmt):
    rng = random.Random(7)
    lines = [f"{'*.' if fmt == 'wildcard' and i % 3 else ''}host{i}.example" for i in range(400)]
    lines += ["# comment", "not a domain!", "10.0.0.0/8", "http://u.example/a"]
    worker = new_worker(workers, make_settings(tmp_path, [{"name": "d", "format": fmt,
                                                           "url": server.url("/d.txt"),
                                                           "max_shrink": 1}]))
    modes = []
    for round_ in range(6):
        body = ("\n".join(lines) + "\n").encode()
        server.add("/d.txt", Route(body))
        [outcome] = await worker.sync_all()
        assert outcome.status == "ok", outcome.error
        modes.append(outcome.mode)
        stored = set(worker.conn.execute(
            "SELECT i.kind, i.value, i.match FROM indicators i JOIN feeds f ON f.id=i.feed_id"
            " WHERE f.name='d'"))
        assert stored == _full_set(tmp_path, body, fmt), f"round {round_}"
        assert outcome.total == len(stored)
        for _ in range(8):  # change a few lines: drop, add, rewrite, move a value
            i = rng.randrange(len(lines))
            choice = rng.random()
            if choice < 0.3:
                lines.pop(i)
            elif choice < 0.6:
                lines.append(f"new{rng.randrange(10**6)}.example")
            elif choice < 0.8:
                lines[i] = lines[i].upper() if not lines[i].startswith("#") else lines[i]
            else:
                lines[i] = lines[i] + "  # moved"
    assert modes[0] == "full" and "delta" in modes[1:]


async def test_a_duplicate_line_turns_the_delta_off_and_stays_exact(tmp_path, server, workers):
    worker = new_worker(workers, make_settings(tmp_path, [{"name": "d",
                                                           "url": server.url("/d.txt")}]))
    filler = b"".join(b"f%d.example\n" % i for i in range(20))
    bodies = [filler + b"a.example\nb.example\n", filler + b"a.example\nb.example\nB.example\n",
              filler + b"a.example\nB.example\n", filler + b"a.example\n"]
    modes = []
    for body in bodies:
        server.add("/d.txt", Route(body))
        [outcome] = await worker.sync_all()
        modes.append(outcome.mode)
        stored = {v for (v,) in worker.conn.execute("SELECT value FROM indicators")}
        assert stored == {v for _, v, _ in _full_set(tmp_path, body, "plain")}
    assert modes == ["full", "delta", "full", "delta"]


async def test_taxii_collection_syncs_in_full_then_incrementally(tmp_path, server, workers):
    def indicator(n: int, revoked: bool = False) -> dict:
        return {"type": "indicator", "spec_version": "2.1", "revoked": revoked,
                "id": f"indicator--0000000{n}-0000-4000-8000-000000000000",
                "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z",
                "pattern": f"[domain-name:value = 'taxii-{n}.example']"}

    def objects(rec):
        if rec.query.get("added_after"):
            objs = [indicator(3), indicator(1, revoked=True)]
            return 200, {"X-TAXII-Date-Added-Last": "2024-02-01T00:00:00Z"}, json.dumps(
                {"objects": objs}).encode()
        return 200, {"X-TAXII-Date-Added-Last": "2024-01-01T00:00:00Z"}, json.dumps(
            {"objects": [indicator(1), indicator(2)]}).encode()

    server.add("/taxii/collections/c/objects/", Route(objects, etag=False))
    worker = new_worker(workers, make_settings(tmp_path, [{
        "name": "tx", "format": "taxii2", "url": server.url("/taxii/collections/c/")}]))
    [full] = await worker.sync_all()
    assert full.mode == "full" and full.total == 2
    [delta] = await worker.sync_all()
    assert delta.mode == "incremental" and delta.added == 1 and delta.removed == 1
    assert verdicts(worker.index_path, "taxii-1.example", "taxii-2.example", "taxii-3.example") \
        == {"taxii-1.example": "allow", "taxii-2.example": "block", "taxii-3.example": "block"}


async def test_misp_feed_manifest_and_events_sync(tmp_path, server, workers):
    server.add("/misp/manifest.json", Route(json.dumps({UUID: {"info": "t"}}).encode()))
    server.add(f"/misp/{UUID}.json", Route(FORMAT_CASES["misp"][0]))
    worker = new_worker(workers, make_settings(tmp_path, [{
        "name": "m", "format": "misp", "url": server.url("/misp/manifest.json")}]))
    [outcome] = await worker.sync_all()
    assert outcome.status == "ok" and outcome.format == "misp"
    assert verdicts(worker.index_path, "evil-misp.example")["evil-misp.example"] == "block"


async def test_config_feeds_and_exceptions_are_written_at_start(tmp_path, server, workers):
    url = server.add("/x.txt", Route(b"evil.example\nok.evil.example\n"))
    feeds = [{"name": "x", "url": url, "action": "monitor", "order": 3},
             {"name": "y", "url": url, "enabled": False}]
    exceptions = [{"value": "ok.evil.example", "comment": "ours"},
                  {"scope": "source", "value": "192.0.2.0/24"}]
    settings = make_settings(tmp_path, feeds, exceptions=exceptions)
    worker = new_worker(workers, settings)
    report = worker.prepare()
    assert report["feeds"]["added"] == ["x", "y"]
    rows = {r["name"]: r for r in feed_status(worker.conn)}
    assert {"mdr", "mdr-monitor", "x", "y"} <= set(rows)
    assert rows["x"]["action"] == "monitor" and rows["x"]["position"] == 3
    assert rows["y"]["enabled"] is False
    assert rows["x"]["source"]["url"] == url and "fingerprint" in rows["x"]["source"]
    have = {(e.scope, e.value) for e in reader.exceptions(worker.conn)}
    assert have == {("destination", "ok.evil.example"), ("source", "192.0.2.0/24")}
    outcomes = await worker.sync_all()
    assert [o.feed for o in outcomes] == ["x"]  # a disabled feed is not fetched
    # the next start, with one exception and feed x gone from the config
    later = make_settings(tmp_path, [feeds[1]], exceptions=exceptions[1:])
    second = new_worker(workers, later)
    report = second.prepare()
    assert report["feeds"]["disabled"] == ["x"]
    assert {(e.scope, e.value) for e in reader.exceptions(second.conn)} == \
        {("source", "192.0.2.0/24")}
    assert {r["name"]: r["enabled"] for r in feed_status(second.conn)}["x"] is False


async def test_changed_feed_settings_drop_the_stored_validators(tmp_path, server, workers):
    url = server.add("/v.txt", Route(b"evil.example\n"))
    first = new_worker(workers, make_settings(tmp_path, [{"name": "v", "url": url}]))
    await first.sync_all()
    changed = new_worker(workers, make_settings(tmp_path, [{"name": "v", "url": url,
                                                            "type": "domain"}]))
    [outcome] = await changed.sync_all()
    assert outcome.status == "ok"  # fetched in full, not a 304
    assert "if-none-match" not in server.hits("/v.txt")[-1].headers


async def test_the_schedule_runs_feeds_again_and_bounds_concurrency(tmp_path, server, workers):
    feeds = []
    for i in range(4):
        url = server.add(f"/slow{i}.txt", Route(b"slow%d.example\n" % i, delay=0.3, etag=False))
        feeds.append({"name": f"s{i}", "url": url, "interval": "0.5s"})
    settings = make_settings(tmp_path, feeds, sync={"concurrency": 2, "jitter": 0.1,
                                                    "housekeeping": "0.2s"})
    worker = new_worker(workers, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and any(len(server.hits(f"/slow{i}.txt")) < 2
                                              for i in range(4)):
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert all(len(server.hits(f"/slow{i}.txt")) >= 2 for i in range(4))
    assert server.max_active <= 2
    assert worker.last_housekeeping  # the timer ran


async def test_a_feed_keeps_its_schedule_when_the_index_itself_fails(tmp_path, server,
                                                                     workers):
    """Not the feed but the index fails: it is renamed over while an outside process holds
    the old file, so the worker may not open the new one (the status cannot even be
    recorded). The feed's loop used to end there, for good; it now retries, and syncs into
    the new file once the holder lets go."""
    url = server.add("/k.txt", Route(b"kept.example\n", etag=False))
    settings = make_settings(tmp_path, [{"name": "k", "url": url, "interval": "0.3s"}],
                             sync={"jitter": 0.1})
    worker = new_worker(workers, settings)
    [first] = await worker.sync_all()
    assert first.status == "ok"
    index = worker.index_path
    stop = asyncio.Event()
    task = None
    try:
        with outside_holder(index):
            other = tmp_path / "other.db"
            connect(other).close()
            os.replace(other, index)
            task = asyncio.create_task(worker.run(stop))
            await asyncio.sleep(1.5)  # several attempts, each failing on the index
            assert not task.done()

        def synced() -> bool:
            rows = feed_status(connect(index), "k")
            return bool(rows) and rows[0]["indicator_count"] == 1

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not synced():
            await asyncio.sleep(0.1)
        assert synced()  # the config went into the new file, and the feed synced into it
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 5)


async def test_errors_are_retried_sooner_than_the_interval(tmp_path, server, workers):
    url = server.add("/bad.txt", Route(b"x", status=503))
    worker = new_worker(workers, make_settings(tmp_path, [{"name": "b", "url": url,
                                                           "interval": "1h"}]))
    [outcome] = await worker.sync_all()
    assert outcome.status == "error"
    assert outcome.next_run - time.time() < 70  # first retry after about a minute


async def test_housekeeping_purges_expired_pushes(tmp_path, workers):
    from atr_proxy.feeds import mdr

    worker = new_worker(workers, make_settings(tmp_path, []))
    worker.prepare()
    now = time.time()
    [item] = mdr.validate([{"value": "short.example", "ttl": 1}], now=now)
    mdr.push(worker.conn, [item])
    time.sleep(1.1)
    assert worker.housekeeping()["purged"] == 1


# -- false-positive guard ----------------------------------------------------------------
def _shared(*parts: str) -> Path:
    path = SHARED_FEEDS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared feed samples ({path} is absent)")
    return path


async def test_public_dns_resolver_in_feodo_list_is_suppressed(tmp_path, server, workers):
    feodo = _shared("abusech", "feodotracker_ipblocklist_recommended.txt")
    warninglist = _shared("misp", "warninglist_public-dns-v4.json")
    url = server.add("/feodo.txt", Route(feodo.read_bytes()))
    settings = make_settings(
        tmp_path, [{"preset": "feodotracker", "url": url}],
        suppress=[{"name": "public-dns-v4", "path": str(warninglist)}])
    worker = new_worker(workers, settings)
    [outcome] = await worker.sync_all()
    assert outcome.status == "ok" and outcome.suppressed == 1
    assert verdicts(worker.index_path, "8.8.8.8", "100.38.242.113") == {
        "8.8.8.8": "allow", "100.38.242.113": "block"}
    row = worker.conn.execute("SELECT suppressed_by FROM indicators WHERE value='8.8.8.8'"
                              ).fetchone()
    assert row == ("public-dns-v4",)
    assert status(worker.index_path, "feodotracker")["suppressed_by"] == {"public-dns-v4": 1}
    # without the list, the next start enforces it again
    plain = new_worker(workers, make_settings(tmp_path, [{"preset": "feodotracker",
                                                          "url": url}]))
    plain.prepare()
    assert verdicts(worker.index_path, "8.8.8.8") == {"8.8.8.8": "block"}


async def test_plain_top_sites_list_suppresses_a_listed_site_but_not_a_page(tmp_path, server,
                                                                            workers):
    top = tmp_path / "top.csv"
    top.write_text("1,google.com\n2,example.net\n")
    url = server.add("/ph.txt", Route(b"google.com\nhttp://example.net/\n"
                                      b"http://example.net/phish/login\nevil.example\n"))
    worker = new_worker(workers, make_settings(
        tmp_path, [{"name": "ph", "url": url}],
        suppress=[{"name": "top", "path": str(top)}]))
    [outcome] = await worker.sync_all()
    assert outcome.suppressed == 2
    assert verdicts(worker.index_path, "www.google.com", "http://example.net/phish/login",
                    "evil.example") == {"www.google.com": "allow",
                                        "http://example.net/phish/login": "block",
                                        "evil.example": "block"}


async def test_a_suppressed_indicator_is_never_committed_unsuppressed(tmp_path, server,
                                                                        workers):
    """The feed's new rows and their suppression marks are one commit, full sync and line
    delta alike: a reader can never see a suppressed indicator as live, not even for the
    moment between two commits (every statement the worker runs is traced)."""
    top = tmp_path / "top.csv"
    top.write_text("1,google.com\n2,example.org\n")
    listed = b"".join(b"evil%d.example\n" % i for i in range(20)) + b"google.com\n"
    url = server.add("/f.txt", Route(listed))
    worker = new_worker(workers, make_settings(
        tmp_path, [{"name": "f", "url": url, "format": "plain"}],
        suppress=[{"name": "top", "path": str(top)}]))
    statements: list[str] = []
    worker.conn.set_trace_callback(statements.append)

    def commits_between_insert_and_mark(value: str) -> int:
        insert = next(i for i, sql in enumerate(statements)
                      if sql.startswith("INSERT INTO indicators") and value in sql)
        mark = next(i for i, sql in enumerate(statements)
                    if sql.startswith("UPDATE indicators SET suppressed_by") and i > insert)
        return sum(sql == "COMMIT" for sql in statements[insert:mark])

    [first] = await worker.sync_all()
    assert first.status == "ok" and first.mode == "full" and first.suppressed == 1
    assert commits_between_insert_and_mark("google.com") == 0
    statements.clear()
    server.add("/f.txt", Route(listed + b"example.org\n"))  # a small change: a line delta
    [second] = await worker.sync_all()
    assert second.status == "ok" and second.mode == "delta" and second.suppressed == 2
    assert commits_between_insert_and_mark("example.org") == 0
    assert verdicts(worker.index_path, "www.google.com", "example.org", "evil1.example") == {
        "www.google.com": "allow", "example.org": "allow", "evil1.example": "block"}


# -- presets, served from loopback --------------------------------------------------------
PRESET_SAMPLES = {
    "urlhaus": ("abusech", "urlhaus_csv_recent_2022-09-13_sample.csv"),
    "feodotracker": ("abusech", "feodotracker_ipblocklist_recommended.txt"),
    "spamhaus-drop": ("ip", "spamhaus_drop.txt"),
    "spamhaus-dropv6": ("ip", "spamhaus_dropv6.txt"),
    "openphish": ("phishing", "openphish_feed.txt"),
    "urlhaus-hosts": ("hosts", "urlhaus_hostfile_2020-04-14.txt"),
    "hagezi-tif": ("domains", "hagezi_fake_wildcard.txt"),
}


@pytest.mark.parametrize("preset", sorted(PRESET_SAMPLES))
async def test_presets_parse_their_vendor_format(tmp_path, server, workers, preset):
    sample = _shared(*PRESET_SAMPLES[preset])
    url = server.add(f"/{preset}", Route(sample.read_bytes()))
    worker = new_worker(workers, make_settings(tmp_path, [{"preset": preset, "url": url}]))
    [outcome] = await worker.sync_all()
    assert outcome.status == "ok", outcome.error
    assert outcome.total > 10 and outcome.rejected <= outcome.accepted // 10
    row = status(worker.index_path, preset)
    assert row["module"] == "xops"


async def test_threatfox_preset_reads_the_export_shape(tmp_path, server, workers):
    export = {"1": [{"ioc_value": "c2-tf.example", "ioc_type": "domain",
                     "threat_type": "botnet_cc", "malware_printable": "X",
                     "confidence_level": 100}],
              "2": [{"ioc_value": "198.51.100.20:8080", "ioc_type": "ip:port"}],
              "3": [{"ioc_value": "http://tf.example/gate.php", "ioc_type": "url"}],
              "4": [{"ioc_value": "0" * 64, "ioc_type": "sha256_hash"}]}
    url = server.add("/tf.json", Route(json.dumps(export).encode()))
    worker = new_worker(workers, make_settings(tmp_path, [{"preset": "threatfox", "url": url}]))
    [outcome] = await worker.sync_all()
    assert outcome.total == 3
    assert set(verdicts(worker.index_path, "c2-tf.example", "198.51.100.20",
                        "http://tf.example/gate.php").values()) == {"block"}


async def test_circl_preset_reads_a_misp_feed(tmp_path, server, workers):
    manifest = _shared("misp", "misp_feed_manifest.json")
    event = _shared("misp", "misp_event_osint_sednit.json")
    uuids = list(json.loads(manifest.read_text()))
    server.add("/osint/manifest.json", Route(json.dumps({uuids[0]: {}}).encode()))
    server.add(f"/osint/{uuids[0]}.json", Route(event.read_bytes()))
    worker = new_worker(workers, make_settings(tmp_path, [{
        "preset": "circl-osint", "url": server.url("/osint/manifest.json")}]))
    [outcome] = await worker.sync_all()
    assert outcome.status == "ok" and outcome.total >= 20


def test_worker_index_is_readable_by_sqlite(tmp_path, workers):
    worker = new_worker(workers, make_settings(tmp_path, []))
    worker.prepare()
    names = [r[0] for r in sqlite3.connect(worker.index_path).execute("SELECT name FROM feeds")]
    assert names == ["mdr", "mdr-monitor"]
