"""The dashboard's server side through real HTTP: login, session cookie, CSRF, the
forwarding to the admin API, and the API it adds (events, overview, feed enable/disable
and test)."""

from __future__ import annotations

import re
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from atr_proxy import config
from atr_proxy.admin import dashboard
from atr_proxy.admin.api import create_app
from atr_proxy.events import Event, EventWriter
from atr_proxy.index import IndexWriter, connect
from tests.conftest import fill
from tests.operator_harness import AdminHttp

TOKEN = "dashboard-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _event(i: int, **fields: object) -> Event:
    base = dict(event_id=f"test{i:016d}", at=time.time() - 60 + i, source="proxy",
                traffic="forwarded", action="block", verdict="block", module="third_party",
                feed="bad", indicator="evil.example", kind="domain", target="host",
                client_ip="127.0.0.5", dest_host="www.evil.example", dest_port=443)
    base.update(fields)
    return Event(**base)


@pytest.fixture
def admin(tmp_path: Path):
    index = tmp_path / "index.db"
    writer = IndexWriter(connect(index))
    fill(writer, "bad", [("domain", "evil.example"), ("ip", "192.0.2.0/24")])
    fill(writer, "watch", [("domain", "odd.example")], action="monitor", position=1)
    feed_file = tmp_path / "local.txt"
    feed_file.write_text("one.example\ntwo.example\nnot a domain!\n")
    settings = config.from_mapping({
        "index": str(index),
        "feeds": [{"name": "local", "url": f"file://{feed_file}", "format": "plain"}],
        "events": {"jsonl": None},
    })
    events = EventWriter(index, None)
    events.emit([_event(1), _event(2, client_ip="127.0.0.6"),
                 _event(3, source="dns", traffic="dns", dest_host="evil.example",
                        dest_port=None),
                 _event(4, action="monitor", verdict="monitor", feed="watch",
                        indicator="odd.example", dest_host="odd.example")])
    events.flush()
    server = AdminHttp(create_app(settings, index_path=index, token=TOKEN, events=events))
    yield server
    server.close()
    events.close()


def _login(url: str, token: str = TOKEN) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=url, timeout=10)
    response = client.post("/ui/login", data={"token": token})
    assert response.status_code == 303, response.text
    page = client.get("/ui/")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    return client, csrf


def test_without_a_session_the_page_is_the_login_form(admin) -> None:
    with httpx.Client(base_url=admin.url, timeout=10) as client:
        page = client.get("/ui/")
        assert page.status_code == 200 and 'id="login-form"' in page.text
        assert "csrf-token" not in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
        assert client.get("/ui/api/feeds").status_code == 401
        wrong = client.post("/ui/login", data={"token": "nope"})
        assert wrong.status_code == 401 and "Wrong admin token" in wrong.text
        assert "set-cookie" not in wrong.headers


def test_login_sets_a_strict_httponly_session_and_the_page_carries_the_csrf_token(
        admin) -> None:
    with httpx.Client(base_url=admin.url, timeout=10) as client:
        response = client.post("/ui/login", data={"token": TOKEN})
        cookie = response.headers["set-cookie"]
        assert response.status_code == 303 and response.headers["location"] == "/ui/"
        for part in ("atr_session=", "HttpOnly", "SameSite=strict", "Path=/ui"):
            assert part in cookie
        assert TOKEN not in cookie
        page = client.get("/ui/")
        assert 'id="events-table"' in page.text and 'id="feeds-table"' in page.text
        assert re.search(r'name="csrf-token" content="[A-Za-z0-9_-]{20,}"', page.text)
        assert "https://" not in page.text and "http://" not in page.text  # nothing remote
        feeds = client.get("/ui/api/feeds").json()["feeds"]
        assert {f["name"] for f in feeds} >= {"bad", "watch"}


def test_state_changes_need_the_csrf_token_and_this_origin(admin) -> None:
    client, csrf = _login(admin.url)
    body = {"scope": "source", "value": "127.0.0.7"}
    with closing(client):
        assert client.post("/ui/api/exceptions", json=body).status_code == 403
        assert client.post("/ui/api/exceptions", json=body,
                           headers={"X-CSRF-Token": "x" + csrf[1:]}).status_code == 403
        assert client.post("/ui/api/exceptions", json=body, headers={
            "X-CSRF-Token": csrf, "Origin": "http://evil.example"}).status_code == 403
        made = client.post("/ui/api/exceptions", json=body, headers={
            "X-CSRF-Token": csrf, "Origin": admin.url})
        assert made.status_code == 201 and made.json()["value"] == "127.0.0.7"
        listed = client.get("/ui/api/exceptions").json()["exceptions"]
        assert any(e["value"] == "127.0.0.7" for e in listed)
        # a forged or stale cookie is no session
        client.cookies.set("atr_session", "9999999999.abc.def", path="/ui")
        assert client.get("/ui/api/feeds").status_code == 401
        # logging out needs the CSRF token too
    assert httpx.post(admin.url + "/ui/logout").status_code == 403


def test_sessions_expire_and_die_with_the_token() -> None:
    session = dashboard.new_session("t1", now=1000.0)
    assert dashboard.session_valid("t1", session, now=1001.0)
    assert not dashboard.session_valid("t1", session, now=1000.0 + dashboard.SESSION_TTL + 1)
    assert not dashboard.session_valid("t2", session, now=1001.0)
    assert dashboard.csrf_token("t1", session) != dashboard.csrf_token("t1", session + "x")


