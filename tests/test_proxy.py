"""The proxy through real clients: a real ``atr-proxy proxy`` (mitmdump with the addon),
curl, httpx and raw TLS sockets, and origin servers on loopback that count every
connection they accept (so "nothing reached the upstream" is checked, not assumed)."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from atr_proxy.index import FeedSpec, IndexWriter, connect
from atr_proxy.indicators import url_key

from .proxy_harness import (
    CURL,
    Origin,
    RunningProxy,
    curl,
    make_origin_ca,
    tls_through_tunnel,
)

pytestmark = pytest.mark.skipif(not Path(CURL).exists(), reason="needs curl")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("proxy")


@pytest.fixture(scope="module")
def origin_ca(work):
    return make_origin_ca(work / "origin-ca")


@pytest.fixture(scope="module")
def origins(origin_ca):
    """Origins by role: plain and TLS on 127.0.0.1 (= localhost), and one per scenario on
    its own loopback address."""
    made = {
        "http": Origin("127.0.0.1"),
        "tls": Origin("127.0.0.1", tls=origin_ca),
        "monitored": Origin("127.0.0.3"),
        "excepted": Origin("127.0.0.4"),
        "listed": Origin("127.0.0.6"),
        "listed_tls": Origin("127.0.0.7", tls=origin_ca),
    }
    yield made
    for origin in made.values():
        origin.close()


def add(writer: IndexWriter, feed: str, items: list[tuple[str, str]], **spec) -> int:
    feed_id = writer.upsert_feed(FeedSpec(name=feed, **spec))
    for kind, value in items:
        writer.add_indicator(feed_id, kind, value)
    return feed_id


@pytest.fixture(scope="module")
def index(work, origins):
    path = work / "index.db"
    writer = IndexWriter(connect(path))
    add(writer, "threats", [
        ("domain", "evil.example"), ("domain", "front.example"),
        ("ip", "127.0.0.2"),         # a listed client
        ("ip", "127.0.0.4"),         # listed, but a destination exception passes it
        ("ip", "127.0.0.6"),         # listed, passed only for the excepted client 127.0.0.5
        ("ip", "127.0.0.7"),         # a listed CONNECT target
    ])
    add(writer, "urls", [
        ("url", url_key(origins["http"].url("/bad/", host="localhost"))),
        ("url", url_key(origins["tls"].url("/bad/", host="localhost"))),
    ], module="xops")
    add(writer, "watch", [("ip", "127.0.0.3")], action="monitor")
    writer.add_exception("destination", "ip", "127.0.0.4")
    writer.add_exception("source", "ip", "127.0.0.5")
    yield writer
    writer.conn.close()


@pytest.fixture(scope="module")
def proxy(work, index, origin_ca):
    running = RunningProxy(work / "p1", {
        "index": str(work / "index.db"),
        "proxy": {"certs": str(work / "certs"), "intercept": "auto"},
        "events": {"jsonl": str(work / "events.jsonl")},
    }, extra=["--set", f"ssl_verify_upstream_trusted_ca={origin_ca.ca_file}"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def proxy_ca(proxy, work) -> Path:
    return work / "certs" / "mitmproxy-ca-cert.pem"


# -- plain HTTP --------------------------------------------------------------------------
def test_plain_http_request_passes_to_the_origin(proxy, origins):
    reply = curl(proxy, origins["http"].url("/hello", host="localhost"))
    assert (reply.rc, reply.status, reply.body) == (0, 200, "origin ok /hello\n")
    with httpx.Client(proxy=proxy.url, timeout=10) as client:
        response = client.get(origins["http"].url("/hello-httpx", host="localhost"))
    assert response.status_code == 200 and response.text == "origin ok /hello-httpx\n"


def test_listed_domain_gets_a_plain_text_block_page_naming_the_event(proxy):
    reply = curl(proxy, "http://www.evil.example/download?x=1")
    assert reply.status == 403
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["content-type"].startswith("text/plain")
    event_id = reply.headers["x-atr-event"]
    for shown in (event_id, "evil.example", "threats", "third_party",
                  "http://www.evil.example/download?x=1", "UTC"):
        assert shown in reply.body
    event = proxy.wait_event(event_id=event_id)
    assert event["verdict"] == "block" and event["target"] == "host"
    assert event["indicator"] == "evil.example" and event["feed"] == "threats"
    assert event["client_ip"] == "127.0.0.1" and event["dest_host"] == "www.evil.example"
    assert event["url"] == "http://www.evil.example/download?x=1"
    assert event["traffic"] == "system" and event["dest_port"] == 80


def test_listed_url_is_blocked_without_contacting_the_origin_and_other_paths_pass(proxy, origins):
    origin = origins["http"]
    before = origin.seen.connections
    blocked = curl(proxy, origin.url("/bad/payload.exe", host="localhost"))
    assert blocked.status == 403 and f"localhost:{origin.port}/bad/" in blocked.body
    assert origin.seen.connections == before
    assert all("/bad/" not in path for _, path, _ in origin.seen.requests)
    passed = curl(proxy, origin.url("/good/file", host="localhost"))
    assert passed.status == 200 and passed.body == "origin ok /good/file\n"


def test_browsers_get_an_html_block_page_with_every_value_escaped(proxy):
    hostile = "http://evil.example/<script>alert(1)</script>?q=\"><img%20src=x>"
    reply = curl(proxy, hostile, "-H", "Accept: text/html,application/xhtml+xml", "-g")
    assert reply.status == 403
    assert reply.headers["content-type"].startswith("text/html")
    assert reply.headers["cache-control"] == "no-store"
    assert "<script>alert" not in reply.body and "<img" not in reply.body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in reply.body
    assert f'<dd id="atr-event">{reply.headers["x-atr-event"]}</dd>' in reply.body
    assert '<dd id="atr-feed">threats</dd>' in reply.body


def test_kept_alive_upstream_connection_is_reused(proxy, origins):
    origin = origins["http"]
    before = origin.seen.connections
    url = origin.url("/again", host="localhost")
    out = subprocess.run([CURL, "-sS", "-x", proxy.url, url, url, url], capture_output=True,
                         text=True, timeout=15)
    assert out.stdout == "origin ok /again\n" * 3
    assert origin.seen.connections == before + 1
    # the connection went to the address that was checked, not to a second look-up
    assert f"server connect 127.0.0.1:{origin.port}" in proxy.log()


# -- CONNECT and TLS ---------------------------------------------------------------------
def test_connect_to_a_listed_address_gets_403_and_no_upstream_connection(proxy, origins,
                                                                         origin_ca):
    origin = origins["listed_tls"]
    reply = curl(proxy, origin.url("/"), "--cacert", str(origin_ca.ca_file))
    assert reply.connect == 403 and reply.rc != 0
    time.sleep(0.2)
    assert origin.seen.connections == 0
    proxy.wait_event(dest_host="127.0.0.7", verdict="block", detail="CONNECT")


def test_connect_to_a_listed_domain_gets_403(proxy):
    reply = curl(proxy, "https://evil.example/")
    assert reply.connect == 403 and reply.rc != 0


def test_https_with_url_indicators_is_intercepted_url_blocked_other_paths_pass(
        proxy, proxy_ca, origins):
    origin = origins["tls"]
    blocked = curl(proxy, origin.url("/bad/x", host="localhost"), "--cacert", str(proxy_ca))
    assert blocked.connect == 200 and blocked.status == 403
    assert "url" in blocked.body and "urls" in blocked.body and "xops" in blocked.body
    passed = curl(proxy, origin.url("/fine", host="localhost"), "--cacert", str(proxy_ca))
    assert passed.status == 200 and passed.body == "origin ok /fine\n"
    context = ssl.create_default_context(cafile=str(proxy_ca))
    with httpx.Client(proxy=proxy.url, verify=context, timeout=10) as client:
        assert client.get(origin.url("/bad/y", host="localhost")).status_code == 403
        assert client.get(origin.url("/fine2", host="localhost")).text == "origin ok /fine2\n"
    assert all("/bad/" not in path for _, path, _ in origin.seen.requests)


def test_https_to_a_host_without_url_indicators_passes_through_undecrypted(
        proxy, origins, origin_ca):
    origin = origins["tls"]  # addressed as 127.0.0.1: no URL indicators on that host
    reply = curl(proxy, origin.url("/tunnel"), "--cacert", str(origin_ca.ca_file))
    assert reply.status == 200 and reply.body == "origin ok /tunnel\n"  # the origin's own cert
    context = ssl.create_default_context(cafile=str(origin_ca.ca_file))
    with httpx.Client(proxy=proxy.url, verify=context, timeout=10) as client:
        assert client.get(origin.url("/tunnel-httpx")).status_code == 200


def test_fronted_sni_is_blocked_with_the_page_for_clients_that_trust_the_ca(
        proxy, proxy_ca, origins):
    origin = origins["tls"]
    before = origin.seen.connections
    status, headers, body = tls_through_tunnel(proxy, f"127.0.0.1:{origin.port}",
                                               "front.example", proxy_ca)
    assert status == 403 and "front.example" in body
    assert origin.seen.connections == before
    event = proxy.wait_event(event_id=headers["x-atr-event"])
    assert event["target"] == "sni" and event["indicator"] == "front.example"


def test_fronted_sni_ends_the_tunnel_for_clients_that_do_not_trust_the_ca(
        proxy, origins, origin_ca):
    origin = origins["tls"]
    before = origin.seen.connections
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_through_tunnel(proxy, f"127.0.0.1:{origin.port}", "front.example",
                           origin_ca.ca_file)
    assert origin.seen.connections == before


def test_a_listed_host_header_is_blocked_even_when_the_target_is_not(proxy, proxy_ca,
                                                                      origins):
    plain = curl(proxy, origins["http"].url("/fronted", host="localhost"),
                 "-H", "Host: www.evil.example")
    assert plain.status == 403 and "evil.example" in plain.body
    decrypted = curl(proxy, origins["tls"].url("/fronted", host="localhost"),
                     "--cacert", str(proxy_ca), "-H", "Host: evil.example")
    assert decrypted.connect == 200 and decrypted.status == 403
    for origin in (origins["http"], origins["tls"]):
        assert all(path != "/fronted" for _, path, _ in origin.seen.requests)


# -- clients, monitor, exceptions --------------------------------------------------------
def test_listed_client_address_is_refused_on_connect(proxy, origins):
    reply = curl(proxy, origins["http"].url("/from-listed", host="localhost"),
                 "--interface", "127.0.0.2")
    assert reply.rc != 0 and reply.status == 0
    event = proxy.wait_event(client_ip="127.0.0.2", target="client")
    assert event["verdict"] == "block" and event["indicator"] == "127.0.0.2"
    assert all(path != "/from-listed" for _, path, _ in origins["http"].seen.requests)


def test_monitored_destination_passes_untouched_and_is_recorded(proxy, origins):
    origin = origins["monitored"]
    reply = curl(proxy, origin.url("/watched"))
    assert reply.status == 200 and reply.body == "origin ok /watched\n"
    event = proxy.wait_event(dest_host="127.0.0.3", verdict="monitor")
    assert event["action"] == "monitor" and event["feed"] == "watch"


def test_destination_exception_passes_that_host(proxy, origins):
    reply = curl(proxy, origins["excepted"].url("/excepted"))
    assert reply.status == 200 and reply.body == "origin ok /excepted\n"


def test_source_exception_passes_everything_from_that_client(proxy, origins):
    origin = origins["listed"]
    assert curl(proxy, origin.url("/x")).status == 403
    reply = curl(proxy, origin.url("/from-excepted"), "--interface", "127.0.0.5")
    assert reply.status == 200 and reply.body == "origin ok /from-excepted\n"
    assert curl(proxy, "http://evil.example/", "--interface", "127.0.0.5").status != 403


# -- live updates and records ------------------------------------------------------------
def test_committed_change_is_enforced_within_a_second_without_restart(proxy, index, origins,
                                                                      proxy_ca):
    origin = origins["tls"]  # localhost has URL indicators: decrypted, so trust the proxy CA
    url = origin.url("/live", host="localhost")
    assert curl(proxy, url, "--cacert", str(proxy_ca)).status == 200
    feed = index.upsert_feed(FeedSpec(name="analyst", module="mdr"))
    ident = index.add_indicator(feed, "domain", "localhost")
    committed = time.monotonic()
    while True:
        before = origin.seen.connections
        reply = curl(proxy, url, "--cacert", str(proxy_ca))
        if reply.connect == 403:
            break
        assert time.monotonic() - committed < 1.0, "not enforced within 1 s"
        time.sleep(0.05)
    assert time.monotonic() - committed < 1.0
    time.sleep(0.1)
    assert origin.seen.connections == before  # the refused CONNECT opened nothing upstream
    event = proxy.wait_event(event_id=reply.headers["x-atr-event"])
    assert (event["module"], event["indicator"], event["detail"]) == ("mdr", "localhost",
                                                                      "CONNECT")
    index.remove_indicator(ident)
    removed = time.monotonic()
    while curl(proxy, url, "--cacert", str(proxy_ca)).status != 200:
        assert time.monotonic() - removed < 1.0, "removal not enforced within 1 s"
        time.sleep(0.05)


def test_events_are_in_the_index_for_atr_proxy_events(proxy, work):
    reply = curl(proxy, "http://evil.example/for-the-cli")
    event_id = reply.headers["x-atr-event"]
    deadline = time.monotonic() + 5
    while True:
        out = subprocess.run([sys.executable, "-m", "atr_proxy.cli", "--index",
                              str(work / "index.db"), "events", "--json", "--limit", "200"],
                             capture_output=True, text=True, timeout=30)
        if event_id in out.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert event_id in out.stdout and "for-the-cli" in out.stdout


def test_mitmproxys_certificate_page_is_served_through_the_proxy(proxy):
    reply = curl(proxy, "http://mitm.it/")
    assert reply.status == 200 and "mitmproxy" in reply.body.lower()


def test_proxy_ca_is_created_with_an_owner_only_key(proxy, work):
    certs = work / "certs"
    assert (certs / "mitmproxy-ca-cert.pem").exists()
    assert (certs / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600


# -- destination address after resolution; intercept none -------------------------------
FROM_9 = ("--interface", "127.0.0.9")


@pytest.fixture(scope="module")
def proxy_none(work, origins, origin_ca):
    """Lists 127.0.0.1 (what localhost resolves to), never decrypts. IP indicators apply
    to clients too, so the clients of these tests connect from 127.0.0.9."""
    tls8 = Origin("127.0.0.8", tls=origin_ca)
    path = work / "index-none.db"
    writer = IndexWriter(connect(path))
    add(writer, "threats", [("ip", "127.0.0.1"), ("domain", "front.example"),
                            ("url", url_key(tls8.url("/bad/")))])
    running = RunningProxy(work / "p2", {
        "index": str(path),
        "proxy": {"certs": str(work / "certs"), "intercept": "none"},
        "events": {"jsonl": str(work / "events-none.jsonl")},
    })
    yield running, tls8
    running.stop()
    tls8.close()
    writer.conn.close()


def test_name_resolving_to_a_listed_address_is_blocked_before_any_byte_goes_upstream(
        proxy_none, origins):
    proxy, _ = proxy_none
    plain, tls = origins["http"], origins["tls"]
    before = (plain.seen.connections, tls.seen.connections)
    reply = curl(proxy, plain.url("/resolved", host="localhost"), *FROM_9)
    assert reply.status == 403 and "127.0.0.1" in reply.body
    event = proxy.wait_event(event_id=reply.headers["x-atr-event"])
    assert (event["kind"], event["target"], event["dest_ip"]) == ("ip", "ip", "127.0.0.1")
    assert event["dest_host"] == "localhost"
    assert curl(proxy, tls.url("/", host="localhost"), *FROM_9).connect == 403
    time.sleep(0.2)
    assert (plain.seen.connections, tls.seen.connections) == before


def test_intercept_none_passes_tls_through_and_cannot_see_urls(proxy_none, origin_ca):
    proxy, tls8 = proxy_none
    reply = curl(proxy, tls8.url("/bad/unseen"), "--cacert", str(origin_ca.ca_file), *FROM_9)
    assert reply.status == 200 and reply.body == "origin ok /bad/unseen\n"


def test_fronted_sni_in_a_passed_through_tunnel_ends_it_before_any_upstream_connection(
        proxy_none, origin_ca):
    proxy, tls8 = proxy_none
    before = tls8.seen.connections
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_through_tunnel(proxy, f"127.0.0.8:{tls8.port}", "front.example",
                           origin_ca.ca_file, source="127.0.0.9")
    time.sleep(0.2)
    assert tls8.seen.connections == before
    proxy.wait_event(target="sni", indicator="front.example")


def test_an_event_log_that_fails_later_never_fails_a_request(proxy_none, work, origins):
    proxy, _ = proxy_none
    events = work / "events-none.jsonl"
    events.unlink()
    events.mkdir()  # the log can no longer be written
    try:
        reply = curl(proxy, origins["http"].url("/still", host="localhost"), *FROM_9)
        assert reply.status == 403 and reply.headers["x-atr-event"] in reply.body
        deadline = time.monotonic() + 5
        while "event write failed" not in proxy.log():
            assert time.monotonic() < deadline, proxy.log()[-2000:]
            time.sleep(0.1)
        assert curl(proxy, origins["http"].url("/again", host="localhost"), *FROM_9).status \
            == 403
    finally:
        events.rmdir()


# -- failing closed; not an open proxy ---------------------------------------------------
def test_fail_closed_refuses_until_the_index_can_be_read_and_never_serves_strangers(
        work, origins):
    path = work / "later.db"
    proxy = RunningProxy(work / "p3", {
        "index": str(path),
        "proxy": {"certs": str(work / "certs"), "fail": "closed",
                  "allow_clients": ["127.0.0.1/32"]},
        "events": {"jsonl": str(work / "events-closed.jsonl")},
    })
    try:
        assert "CANNOT READ THE INDEX" in proxy.log()
        url = origins["http"].url("/after", host="localhost")
        reply = curl(proxy, url)
        assert reply.status == 403 and "cannot be read" in reply.body
        stranger = curl(proxy, url, "--interface", "127.0.0.9")
        assert stranger.rc != 0 and stranger.status == 0
        assert "not in proxy.allow_clients" in proxy.log()
        writer = IndexWriter(connect(path))
        add(writer, "threats", [("domain", "evil.example")])
        deadline = time.monotonic() + 3
        while curl(proxy, url).status != 200:
            assert time.monotonic() < deadline, "index not picked up"
            time.sleep(0.1)
        assert curl(proxy, "http://evil.example/").status == 403
        writer.conn.close()
    finally:
        proxy.stop()


# -- plain mitmdump -s; failing open; intercept all; the operator's block page -----------
def test_plain_mitmdump_script_fails_open_then_enforces_with_the_operators_page(
        work, origins, origin_ca):
    page = work / "page.html"
    page.write_text("<html><body><h1>Stop</h1><p id=u>$url</p><p id=e>$event_id</p>"
                    "<p>$indicator/$feed/$module/$time</p></body></html>")
    path = work / "open.db"
    proxy = RunningProxy(work / "p4", {
        "index": str(path),
        "proxy": {"intercept": "all", "block_page": str(page)},
        "events": {"jsonl": str(work / "events-open.jsonl")},
    }, plain_mitmdump=True,
        extra=["--set", f"ssl_verify_upstream_trusted_ca={origin_ca.ca_file}"])
    try:
        url = origins["http"].url("/unchecked", host="localhost")
        assert curl(proxy, url).status == 200  # fail open: passes, loudly
        assert "CANNOT READ THE INDEX" in proxy.log()
        event = proxy.wait_event(verdict="allow")
        assert "unreadable" in event["detail"]
        writer = IndexWriter(connect(path))
        add(writer, "threats", [("domain", "evil.example")])
        deadline = time.monotonic() + 3
        while (reply := curl(proxy, "http://evil.example/<b>", "-g",
                             "-H", "Accept: text/html")).status != 403:
            assert time.monotonic() < deadline, "index not picked up"
            time.sleep(0.1)
        assert "<h1>Stop</h1>" in reply.body and "<p id=u>http://evil.example/&lt;b&gt;</p>" \
            in reply.body and reply.headers["x-atr-event"] in reply.body
        # intercept all: even a host without URL indicators is decrypted
        tls = origins["tls"]
        mitm_ca = work / "p4" / "mitm-confdir" / "mitmproxy-ca-cert.pem"
        assert curl(proxy, tls.url("/decrypted"), "--cacert", str(origin_ca.ca_file)).rc != 0
        decrypted = curl(proxy, tls.url("/decrypted"), "--cacert", str(mitm_ca))
        assert decrypted.status == 200 and decrypted.body == "origin ok /decrypted\n"
        writer.conn.close()
    finally:
        proxy.stop()


def test_a_bad_block_page_template_stops_the_start_with_the_key_named(work):
    page = work / "bad.html"
    page.write_text("<p>$nonsense</p>")
    proxy = RunningProxy(work / "p5", {"index": str(work / "x.db"),
                                       "proxy": {"block_page": str(page)}}, expect_exit=True)
    assert proxy.process.wait(20) == 1
    proxy.stop()
    assert "proxy.block_page" in proxy.log() and "$nonsense" in proxy.log()


def test_an_unwritable_event_log_stops_the_start_with_the_key_named(work):
    (work / "a-file").write_text("not a folder")
    proxy = RunningProxy(work / "p6", {"index": str(work / "y.db"),
                                       "events": {"jsonl": str(work / "a-file" / "ev.jsonl")}},
                         expect_exit=True)
    assert proxy.process.wait(30) == 1
    proxy.stop()
    assert "events.jsonl" in proxy.log() and "cannot write" in proxy.log()
