"""Prometheus ``/metrics`` of the admin app, scraped over real HTTP and parsed with
prometheus-client's own parser."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atr_proxy import config
from atr_proxy.admin.api import create_app
from atr_proxy.events import Event, EventWriter
from atr_proxy.index import IndexWriter, connect
from tests.conftest import fill
from tests.dns_authority import Authority
from tests.dns_harness import ResolverThread
from tests.operator_harness import AdminHttp
from tests.proxy_harness import CURL, Origin, RunningProxy, curl


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def hit(i: int, **fields: object) -> Event:
    base = dict(event_id=f"m{i:019d}", at=time.time(), source="proxy", traffic="forwarded",
                action="block", verdict="block", module="third_party", feed="bad",
                indicator="evil.example", kind="domain", target="host", client_ip="127.0.0.9")
    base.update(fields)
    return Event(**base)


@pytest.fixture
def served(tmp_path: Path):
    index = tmp_path / "index.db"
    writer = IndexWriter(connect(index))
    fill(writer, "bad", [("domain", "evil.example"), ("url", "bad.example/x/"),
                         ("ip", "192.0.2.0/24"), ("ip", "2001:db8::/32")])
    fill(writer, "vendor", [("domain", "c2.example")], module="xops")
    events = EventWriter(index, None)
    settings = config.from_mapping({"index": str(index), "events": {"jsonl": None}})
    server = AdminHttp(create_app(settings, index_path=index, token="t", events=events))
    yield server, writer, events
    server.close()
    events.close()


def test_metrics_show_indicators_verdicts_sync_and_snapshot(served) -> None:
    server, writer, events = served
    events.emit([hit(1), hit(2, source="dns", traffic="dns"),
                 hit(3, action="monitor", verdict="monitor", feed="vendor", module="xops",
                     indicator="c2.example")])
    events.flush()
    feed_id = writer.feed_id("bad")
    writer.set_feed_status(feed_id, status="ok", last_attempt=100.0, last_success=100.0,
                           duration=0.25)
    first = scrape(server.url)
    assert first[("atr_indicators", (("feed", "bad"), ("kind", "ip"),
                                     ("module", "third_party")))] == 2
    assert first[("atr_indicators", (("feed", "vendor"), ("kind", "domain"),
                                     ("module", "xops")))] == 1
    assert first[("atr_feed_enabled", (("feed", "bad"), ("module", "third_party")))] == 1
    assert first[("atr_feed_sync_ok", (("feed", "bad"), ("module", "third_party")))] == 1
    assert first[("atr_feed_last_sync_duration_seconds",
                  (("feed", "bad"), ("module", "third_party")))] == 0.25
    proxy_block = ("atr_verdicts_total", (("feed", "bad"), ("module", "third_party"),
                                          ("source", "proxy"), ("traffic", "forwarded"),
                                          ("verdict", "block")))
    assert first[proxy_block] == 1
    assert first[("atr_verdicts_total", (("feed", "vendor"), ("module", "xops"),
                                         ("source", "proxy"), ("traffic", "forwarded"),
                                         ("verdict", "monitor")))] == 1
    assert first[("atr_verdicts_total", (("feed", "bad"), ("module", "third_party"),
                                         ("source", "dns"), ("traffic", "dns"),
                                         ("verdict", "block")))] == 1
    generation = first[("atr_index_generation", ())]
    assert generation > 0
    assert first[("atr_snapshot_indicators", (("process", "admin"),))] == 5

    # a failed sync, two more blocks and a new indicator between two scrapes
    writer.set_feed_status(feed_id, status="error", last_attempt=200.0, duration=1.5,
                           last_error="HTTP 500")
    events.emit([hit(4), hit(5)])
    events.emit(Event("msystem000000000000", time.time(), "admin", "system", "monitor",
                      "allow", detail="supervisor: dns exited"))
    events.flush()
    writer.add_indicator(feed_id, "domain", "new.example")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        second = scrape(server.url)
        if second[("atr_snapshot_generation", (("process", "admin"),))] > generation:
            break
        time.sleep(0.1)
    assert second[proxy_block] == 3
    assert second[("atr_feed_sync_failures_total", (("feed", "bad"),))] == 1
    assert second[("atr_feed_sync_attempts_total", (("feed", "bad"), ("status", "error")))] == 1
    assert second[("atr_feed_sync_duration_seconds_sum", (("feed", "bad"),))] == 1.5
    assert second[("atr_feed_sync_ok", (("feed", "bad"), ("module", "third_party")))] == 0
    assert second[("atr_system_events_total", (("source", "admin"),))] == 1
    assert second[("atr_index_generation", ())] > generation
    assert second[("atr_snapshot_lag_generations", (("process", "admin"),))] == 0
    assert second[("atr_snapshot_indicators", (("process", "admin"),))] == 6
    assert second[("atr_snapshot_reload_seconds", (("process", "admin"),))] >= 0
    # no client address is ever a label
    assert "127.0.0.9" not in httpx.get(server.url + "/metrics").text


def test_metrics_count_every_request_and_query_checked_by_a_real_proxy_and_resolver(
        served, tmp_path: Path) -> None:
    if not Path(CURL).exists():
        pytest.skip("needs curl")
    server, _writer, _events = served
    index = tmp_path / "index.db"
    n = 5
    checks = {("proxy", "system"): 0, ("dns", "dns"): 0}

    def wanted(metrics: dict) -> dict[tuple[str, str], float]:
        return {key: metrics.get(("atr_checks_total", (("source", key[0]),
                                                       ("traffic", key[1]))), 0)
                for key in checks}

    origin = Origin("127.0.0.1")
    proxy = RunningProxy(tmp_path / "p", {"index": str(index),
                                          "events": {"jsonl": str(tmp_path / "events.jsonl")}})
    try:
        for _ in range(n):  # none of them hits anything: no event, but each was checked
            assert curl(proxy, origin.url("/fine")).status == 200
        with Authority("www.good.test. 300 IN A 203.0.113.1\n") as auth, \
                ResolverThread(index, upstreams=[("127.0.0.1", auth.port)]) as resolver:
            for _ in range(n):
                assert [r.to_text() for a in resolver.ask("www.good.test").answer
                        for r in a] == ["203.0.113.1"]
        deadline = time.monotonic() + 5  # the proxy's writer adds them within 0.25 s
        while time.monotonic() < deadline:
            checks = wanted(scrape(server.url))
            if all(v >= n for v in checks.values()):
                break
            time.sleep(0.1)
    finally:
        proxy.stop()
        origin.close()
    assert checks[("proxy", "system")] >= n  # curl from loopback: the proxy's own machine
    assert checks[("dns", "dns")] == n       # cached after the first, still checked each time
    assert not [e for e in proxy.events() if e.get("module")]  # and no hit was recorded
    stored = connect(index).execute(
        "SELECT source, traffic, value FROM counters WHERE name = 'checks'").fetchall()
    assert ("dns", "dns", n) in stored
