"""The admin API through real HTTP to a real uvicorn server on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from atr_proxy import config
from atr_proxy.admin.api import AdminServer, create_app
from atr_proxy.events import EventWriter
from atr_proxy.feeds.sync import SyncWorker
from atr_proxy.index import connect

from .conftest import outside_holder, wait_for

TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RunningServer:
    """uvicorn in a thread with its own event loop, on a socket we bound ourselves."""

    def __init__(self, app) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = AdminServer(app, "127.0.0.1", self.port)
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def api(tmp_path: Path):
    feed_file = tmp_path / "list.txt"
    feed_file.write_text("evil-feed.example\n8.8.8.8\n")
    warninglist = tmp_path / "dns.txt"
    warninglist.write_text("8.8.8.8\n")
    settings = config.from_mapping({
        "index": str(tmp_path / "index.db"),
        "feeds": [{"name": "local", "url": f"file://{feed_file}", "format": "plain"}],
        "suppress": [{"name": "public-dns", "path": str(warninglist)}],
        "events": {"jsonl": str(tmp_path / "events.jsonl")},
    }, base=tmp_path, env={})
    worker = SyncWorker(settings)
    worker.prepare()
    events = EventWriter(settings.index, settings.events.jsonl)
    app = create_app(settings, index_path=settings.index, token=TOKEN, worker=worker,
                     events=events)
    with RunningServer(app) as running:
        with httpx.Client(base_url=running.url, headers=AUTH, timeout=10) as client:
            client.root = running.url
            client.index = settings.index
            client.events = events
            yield client
    events.close()
    worker.close()


def test_health_needs_no_token_but_everything_else_does(api):
    assert httpx.get(f"{api.root}/api/v1/health").json()["status"] == "ok"
    bare = httpx.get(f"{api.root}/api/v1/feeds")
    assert bare.status_code == 401 and "Bearer" in bare.json()["error"]
    wrong = httpx.get(f"{api.root}/api/v1/feeds", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    other = httpx.get(f"{api.root}/api/v1/feeds", headers={"X-ATR-Token": TOKEN})
    assert other.status_code == 200


def test_a_push_is_in_the_index_with_its_change_log_entry_when_the_api_returns(api):
    r = api.post("/api/v1/mdr/indicators", json=[{
        "type": "domain", "value": "Evil-Push.Example.", "action": "block",
        "ttl": "2h", "comment": "case 42", "reference": "TICKET-1"}])
    assert r.status_code == 201
    [item] = r.json()["indicators"]
    assert item["value"] == "evil-push.example" and item["feed"] == "mdr"
    assert abs(item["expires_at"] - (time.time() + 7200)) < 60
    conn = connect(api.index)  # another connection: what the proxy and resolver read
    row = conn.execute("SELECT kind, value, comment FROM indicators WHERE id=?",
                       (item["id"],)).fetchone()
    assert row == ("domain", "evil-push.example", "case 42")
    assert conn.execute("SELECT op FROM changes WHERE indicator_id=? ORDER BY seq DESC",
                        (item["id"],)).fetchone() == ("add",)
    conn.close()
    result = api.get("/api/v1/lookup", params={"value": "www.evil-push.example"}).json()
    assert result["results"][0]["verdict"] == "block"
    assert result["results"][0]["hits"][0]["feed"] == "mdr"


def test_monitor_pushes_go_to_mdr_monitor_and_a_repush_moves_the_value(api):
    [first] = api.post("/api/v1/mdr/indicators",
                       json=[{"value": "203.0.113.50", "action": "monitor"}]).json()["indicators"]
    assert first["feed"] == "mdr-monitor" and first["type"] == "ip"
    look = api.get("/api/v1/lookup", params={"value": "203.0.113.50"}).json()["results"][0]
    assert look["verdict"] == "monitor"
    [moved] = api.post("/api/v1/mdr/indicators",
                       json={"indicators": [{"value": "203.0.113.50"}]}).json()["indicators"]
    assert moved["feed"] == "mdr"
    page = api.get("/api/v1/mdr/indicators", params={"q": "203.0.113.50"}).json()
    assert page["total"] == 1 and page["items"][0]["action"] == "block"


def test_a_bad_item_refuses_the_whole_push(api):
    r = api.post("/api/v1/mdr/indicators", json=[
        {"value": "fine.example"}, {"value": "not a domain!"},
        {"value": "x.example", "action": "allow"}, {"value": "y.example", "ttl": 5,
                                                     "expires_at": 9999999999}])
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [(1, "value"), (2, "action"),
                                                          (3, "ttl")]
    assert api.get("/api/v1/mdr/indicators").json()["total"] == 0
    assert api.post("/api/v1/mdr/indicators", content=b"{nope").status_code == 400


def test_search_and_paging(api):
    items = [{"value": f"host{i:02d}.paging.example", "comment": "batch"} for i in range(25)]
    items.append({"value": "other.example", "comment": "Phishing wave"})
    assert api.post("/api/v1/mdr/indicators", json=items).status_code == 201
    page = api.get("/api/v1/mdr/indicators", params={"q": "paging", "limit": 10,
                                                     "offset": 10}).json()
    assert page["total"] == 25 and len(page["items"]) == 10
    assert page["items"][0]["value"] == "host14.paging.example"  # newest first
    by_comment = api.get("/api/v1/mdr/indicators", params={"q": "phishing"}).json()
    assert [i["value"] for i in by_comment["items"]] == ["other.example"]
    assert api.get("/api/v1/mdr/indicators", params={"limit": 0}).status_code == 400


def test_delete_by_id_and_by_value(api):
    pushed = api.post("/api/v1/mdr/indicators", json=[
        {"value": "a.del.example"}, {"value": "http://b.del.example/x", "action": "monitor"}]
    ).json()["indicators"]
    r = api.delete(f"/api/v1/mdr/indicators/{pushed[0]['id']}")
    assert r.status_code == 200 and r.json()["removed"][0]["value"] == "a.del.example"
    assert api.delete(f"/api/v1/mdr/indicators/{pushed[0]['id']}").status_code == 404
    r = api.delete("/api/v1/mdr/indicators", params={"value": "HTTP://b.del.example/x"})
    assert r.status_code == 200 and r.json()["removed"][0]["type"] == "url"
    assert api.get("/api/v1/mdr/indicators").json()["total"] == 0
    look = api.get("/api/v1/lookup", params={"value": "a.del.example"}).json()
    assert look["results"][0]["verdict"] == "allow"
    conn = connect(api.index)
    ops = [r[0] for r in conn.execute("SELECT op FROM changes WHERE indicator_id=?",
                                      (pushed[0]["id"],))]
    conn.close()
    assert ops[-1] == "del"


def test_feeds_status_and_sync_now(api):
    feeds = {f["name"]: f for f in api.get("/api/v1/feeds").json()["feeds"]}
    assert {"mdr", "mdr-monitor", "local"} <= set(feeds)
    assert feeds["local"]["status"] == "never"
    r = api.post("/api/v1/feeds/local/sync")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["total"] == 2
    one = api.get("/api/v1/feeds/local").json()
    assert one["status"] == "ok" and one["indicator_count"] == 2
    assert one["suppressed_by"] == {"public-dns": 1}
    assert api.get("/api/v1/feeds/nope").status_code == 404
    look = api.get("/api/v1/lookup", params=[("value", "8.8.8.8"),
                                             ("value", "evil-feed.example")]).json()
    first, second = look["results"]
    assert first["verdict"] == "allow" and first["suppressed"][0]["list"] == "public-dns"
    assert second["verdict"] == "block"


def test_exceptions_crud(api):
    api.post("/api/v1/mdr/indicators", json=[{"value": "exc.example"}])
    r = api.post("/api/v1/exceptions", json={"value": "ok.exc.example", "comment": "vendor"})
    assert r.status_code == 201
    ident = r.json()["id"]
    listed = api.get("/api/v1/exceptions").json()["exceptions"]
    assert [(e["id"], e["scope"], e["value"]) for e in listed] == \
        [(ident, "destination", "ok.exc.example")]
    look = api.post("/api/v1/lookup", json={"values": ["ok.exc.example", "bad.exc.example"]}
                    ).json()["results"]
    assert [x["verdict"] for x in look] == ["allow", "block"]
    assert look[0]["excepted"][0]["exception"] == "ok.exc.example"
    assert api.post("/api/v1/exceptions", json={"scope": "source", "value": "evil.example"}
                    ).status_code == 400
    assert api.delete(f"/api/v1/exceptions/{ident}").status_code == 200
    assert api.delete(f"/api/v1/exceptions/{ident}").status_code == 404
    assert api.get("/api/v1/exceptions").json()["exceptions"] == []


def test_a_client_listed_as_blocking_ioc_is_refused_before_authentication(api):
    api.post("/api/v1/mdr/indicators", json=[{"value": "127.0.0.2", "comment": "attacker"}])
    blocked = httpx.Client(base_url=api.root, timeout=10,
                           transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with blocked:
        assert wait_for(lambda: blocked.get("/api/v1/health").status_code == 403)
        r = blocked.get("/api/v1/feeds")  # no token at all: still 403, not 401
        assert r.status_code == 403 and "blocked" in r.json()["error"]
        with_token = blocked.post("/api/v1/mdr/indicators", headers=AUTH,
                                  json=[{"value": "127.0.0.2"}])
        assert with_token.status_code == 403
    event_id = r.json()["event_id"]
    api.events.flush()
    conn = connect(api.index)
    row = conn.execute("SELECT source, traffic, verdict, client_ip, indicator, feed, url"
                       " FROM events WHERE event_id=?", (event_id,)).fetchone()
    conn.close()
    assert row == ("admin", "system", "block", "127.0.0.2", "127.0.0.2", "mdr",
                   "/api/v1/feeds")
    assert api.get("/api/v1/health").status_code == 200  # 127.0.0.1 is not listed


def test_a_monitor_ioc_client_is_served(api):
    api.post("/api/v1/mdr/indicators", json=[{"value": "127.0.0.3", "action": "monitor"}])
    time.sleep(0.6)  # two watcher polls
    with httpx.Client(base_url=api.root, headers=AUTH, timeout=10,
                      transport=httpx.HTTPTransport(local_address="127.0.0.3")) as client:
        assert client.get("/api/v1/feeds").status_code == 200


def test_without_a_configured_token_the_worker_makes_one_only_its_owner_can_read(tmp_path,
                                                                                 monkeypatch):
    from atr_proxy.feeds.commands import admin_token

    monkeypatch.delenv("ATR_ADMIN_TOKEN", raising=False)
    index = tmp_path / "index.db"
    token, origin = admin_token(config.from_mapping({}), index)
    path = Path(origin)
    assert path == tmp_path / "index.db.admin-token" and len(token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert admin_token(config.from_mapping({}), index) == (token, origin)  # kept across runs
    monkeypatch.setenv("ATR_ADMIN_TOKEN", "from-env")
    assert admin_token(config.from_mapping({}), index) == ("from-env", "ATR_ADMIN_TOKEN")
    configured = config.from_mapping({"admin": {"token": "${T}"}}, env={"T": "from-file"})
    assert admin_token(configured, index) == ("from-file", "admin.token")


def test_an_unavailable_index_is_a_503_then_the_api_carries_on(api, tmp_path):
    """The index renamed over while an outside process holds the old file: a push is
    answered 503 (the caller may retry; not a 400, it was not the caller's fault); once the
    holder lets go, the push lands in the new file."""
    assert api.get("/api/v1/feeds").status_code == 200
    push = [{"type": "domain", "value": "held-push.example"}]
    with outside_holder(api.index):
        other = tmp_path / "other.db"
        connect(other).close()
        os.replace(other, api.index)
        r = api.post("/api/v1/mdr/indicators", json=push)
        assert r.status_code == 503 and "unavailable" in r.json()["error"], r.text
        assert api.get("/api/v1/feeds").status_code == 503
    r = api.post("/api/v1/mdr/indicators", json=push)
    assert r.status_code == 201, r.text
    conn = connect(api.index)
    assert conn.execute("SELECT value FROM indicators").fetchall() == [("held-push.example",)]
    conn.close()