def test_events_api_is_newest_first_and_filters(admin) -> None:
    with httpx.Client(base_url=admin.url, headers=AUTH, timeout=10) as client:
        assert client.get("/api/v1/events", headers={"Authorization": ""}).status_code == 401
        rows = client.get("/api/v1/events").json()["events"]
        assert [r["event_id"] for r in rows][:4] == [f"test{i:016d}" for i in (4, 3, 2, 1)]
        only = client.get("/api/v1/events", params={"client": "127.0.0.6"}).json()["events"]
        assert [r["event_id"] for r in only] == [f"test{2:016d}"]
        dns = client.get("/api/v1/events", params={"traffic": "dns"}).json()["events"]
        assert [r["source"] for r in dns] == ["dns"]
        monitor = client.get("/api/v1/events", params={"action": "monitor",
                                                       "feed": "watch"}).json()["events"]
        assert [r["indicator"] for r in monitor] == ["odd.example"]
        assert client.get("/api/v1/events", params={"limit": "0"}).status_code == 400


def test_overview_counts_blocks_hits_and_top_lists(admin) -> None:
    with httpx.Client(base_url=admin.url, headers=AUTH, timeout=10) as client:
        data = client.get("/api/v1/overview", params={"hours": "1"}).json()
    assert data["totals"]["blocks"] == 3 and data["totals"]["monitored"] == 1
    assert data["totals"]["by_traffic"] == {"forwarded": 3, "dns": 1}
    assert sum(data["series"]["block"]) == 3 and sum(data["series"]["monitor"]) == 1
    assert data["top_blocked"][0]["indicator"] == "evil.example"
    assert data["top_blocked"][0]["hits"] == 3
    assert data["top_clients"][0] == {"client": "127.0.0.5", "hits": 3, "blocks": 2,
                                      "last": data["top_clients"][0]["last"]}
    assert {(f["feed"], f["blocks"], f["monitored"]) for f in data["per_feed"]} == {
        ("bad", 3, 0), ("watch", 0, 1)}
    assert data["indicators"]["third_party"]["indicators"] == 3
    assert data["snapshot"]["indicators"] == 3


def test_disabling_a_feed_stops_its_enforcement_at_once(admin) -> None:
    client, csrf = _login(admin.url)
    headers = {"X-CSRF-Token": csrf}

    def verdict() -> str:
        result = client.get("/ui/api/lookup", params={"value": "www.evil.example"})
        return result.json()["results"][0]["verdict"]

    with closing(client):
        assert verdict() == "block"
        off = client.patch("/ui/api/feeds/bad", json={"enabled": False}, headers=headers)
        assert off.json() == {"feed": "bad", "enabled": False}
        assert verdict() == "allow"
        assert client.patch("/ui/api/feeds/bad", json={"enabled": True},
                            headers=headers).status_code == 200
        assert verdict() == "block"
        assert client.patch("/ui/api/feeds/nope", json={"enabled": True},
                            headers=headers).status_code == 404
        assert client.patch("/ui/api/feeds/bad", json={"enabled": "no"},
                            headers=headers).status_code == 400


def test_feed_test_fetches_and_parses_and_stores_nothing(admin, tmp_path: Path) -> None:
    with httpx.Client(base_url=admin.url, headers=AUTH, timeout=10) as client:
        result = client.post("/api/v1/feeds/local/test").json()
        assert result["status"] == "ok" and result["indicators"] == 2
        assert result["rejected"] == 1 and result["format"] == "plain"
        assert [s["value"] for s in result["sample"]] == ["one.example", "two.example"]
        assert client.post("/api/v1/feeds/bad/test").status_code == 404  # no url
    names = {r[0] for r in connect(tmp_path / "index.db").execute("SELECT name FROM feeds")}
    assert "local" not in names


def test_static_files_are_served_and_the_templates_are_not(admin) -> None:
    with httpx.Client(base_url=admin.url, timeout=10) as client:
        script = client.get("/ui/static/dashboard.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert ".innerHTML" not in script.text  # the page is built from text nodes only
        assert client.get("/ui/static/dashboard.css").status_code == 200
        assert client.get("/ui/static/dashboard.html").status_code == 404
        assert client.get("/ui/static/..%2Fdashboard.py").status_code == 404


def test_mdr_add_list_expire_and_remove_through_the_dashboard(admin) -> None:
    client, csrf = _login(admin.url)
    headers = {"X-CSRF-Token": csrf}
    with closing(client):
        added = client.post("/ui/api/mdr/indicators", headers=headers, json=[
            {"value": "push.example", "type": "domain", "action": "block",
             "comment": "ticket 42"}])
        assert added.status_code == 201
        item = added.json()["indicators"][0]
        assert item["expires_at"] is None
        listed = client.get("/ui/api/mdr/indicators", params={"q": "push"}).json()
        assert [i["value"] for i in listed["items"]] == ["push.example"]
        # "expire": the same value pushed again with a ttl, as the page's button does
        before = time.time()
        client.post("/ui/api/mdr/indicators", headers=headers, json=[
            {"value": "push.example", "type": "domain", "action": "block", "ttl": "1h",
             "comment": "ticket 42"}])
        again = client.get("/ui/api/mdr/indicators", params={"q": "push"}).json()["items"][0]
        assert again["id"] == item["id"] and before + 3500 < again["expires_at"] < before + 3700
        assert client.delete(f"/ui/api/mdr/indicators/{item['id']}").status_code == 403
        gone = client.delete(f"/ui/api/mdr/indicators/{item['id']}", headers=headers)
        assert gone.status_code == 200
        assert client.get("/ui/api/mdr/indicators", params={"q": "push"}).json()["total"] == 0
