"""The resolver end to end: real UDP/TCP sockets on loopback, a real index and event
writer, our own authoritative test server as the upstream, dnspython as the client."""

from __future__ import annotations

import socket
import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from atr_proxy.index import IndexWriter, connect

from .conftest import fill
from .dns_authority import Authority
from .dns_harness import ResolverThread

ZONE = """
www.good.test.        300 IN A     192.0.2.1
www.good.test.        300 IN AAAA  2001:db8::1
www.good.test.        300 IN TXT   "hello"
notevil.test.         300 IN A     192.0.2.3
x.exact.test.         300 IN A     192.0.2.4
exact.test.           300 IN A     192.0.2.5
alias.test.           300 IN CNAME mid.test.
mid.test.             300 IN CNAME host.cdn-evil.test.
host.cdn-evil.test.   300 IN A     192.0.2.2
badip.test.           300 IN A     192.0.2.99
badip6.test.          300 IN AAAA  2001:db8::bad
svc.test.             300 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.77
svc6.test.            300 IN HTTPS 1 . alpn=h2 ipv6hint=2001:db8::77
watched.test.         300 IN A     192.0.2.8
excepted.evil.test.   300 IN A     192.0.2.9
short.test.           2   IN A     192.0.2.10
later.test.           300 IN CNAME later-target.test.
later-target.test.    300 IN A     192.0.2.11
tc.test.              300 IN A     192.0.2.12
"""
BIG = "".join(f"big.test. 300 IN A 192.0.2.{i}\n" for i in range(1, 61))


@pytest.fixture
def upstream():
    with Authority(ZONE + BIG) as auth:
        yield auth


@pytest.fixture
def indicators(writer: IndexWriter) -> IndexWriter:
    fill(writer, "bad", [("domain", "evil.test"), ("domain", "cdn-evil.test"),
                         ("ip", "192.0.2.99"), ("ip", "2001:db8::bad"), ("ip", "192.0.2.77"),
                         ("ip", "2001:db8::77"), ("ip", "127.0.0.3")])
    fill(writer, "exactly", [("domain", "exact.test", "exact")])
    fill(writer, "watch", [("domain", "watched.test")], action="monitor")
    return writer


@pytest.fixture
def resolver(index_path, indicators, upstream):
    """A factory: resolver(**dns_settings) -> a started ResolverThread."""
    started = []

    def make(**settings) -> ResolverThread:
        settings.setdefault("upstreams", [("127.0.0.1", upstream.port)])
        r = ResolverThread(index_path, **settings).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


