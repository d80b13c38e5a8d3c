"""Real-browser tests: headless Chromium through the proxy of a running ``atr-proxy run``.

The browser gets a fresh profile and a proxy configuration (a PAC file in a data: URL)
that sends the demo's reserved names to the atr-proxy proxy and everything else to a
loopback sink. Plain ``--proxy-server`` would also route Chromium's own calls home
(update.googleapis.com, clients2.google.com, accounts.google.com: seen here even with
every "quiet" flag), and the proxy would resolve and forward those off this machine.
Screenshots go to tests/artifacts/; the assertions are on the page's DOM.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time

import pytest

from atr_proxy.events import Event, EventWriter
from tests.browser_harness import Browser, chromium_path
from tests.operator_harness import shared_run

pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="needs chromium (make deps-operator)")

HOSTILE = '<img src=x onerror="window.pwned=1">evil.example'


class Sink:
    """A loopback 'proxy' that refuses everything: where the browser's own calls go."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(50)
        self.sock.settimeout(0.3)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.settimeout(1)
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def atr_run(pytestconfig, tmp_path_factory):
    return shared_run(pytestconfig, tmp_path_factory)


@pytest.fixture(scope="module")
def browser(atr_run):
    sink = Sink()
    pac = f"""function FindProxyForURL(url, host) {{
  if (dnsDomainIs(host, ".example") || dnsDomainIs(host, ".test"))
    return "PROXY 127.0.0.1:{atr_run.proxy_port}";
  if (host == "127.0.0.1" || host == "localhost") return "DIRECT";
  return "PROXY 127.0.0.1:{sink.port}";
}}"""
    pac_url = "data:application/x-ns-proxy-autoconfig;base64," + base64.b64encode(
        pac.encode()).decode()
    b = Browser(extra=(f"--proxy-pac-url={pac_url}",
                       # the browser itself resolves nothing: the proxy does
                       "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost ,"
                       " EXCLUDE 127.0.0.1"))
    yield b
    b.close()
    sink.close()


def test_blocked_url_renders_the_block_page(browser, atr_run) -> None:
    page = browser.page()
    page.navigate("http://www.malware.example/download/setup.exe")
    page.wait_for("document.getElementById('atr-indicator')")
    dom = page.evaluate("""(() => ({
        title: document.title,
        heading: document.querySelector('h1').textContent,
        url: document.getElementById('atr-url').textContent,
        indicator: document.getElementById('atr-indicator').textContent,
        feed: document.getElementById('atr-feed').textContent,
        event: document.getElementById('atr-event').textContent,
    }))()""")
    shot = page.screenshot("block-page.png")
    assert dom["heading"] == "This page was blocked"
    assert dom["url"] == "http://www.malware.example/download/setup.exe"
    assert dom["indicator"].startswith("malware.example")
    assert dom["feed"] == "demo-plain"
    assert "www.malware.example" in dom["title"]
    status, data = atr_run.api("GET", "/api/v1/events?source=proxy&limit=200")
    assert dom["event"] in {e["event_id"] for e in data["events"]}
    assert shot.stat().st_size > 5000


def test_dashboard_shows_feeds_and_events_after_a_block(browser, atr_run) -> None:
    # a DNS block to find in the dashboard, and an event carrying markup in its host name
    assert "NXDOMAIN" in atr_run.dig("ads.tracker.example")
    writer = EventWriter(atr_run.state / "atr-index.db", None)
    writer.emit(Event("0hostile0000000000", time.time(), "proxy", "forwarded", "block", "block",
                      "third_party", "demo-hosts", "evil.example", "domain", "host",
                      "127.0.0.1", HOSTILE, None, 80, "http://x/" + HOSTILE, None))
    writer.close()

    page = browser.page()
    page.navigate(f"{atr_run.admin}/ui/")
    page.wait_for("document.getElementById('login-form')")
    page.evaluate(f"""(() => {{ document.getElementById('token').value = {json.dumps(
        atr_run.token)}; document.getElementById('login-form').submit(); return 1; }})()""")
    page.wait_for("document.body && document.body.dataset.loaded === '1'")
    page.wait_for("document.querySelector('#events-table')"
                  ".textContent.includes('ads.tracker.example')")
    page.wait_for("document.querySelector('#chart svg rect')")
    dom = page.evaluate("""(() => {
        const rows = (id) => [...document.querySelectorAll(id + ' tbody tr')]
            .map((tr) => [...tr.children].map((td) => td.textContent));
        return {
          feeds: rows('#feeds-table'), events: rows('#events-table'),
          cards: document.getElementById('cards').textContent,
          pwned: window.pwned === 1,
          eventImages: document.querySelectorAll('#events-table img').length,
          bars: document.querySelectorAll('#chart svg rect').length,
          topBlocked: document.getElementById('top-blocked').textContent,
        };
    })()""")
    feeds = {row[0]: row for row in dom["feeds"]}
    assert {"demo-plain", "demo-hosts", "demo-adblock", "demo-suspicious", "demo-c2",
            "mdr"} <= set(feeds)
    assert feeds["demo-c2"][1] == "xops" and feeds["demo-plain"][5] == "7"
    assert feeds["demo-suspicious"][3] == "monitor"
    assert feeds["demo-plain"][8] == "ok"
    dns_rows = [r for r in dom["events"] if "ads.tracker.example" in r[4]]
    assert dns_rows and dns_rows[0][1] == "block" and dns_rows[0][2] == "dns / dns"
    assert dns_rows[0][6] == "demo-hosts [third_party]"
    hostile = [r for r in dom["events"] if "onerror" in r[4]]
    assert hostile and HOSTILE in hostile[0][4]  # shown as text ...
    assert not dom["pwned"] and dom["eventImages"] == 0  # ... never as markup
    assert dom["bars"] >= 1 and "malware.example" in dom["topBlocked"]
    page.screenshot("dashboard.png")

    # one click: "except destination" on the DNS block
    clicked = page.evaluate("""(() => {
        const row = [...document.querySelectorAll('#events-table tbody tr')]
            .find((tr) => tr.children[4].textContent.includes('ads.tracker.example'));
        const button = [...row.querySelectorAll('button')]
            .find((b) => b.textContent === 'except destination');
        button.click();
        return true;
    })()""")
    assert clicked
    page.wait_for("document.getElementById('exceptions-table')"
                  ".textContent.includes('ads.tracker.example')")
    notice = page.evaluate("document.getElementById('notice').textContent")
    assert "Exception" in notice and "ads.tracker.example" in notice
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        answer = atr_run.dig("ads.tracker.example")
        if "NXDOMAIN" not in answer:
            break
        time.sleep(0.1)
    assert "NXDOMAIN" not in answer  # forwarded upstream now (which, here, never answers)
    page.screenshot("dashboard-exception.png")
