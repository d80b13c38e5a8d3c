"""The proxy's parts on their own: host forms, client networks, the block page, verdicts
over a real index, the address cache, and the addon's hooks driven by mitmproxy's own test
helpers (an exception inside a hook, failing open and closed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from atr_proxy import config
from atr_proxy.errors import ConfigError
from atr_proxy.events import Event
from atr_proxy.proxy.blockpage import BlockPage
from atr_proxy.proxy.enforcer import (
    Enforcer,
    HostSet,
    Networks,
    canonical_host,
    checkable_url,
    traffic_of,
)
from atr_proxy.proxy.resolver import AddressCache

from .conftest import fill


def event(**fields) -> Event:
    base = dict(event_id="0123abcd", at=0.0, source="proxy", traffic="system", action="block",
                verdict="block", module="third_party", feed="f", indicator="evil.example",
                kind="domain", target="host", client_ip="127.0.0.1",
                dest_host="evil.example", url="http://evil.example/")
    return Event(**{**base, **fields})


# -- host forms and networks ------------------------------------------------------------
@pytest.mark.parametrize("raw, canonical", [
    ("evil.example", "evil.example"),
    ("WWW.Evil.Example.", "www.evil.example"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("127.0.0.1", "127.0.0.1"),
    ("[::1]", "::1"),
    ("::FFFF:127.0.0.1", "::ffff:127.0.0.1"),
    ("<script>", None),
    ("", None),
    (None, None),
])
def test_host_is_canonicalised_once_like_indicators_are(raw, canonical):
    assert canonical_host(raw) == canonical


def test_default_allowed_clients_are_loopback_and_private_only():
    allowed = Networks(config.ProxySettings().allow_clients)
    for inside in ("127.0.0.1", "127.8.9.10", "10.1.2.3", "192.168.1.5", "::1",
                   "::ffff:192.168.1.5", "fd00::5"):
        assert inside in allowed, inside
    for outside in ("8.8.8.8", "2001:db8::1", "100.128.0.1", None, "not-an-address"):
        assert outside not in allowed, outside


def test_no_intercept_covers_names_under_it():
    hosts = HostSet(["bank.example", "*.pinned.example", "192.0.2.7"])
    assert hosts.covers("bank.example") and hosts.covers("www.bank.example")
    assert hosts.covers("app.pinned.example") and hosts.covers("192.0.2.7")
    assert not hosts.covers("notbank.example") and not hosts.covers("192.0.2.8")


def test_loopback_clients_are_system_traffic_others_forwarded():
    assert traffic_of("127.0.0.1") == traffic_of("::1") == "system"
    assert traffic_of("192.168.1.20") == traffic_of("fd00::1") == "forwarded"


# -- block page -------------------------------------------------------------------------
def test_block_page_escapes_every_value_for_browsers():
    page = BlockPage().render(event(url='http://evil.example/"><script>x</script>',
                                    indicator="<b>evil</b>", feed="f&g"),
                              accept="text/html,*/*")
    html = page.body.decode()
    assert page.content_type.startswith("text/html")
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "&lt;b&gt;evil&lt;/b&gt;" in html and "f&amp;g" in html
    assert "0123abcd" in html and "1970-01-01 00:00:00 UTC" in html


def test_block_page_is_plain_text_for_other_clients_without_control_characters():
    page = BlockPage().render(event(url="http://evil.example/\x1b[31mred"), accept="*/*")
    text = page.body.decode()
    assert page.content_type.startswith("text/plain")
    assert "\x1b" not in text and "\\x1b[31mred" in text
    assert "Event id:  0123abcd" in text and "Feed:      f" in text


def test_operator_template_replaces_the_page_and_bad_placeholders_are_refused(tmp_path):
    good = tmp_path / "page.html"
    good.write_text("<h1>$feed</h1><p>$url</p><p>$$5</p>")
    body = BlockPage(good).render(event(), accept="text/html").body.decode()
    assert body == "<h1>f</h1><p>http://evil.example/</p><p>$5</p>"
    bad = tmp_path / "bad.html"
    bad.write_text("<p>${event}</p>")
    with pytest.raises(ConfigError, match=r"proxy.block_page: .*unknown placeholder \$event"):
        BlockPage(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        BlockPage(tmp_path / "missing.html")


# -- verdicts over a real index ---------------------------------------------------------
def make_enforcer(tmp_path: Path, **proxy) -> Enforcer:
    settings = config.from_mapping({"index": str(tmp_path / "index.db"), "proxy": proxy,
                                    "events": {"jsonl": str(tmp_path / "events.jsonl")}})
    enforcer = Enforcer(settings)
    enforcer.start()
    return enforcer


def test_an_exception_for_one_name_never_excuses_another(index_path, writer, tmp_path):
    fill(writer, "f", [("domain", "evil.example"), ("domain", "cdn.example"),
                       ("ip", "192.0.2.10")])
    writer.add_exception("destination", "domain", "cdn.example")
    enforcer = make_enforcer(tmp_path)
    try:
        assert enforcer.judge("10.0.0.1", [("cdn.example", "host", None)]).action == "allow"
        fronted = enforcer.judge("10.0.0.1", [("cdn.example", "host", None),
                                              ("evil.example", "sni", None)])
        assert fronted.blocked and fronted.decisive.target == "sni"
        assert [e.value for _, e in fronted.excepted] == ["cdn.example"]
        # the excepted name's own address is excepted with it
        assert enforcer.judge("10.0.0.1", [("cdn.example", "host", None)],
                              ["192.0.2.10"]).action == "allow"
        assert enforcer.judge("10.0.0.1", [("other.example", "host", None)],
                              ["192.0.2.10"]).blocked
    finally:
        enforcer.close()


def test_a_padded_url_still_hits_its_path_prefix(index_path, writer, tmp_path):
    fill(writer, "u", [("url", "evil.example/kit/")])
    enforcer = make_enforcer(tmp_path)
    try:
        url = "http://evil.example/kit/" + "%" * 4000 + "?" + "q" * 5000
        verdict = enforcer.judge(None, [("evil.example", "host", checkable_url(url))])
        assert verdict.blocked and verdict.decisive.indicator == "evil.example/kit/"
    finally:
        enforcer.close()


def test_tls_is_decrypted_only_where_urls_can_be_seen_and_never_for_pinned_hosts(
        index_path, writer, tmp_path):
    fill(writer, "u", [("url", "shop.example/bad/"), ("url", "bank.example/phish/")])
    auto = make_enforcer(tmp_path, no_intercept=["bank.example"])
    every = make_enforcer(tmp_path / "a", intercept="all", no_intercept=["bank.example"])
    never = make_enforcer(tmp_path / "n", intercept="none")
    try:
        assert auto.should_intercept("www.shop.example", None)
        assert not auto.should_intercept("news.example", "news.example")
        assert not auto.should_intercept("bank.example", None)  # pinned: passed through
        assert every.should_intercept("news.example", None)
        assert not every.should_intercept("www.bank.example", None)
        assert not never.should_intercept("shop.example", None)
    finally:
        for enforcer in (auto, every, never):
            enforcer.close()


def test_failing_closed_refuses_everything_until_the_index_is_read(tmp_path):
    closed = make_enforcer(tmp_path, fail="closed")
    opened = make_enforcer(tmp_path / "o", fail="open")
    try:
        assert closed.refusing_all and closed.judge("127.0.0.1", [("a.example", "host", None)]
                                                    ).blocked
        assert not opened.refusing_all
        assert opened.judge("127.0.0.1", [("a.example", "host", None)]).action == "allow"
        assert not (tmp_path / "index.db").exists()  # events never create an empty index
    finally:
        closed.close()
        opened.close()


# -- address cache ----------------------------------------------------------------------
async def test_addresses_are_resolved_once_and_shared():
    cache = AddressCache(ttl=30)
    assert cache.get("localhost") is None
    first, second = await asyncio.gather(cache.resolve("localhost"), cache.resolve("localhost"))
    assert first == second and "127.0.0.1" in first
    assert cache.get("localhost") == first
    expired = AddressCache(ttl=-1)
    await expired.resolve("localhost")
    assert expired.get("localhost") is None


# -- the addon's hooks, as mitmproxy calls them -----------------------------------------
@pytest.fixture
def addon_with(tmp_path):
    from mitmproxy.test import taddons

    from atr_proxy.proxy.addon import AtrFilter

    made = []

    def start(**proxy):
        cfg = tmp_path / f"atr{len(made)}.yaml"
        cfg.write_text(yaml.safe_dump({"index": str(tmp_path / "index.db"), "proxy": proxy,
                                       "events": {"jsonl": str(tmp_path / "events.jsonl")}}))
        addon = AtrFilter()
        context = taddons.context(addon)
        context.configure(addon, atr_config=str(cfg))
        made.append(addon)
        return addon

    yield start
    for addon in made:
        addon.done()


def broken(*args, **kwargs):
    raise RuntimeError("a bug in a check")


@pytest.mark.parametrize("fail", ["open", "closed"])
def test_an_exception_in_a_hook_never_escapes_and_follows_proxy_fail(addon_with, index_path,
                                                                     writer, fail, caplog):
    from mitmproxy import tls
    from mitmproxy.options import Options
    from mitmproxy.proxy import server_hooks
    from mitmproxy.proxy.context import Context
    from mitmproxy.test import tflow

    fill(writer, "f", [("domain", "evil.example")])
    addon = addon_with(fail=fail)
    addon.enforcer.judge = broken
    flow = tflow.tflow()
    flow.request.host = "fine.example"
    addon.requestheaders(flow)  # must not raise
    assert "a bug in a check" in caplog.text
    if fail == "open":
        assert flow.response is None
    else:
        assert flow.response.status_code == 403
        assert b"proxy.fail is closed" in flow.response.content

    data = server_hooks.ServerConnectionHookData(server=tflow.tserver_conn(),
                                                 client=tflow.tclient_conn())
    data.server.address = ("192.0.2.1", 443)
    addon.server_connect(data)
    assert (data.server.error is not None) == (fail == "closed")

    hello = tls.ClientHelloData(context=Context(tflow.tclient_conn(), Options()),
                                client_hello=None)  # one the gate cannot read
    addon.tls_clienthello(hello)
    assert hello.ignore_connection  # open: passed through untouched; closed: refused
    assert addon.enforcer.errors == 3


def test_hooks_answer_from_the_index(addon_with, index_path, writer):
    from mitmproxy.test import tflow

    fill(writer, "f", [("domain", "evil.example")])
    addon = addon_with()
    flow = tflow.tflow()
    flow.request.host = "www.evil.example"
    addon.requestheaders(flow)
    assert flow.response.status_code == 403
    assert flow.response.headers["Cache-Control"] == "no-store"
    assert flow.metadata["atr_event"] == flow.response.headers["X-ATR-Event"]
    connect = tflow.tflow()
    connect.request.method = "CONNECT"
    connect.request.host = "evil.example"
    addon.http_connect(connect)
    assert connect.response.status_code == 403