def answers(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


def soa_of(msg: dns.message.Message):
    (rrset,) = [r for r in msg.authority if r.rdtype == dns.rdatatype.SOA]
    return rrset


def ede(msg: dns.message.Message) -> list[tuple[int, str]]:
    return [(e.code, e.text) for e in msg.extended_errors()]


# -- forwarding ------------------------------------------------------------------------
def test_allowed_names_are_answered_by_the_upstream(resolver, upstream):
    r = resolver()
    a = r.ask("www.good.test")
    assert a.rcode() == dns.rcode.NOERROR and answers(a) == ["192.0.2.1"]
    assert answers(r.ask("www.good.test", "AAAA")) == ["2001:db8::1"]
    assert answers(r.ask("www.good.test", "TXT")) == ['"hello"']
    assert r.ask("missing.test").rcode() == dns.rcode.NXDOMAIN
    assert a.flags & dns.flags.RA and not a.flags & dns.flags.AA


def test_answers_echo_the_clients_question_spelling(resolver):
    r = resolver()
    q = dns.message.make_query("WwW.GoOd.TeSt", "A")
    for _ in range(2):  # the second comes from the cache
        a = dns.query.udp(q, "127.0.0.1", port=r.port, timeout=3)
        assert a.question[0].name.to_text() == "WwW.GoOd.TeSt."
        assert answers(a) == ["192.0.2.1"]


def test_edns_passes_through_and_no_opt_comes_back_to_a_client_without_it(resolver, upstream):
    r = resolver()
    q = dns.message.make_query("www.good.test", "A", use_edns=0, want_dnssec=True)
    a = dns.query.udp(q, "127.0.0.1", port=r.port, timeout=3)
    assert a.edns == 0
    assert upstream.asked[-1].edns and upstream.asked[-1].do  # the upstream saw EDNS + DO
    plain = r.ask("www.good.test", edns=False)
    assert plain.edns == -1 and answers(plain) == ["192.0.2.1"]


# -- sinkhole modes --------------------------------------------------------------------
def test_nxdomain_sinkhole_has_an_soa_whose_minimum_is_the_sinkhole_ttl(resolver, upstream):
    r = resolver(sinkhole="nxdomain", sinkhole_ttl=42)
    a = r.ask("www.evil.test")
    assert a.rcode() == dns.rcode.NXDOMAIN and not a.answer
    soa = soa_of(a)
    assert soa.ttl == 42 and soa[0].minimum == 42
    assert upstream.count("www.evil.test") == 0  # never forwarded


def test_nodata_sinkhole(resolver):
    r = resolver(sinkhole="nodata")
    a = r.ask("evil.test", "AAAA")
    assert a.rcode() == dns.rcode.NOERROR and not a.answer
    assert soa_of(a)[0].minimum == 60


def test_null_sinkhole_answers_unspecified_addresses(resolver):
    r = resolver(sinkhole="null", sinkhole_ttl=30)
    a = r.ask("www.evil.test", "A")
    assert answers(a) == ["0.0.0.0"] and a.answer[0].ttl == 30
    assert answers(r.ask("www.evil.test", "AAAA")) == ["::"]
    other = r.ask("www.evil.test", "MX")
    assert other.rcode() == dns.rcode.NOERROR and not other.answer and soa_of(other)


def test_address_sinkhole_answers_the_block_page_host(resolver):
    r = resolver(sinkhole="address", sinkhole_address=("192.0.2.200", "2001:db8::200"))
    assert answers(r.ask("www.evil.test", "A")) == ["192.0.2.200"]
    assert answers(r.ask("www.evil.test", "AAAA")) == ["2001:db8::200"]
    assert not r.ask("www.evil.test", "TXT").answer


def test_address_sinkhole_without_an_ipv6_address_gives_nodata_for_aaaa(resolver):
    r = resolver(sinkhole="address", sinkhole_address=("192.0.2.200",))
    a = r.ask("www.evil.test", "AAAA")
    assert a.rcode() == dns.rcode.NOERROR and not a.answer


def test_refused_sinkhole(resolver):
    r = resolver(sinkhole="refused")
    assert r.ask("www.evil.test").rcode() == dns.rcode.REFUSED


# -- matching --------------------------------------------------------------------------
def test_subdomains_match_on_label_boundaries_only(resolver):
    r = resolver()
    assert r.ask("evil.test").rcode() == dns.rcode.NXDOMAIN
    assert r.ask("a.b.evil.test").rcode() == dns.rcode.NXDOMAIN
    assert r.ask("EVIL.test.").rcode() == dns.rcode.NXDOMAIN
    assert answers(r.ask("notevil.test")) == ["192.0.2.3"]


def test_exact_match_feed_blocks_only_the_name_itself(resolver):
    r = resolver()
    assert r.ask("exact.test").rcode() == dns.rcode.NXDOMAIN
    assert answers(r.ask("x.exact.test")) == ["192.0.2.4"]


def test_a_cname_chain_into_a_listed_domain_is_sinkholed(resolver, upstream):
    r = resolver()
    a = r.ask("alias.test")
    assert a.rcode() == dns.rcode.NXDOMAIN and not a.answer
    assert upstream.count("alias.test") == 1  # it had to be asked to see the chain
    ((code, text),) = ede(a)
    assert code == 15 and "cdn-evil.test" in text and "feed bad" in text


@pytest.mark.parametrize("name,qtype,indicator", [
    ("badip.test", "A", "192.0.2.99"),
    ("badip6.test", "AAAA", "2001:db8::bad"),
    ("svc.test", "HTTPS", "192.0.2.77"),
    ("svc6.test", "HTTPS", "2001:db8::77"),
])
def test_answers_with_listed_addresses_are_sinkholed(resolver, name, qtype, indicator):
    r = resolver()
    a = r.ask(name, qtype)
    assert a.rcode() == dns.rcode.NXDOMAIN and not a.answer
    ((code, text),) = ede(a)
    assert code == 15 and indicator in text


def test_a_listed_client_address_is_sinkholed_whatever_it_asks(resolver):
    r = resolver()
    a = r.ask("www.good.test", source="127.0.0.3")
    assert a.rcode() == dns.rcode.NXDOMAIN
    assert "127.0.0.3" in ede(a)[0][1]
    assert answers(r.ask("www.good.test", source="127.0.0.1")) == ["192.0.2.1"]


# -- EDE, events, monitor, exceptions --------------------------------------------------
def test_ede_names_feed_indicator_and_the_event_that_was_written(resolver):
    r = resolver()
    a = r.ask("www.evil.test")
    ((code, text),) = ede(a)
    assert code == 15  # Blocked
    assert "domain evil.test" in text and "feed bad" in text
    (event,) = r.events_written(traffic="dns")
    assert event["event_id"] in text
    assert event["source"] == "dns" and event["verdict"] == "block"
    assert event["client_ip"] == "127.0.0.1" and event["dest_host"] == "www.evil.test"
    assert event["feed"] == "bad" and event["indicator"] == "evil.test"
    assert event["target"] == "host"


def test_no_opt_and_no_ede_without_edns(resolver):
    a = resolver().ask("www.evil.test", edns=False)
    assert a.rcode() == dns.rcode.NXDOMAIN and a.edns == -1 and not a.extended_errors()


def test_answer_blocks_are_recorded_with_the_address(resolver):
    r = resolver()
    r.ask("badip.test")
    (event,) = r.events_written()
    assert event["target"] == "answer" and event["dest_ip"] == "192.0.2.99"
    assert event["dest_host"] == "badip.test"


def test_monitored_names_get_the_real_answer_and_an_event(resolver):
    r = resolver()
    a = r.ask("watched.test")
    assert answers(a) == ["192.0.2.8"] and not a.extended_errors()
    (event,) = r.events_written()
    assert event["verdict"] == "monitor" and event["feed"] == "watch"


def test_repeats_of_one_block_within_the_window_are_one_event(resolver):
    r = resolver(event_window=30)
    first = ede(r.ask("www.evil.test"))[0][1]
    second = ede(r.ask("www.evil.test"))[0][1]
    assert first == second  # the same event id
    r.ask("other.evil.test")
    assert len(r.events_written()) == 2


def test_window_zero_writes_an_event_for_every_query(resolver):
    r = resolver(event_window=0)
    for _ in range(3):
        r.ask("www.evil.test")
    assert len(r.events_written()) == 3


def test_destination_exception_lets_the_name_through(resolver, indicators):
    indicators.add_exception("destination", "domain", "excepted.evil.test")
    r = resolver()
    assert answers(r.ask("excepted.evil.test")) == ["192.0.2.9"]
    assert r.ask("www.evil.test").rcode() == dns.rcode.NXDOMAIN


def test_source_exception_lets_that_client_through(resolver, indicators):
    indicators.add_exception("source", "ip", "127.0.0.5")
    r = resolver()
    assert r.ask("excepted.evil.test", source="127.0.0.1").rcode() == dns.rcode.NXDOMAIN
    assert answers(r.ask("excepted.evil.test", source="127.0.0.5")) == ["192.0.2.9"]


# -- who may ask ----------------------------------------------------------------------
def test_clients_outside_the_allow_list_are_refused(resolver, upstream):
    r = resolver(allow_clients=("127.0.0.1/32",))
    assert answers(r.ask("www.good.test", source="127.0.0.1")) == ["192.0.2.1"]
    a = r.ask("www.good.test", source="127.0.0.2")
    assert a.rcode() == dns.rcode.REFUSED and not a.answer
    assert ede(a)[0][0] == 18  # Prohibited
    assert r.ask("www.good.test", source="127.0.0.2", tcp=True).rcode() == dns.rcode.REFUSED
    assert upstream.count("www.good.test") == 1


def test_loopback_is_refused_when_only_the_lan_is_allowed(resolver):
    r = resolver(allow_clients=("10.0.0.0/8", "192.168.0.0/16"))
    assert r.ask("www.good.test").rcode() == dns.rcode.REFUSED


def test_rate_limit_refuses_a_client_over_its_rate(resolver):
    r = resolver(rate_limit=5.0)
    codes = [r.ask("www.good.test").rcode() for _ in range(12)]
    assert codes[:5] == [dns.rcode.NOERROR] * 5
    assert dns.rcode.REFUSED in codes[5:]
    assert r.ask("www.good.test", source="127.0.0.2").rcode() == dns.rcode.NOERROR
    time.sleep(0.5)  # the bucket refills
    assert r.ask("www.good.test").rcode() == dns.rcode.NOERROR


# -- truncation and TCP ----------------------------------------------------------------
def test_truncated_upstream_answer_is_retried_over_tcp(resolver, upstream):
    upstream.truncate_udp.add("tc.test")
    r = resolver()
    assert answers(r.ask("tc.test")) == ["192.0.2.12"]
    transports = sorted(a.transport for a in upstream.asked if a.name == "tc.test")
    assert transports == ["tcp", "udp"]


def test_a_big_answer_comes_truncated_over_udp_and_whole_over_tcp(resolver):
    r = resolver()
    small = r.ask("big.test", edns=False)
    assert small.flags & dns.flags.TC and not small.answer
    whole = r.ask("big.test", edns=False, tcp=True)
    assert len(answers(whole)) == 60 and not whole.flags & dns.flags.TC
    with_edns = r.ask("big.test", edns=True)  # 60 A records fit in 1232 bytes
    assert len(answers(with_edns)) == 60


def test_tcp_connection_serves_pipelined_queries(resolver):
    r = resolver()
    names = ["www.good.test", "www.evil.test", "notevil.test", "missing.test"]
    with socket.create_connection(("127.0.0.1", r.port), timeout=3) as s:
        ids = {}
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "A")
            q.id = 1000 + i
            ids[q.id] = name
            wire = q.to_wire()
            s.sendall(len(wire).to_bytes(2, "big") + wire)
        got = {}
        for _ in names:
            size = int.from_bytes(_recv(s, 2), "big")
            a = dns.message.from_wire(_recv(s, size))
            got[ids[a.id]] = a.rcode()
    assert got == {"www.good.test": 0, "www.evil.test": 3, "notevil.test": 0,
                   "missing.test": 3}


def test_an_oversized_tcp_frame_closes_the_connection_and_the_server_goes_on(resolver):
    r = resolver()
    with socket.create_connection(("127.0.0.1", r.port), timeout=3) as s:
        s.sendall(b"\xff\xff" + b"\x00" * 100)
        assert s.recv(10) == b""
    assert answers(r.ask("www.good.test", tcp=True)) == ["192.0.2.1"]


def _recv(s: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


# -- upstream failures -----------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upstream_down_gives_servfail_within_the_timeout_but_blocks_still_answer(resolver):
    r = resolver(upstreams=[("127.0.0.1", _closed_port())], timeout=1.0)
    started = time.monotonic()
    a = r.ask("www.good.test")
    assert a.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 1.5
    assert ede(a)[0][0] == 22  # No Reachable Authority
    assert r.ask("www.evil.test").rcode() == dns.rcode.NXDOMAIN


def test_silent_upstream_gives_servfail_when_the_timeout_runs_out(resolver, upstream):
    upstream.silent = True
    r = resolver(timeout=0.6)
    started = time.monotonic()
    assert r.ask("www.good.test").rcode() == dns.rcode.SERVFAIL
    took = time.monotonic() - started
    assert 0.5 < took < 1.2


def test_failover_to_the_next_upstream(resolver, upstream):
    with Authority() as silent:
        silent.silent = True
        r = resolver(upstreams=[("127.0.0.1", silent.port), ("127.0.0.1", upstream.port)],
                     timeout=2.0)
        assert answers(r.ask("www.good.test")) == ["192.0.2.1"]
        # the silent one is now marked down: the next query goes straight to the good one
        started = time.monotonic()
        assert answers(r.ask("notevil.test")) == ["192.0.2.3"]
        assert time.monotonic() - started < 0.5


# -- cache -----------------------------------------------------------------------------
def test_answers_are_cached_and_ttls_count_down(resolver, upstream):
    r = resolver()
    first = r.ask("www.good.test")
    time.sleep(1.1)
    second = r.ask("www.good.test")
    assert upstream.count("www.good.test", "A") == 1
    assert answers(second) == answers(first)
    assert second.answer[0].ttl < first.answer[0].ttl


def test_cached_answers_expire_with_their_ttl(resolver, upstream):
    r = resolver()
    r.ask("short.test")
    r.ask("short.test")
    assert upstream.count("short.test") == 1
    time.sleep(2.1)
    assert answers(r.ask("short.test")) == ["192.0.2.10"]
    assert upstream.count("short.test") == 2


def test_negative_answers_are_cached_by_the_soa(resolver, upstream):
    r = resolver()
    for _ in range(3):
        assert r.ask("nothing-here.test").rcode() == dns.rcode.NXDOMAIN
    assert upstream.count("nothing-here.test") == 1


def test_servfail_is_not_cached(resolver):
    with Authority() as down:
        down.silent = True
        r = resolver(upstreams=[("127.0.0.1", down.port)], timeout=0.3)
        assert r.ask("www.good.test").rcode() == dns.rcode.SERVFAIL
        down.silent = False
        r.call(lambda: r.server.links["upstream"].servers[0].mark_ok())
        assert r.ask("www.good.test").rcode() != dns.rcode.SERVFAIL


def _eventually(check, seconds: float = 1.0) -> float:
    """Seconds until ``check()`` is true (bounded); fails after ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if check():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"not true within {seconds} s")


def test_a_cached_name_that_becomes_an_indicator_is_sinkholed_within_a_second(
        resolver, index_path, upstream):
    r = resolver()
    assert answers(r.ask("www.good.test")) == ["192.0.2.1"]  # now cached
    w = IndexWriter(connect(index_path))
    fid = w.feed_id("bad")
    w.add_indicator(fid, "domain", "good.test")
    _eventually(lambda: r.ask("www.good.test").rcode() == dns.rcode.NXDOMAIN)
    assert upstream.count("www.good.test") == 1
    w.remove_indicator(w.conn.execute(
        "SELECT id FROM indicators WHERE value='good.test'").fetchone()[0])
    _eventually(lambda: r.ask("www.good.test").rcode() == dns.rcode.NOERROR)


def test_a_cached_cname_target_that_becomes_an_indicator_is_sinkholed(resolver, index_path):
    r = resolver()
    assert answers(r.ask("later.test")) == ["192.0.2.11", "later-target.test."]
    w = IndexWriter(connect(index_path))
    w.add_indicator(w.feed_id("bad"), "domain", "later-target.test")
    _eventually(lambda: r.ask("later.test").rcode() == dns.rcode.NXDOMAIN)
    w.add_indicator(w.feed_id("bad"), "ip", "192.0.2.1")
    _eventually(lambda: r.ask("www.good.test").rcode() == dns.rcode.NXDOMAIN)


# -- bad input -------------------------------------------------------------------------
def _raw(r: ResolverThread, wire: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, ("127.0.0.1", r.port))
        try:
            return s.recv(4096)
        except TimeoutError:
            return None


def test_queries_with_zero_or_two_questions_get_formerr(resolver):
    r = resolver()
    zero = b"\x12\x34\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    reply = _raw(r, zero)
    assert reply[:2] == b"\x12\x34" and reply[3] & 0xF == dns.rcode.FORMERR
    q = dns.message.make_query("www.good.test", "A", use_edns=False).to_wire()
    question = q[12:]
    two = q[:4] + b"\x00\x02" + q[6:] + question
    reply = _raw(r, two)
    assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR


def test_other_opcodes_get_notimp_and_responses_are_dropped(resolver):
    r = resolver()
    q = bytearray(dns.message.make_query("www.good.test", "A", use_edns=False).to_wire())
    q[2] = (q[2] & 0x87) | (4 << 3)  # NOTIFY
    reply = _raw(r, bytes(q))
    assert reply[3] & 0xF == dns.rcode.NOTIMP
    q[2] = 0x80 | (q[2] & 0x07)  # a response, opcode QUERY
    assert _raw(r, bytes(q), timeout=0.3) is None
    assert _raw(r, b"\x00\x01", timeout=0.3) is None
    assert answers(r.ask("www.good.test")) == ["192.0.2.1"]


def test_unknown_edns_version_gets_badvers(resolver):
    r = resolver()
    q = dns.message.make_query("www.good.test", "A", use_edns=1)
    reply = dns.message.from_wire(_raw(r, q.to_wire()))
    assert reply.rcode() == dns.rcode.BADVERS


def test_not_ready_until_the_index_is_loaded(index_path, upstream):
    # an index that does not exist yet: the resolver starts, refuses to forward unchecked
    missing = index_path.parent / "later.db"
    with ResolverThread(missing, upstreams=[("127.0.0.1", upstream.port)], load=False) as r:
        a = r.ask("www.good.test")
        assert a.rcode() == dns.rcode.SERVFAIL and ede(a)[0][0] == 14  # Not Ready
        assert upstream.count("www.good.test") == 0
        w = IndexWriter(connect(missing))
        fill(w, "late", [("domain", "evil.test")])
        _eventually(lambda: r.ask("www.good.test").rcode() == dns.rcode.NOERROR, 3.0)
        assert r.ask("www.evil.test").rcode() == dns.rcode.NXDOMAIN


def test_a_runt_message_on_tcp_is_ignored_and_the_connection_keeps_serving(resolver):
    r = resolver()
    q = dns.message.make_query("www.good.test", "A").to_wire()
    with socket.create_connection(("127.0.0.1", r.port), timeout=3) as s:
        s.sendall(b"\x00\x05abcde" + len(q).to_bytes(2, "big") + q)
        size = int.from_bytes(_recv(s, 2), "big")
        assert answers(dns.message.from_wire(_recv(s, size))) == ["192.0.2.1"]


def test_identical_queries_in_flight_are_asked_upstream_once(resolver, upstream):
    import concurrent.futures

    upstream.delay = 0.3
    r = resolver()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: r.ask("www.good.test"), range(4)))
    assert [answers(a) for a in results] == [["192.0.2.1"]] * 4
    # (dns.query.udp checks that each answer carries its own query's id)
    assert upstream.count("www.good.test") == 1


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_serves_on_ipv6_loopback(resolver):
    r = resolver(listen=("::1", 0))
    q = dns.message.make_query("www.evil.test", "A")
    assert dns.query.udp(q, "::1", port=r.port, timeout=3).rcode() == dns.rcode.NXDOMAIN
    q = dns.message.make_query("www.good.test", "A")
    assert answers(dns.query.tcp(q, "::1", port=r.port, timeout=3)) == ["192.0.2.1"]
    (event,) = r.events_written()
    assert event["client_ip"] == "::1"


def test_the_cache_is_bounded_and_drops_the_least_recently_used(resolver, upstream):
    r = resolver(cache_size=2)
    for name in ("www.good.test", "notevil.test", "www.good.test", "x.exact.test"):
        r.ask(name)  # x.exact.test pushes out notevil.test, the least recently used
    r.ask("www.good.test")
    r.ask("notevil.test")
    assert upstream.count("www.good.test") == 1
    assert upstream.count("notevil.test") == 2
    assert r.call(lambda: len(r.server.links["cache"])) == 2


def test_the_query_log_has_a_line_per_query(resolver, caplog):
    r = resolver(query_log=True)
    with caplog.at_level("INFO", logger="atr_proxy.dns.queries"):
        r.ask("www.good.test")
        r.ask("www.evil.test")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "atr_proxy.dns.queries"]
    assert any("www.good.test A -> NOERROR from upstream" in line for line in lines)
    assert any("www.evil.test A -> NXDOMAIN from sinkhole" in line and "block" in line
               for line in lines)
