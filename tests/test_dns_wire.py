"""The hot-path wire code reads and writes what dnslib and dnspython do.

dnslib builds the messages (it is the reference for the wire format); dnspython, a strict
parser, checks the messages we make. Property tests cover random names, record mixes,
compression and EDNS."""

from __future__ import annotations

import ipaddress
import struct

import dns.flags
import dns.message
import dns.rcode
import pytest
from dnslib import AAAA, CNAME, EDNS0, HTTPS, MX, QTYPE, RR, SOA, TXT, A, DNSRecord, EDNSOption
from hypothesis import given, settings
from hypothesis import strategies as st

from atr_proxy.dns import wire
from atr_proxy.dns.cache import Entry, cache_ttl, make_entry

LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
NAME = st.lists(LABEL, min_size=1, max_size=5).map(".".join)
QTYPES = st.sampled_from(["A", "AAAA", "CNAME", "MX", "TXT", "HTTPS", "SOA", "NS", "PTR"])
V4 = st.integers(0, 2**32 - 1)
V6 = st.integers(0, 2**128 - 1).filter(lambda v: v >> 32 != 0xFFFF)


def query_bytes(name: str, qtype: str = "A", *, edns: bool = False, do: bool = False,
                ident: int = 0x1234) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = ident
    if edns or do:
        q.add_ar(EDNS0(udp_len=4096, flags="do" if do else ""))
    return q.pack()


# -- queries ---------------------------------------------------------------------------
@given(name=NAME, qtype=QTYPES, edns=st.booleans(), do=st.booleans(), upper=st.booleans())
def test_parse_query_reads_what_dnslib_writes(name, qtype, edns, do, upper):
    data = query_bytes(name.upper() if upper else name, qtype, edns=edns, do=do)
    q = wire.parse_query(data)
    assert q.id == 0x1234 and q.qname == name.lower()
    assert q.qtype == getattr(QTYPE, qtype) and q.qclass == 1
    assert q.edns == (edns or do) and q.do == do
    assert q.question == data[12:q.qend]


def test_root_query_has_an_empty_name():
    assert wire.parse_query(query_bytes(".", "NS")).qname == ""


@pytest.mark.parametrize("data,rcode", [
    (b"\x00\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", wire.FORMERR),  # no question
    (query_bytes("a.test")[:4] + b"\x00\x02" + query_bytes("a.test")[6:], wire.FORMERR),
    (query_bytes("a.test") + b"junk", wire.FORMERR),
    (query_bytes("a.test")[:-2], wire.FORMERR),  # truncated question
    (bytes([0, 1, 0x20, 0]) + query_bytes("a.test")[4:], wire.NOTIMP),  # opcode 4 NOTIFY
    (query_bytes("a.test")[:12] + b"\xc0\x0c\x00\x01\x00\x01", wire.FORMERR),  # pointer
    (query_bytes("a.test", "AXFR"), wire.NOTIMP),
])
def test_bad_queries_are_errors_with_the_right_rcode(data, rcode):
    with pytest.raises(wire.BadQuery) as info:
        wire.parse_query(data)
    assert info.value.rcode == rcode
    reply = dns.message.from_wire(wire.error_reply(info.value), question_only=True)
    assert reply.rcode() == rcode and reply.id == int.from_bytes(data[:2], "big")


def test_responses_and_runts_are_dropped():
    with pytest.raises(wire.Drop):
        wire.parse_query(b"\x00\x01\x81\x00")
    response = bytearray(query_bytes("a.test"))
    response[2] |= 0x80
    with pytest.raises(wire.Drop):
        wire.parse_query(bytes(response))


def test_edns_version_one_is_badvers():
    q = DNSRecord.question("a.test")
    q.add_ar(EDNS0(version=1, udp_len=1232))
    with pytest.raises(wire.BadQuery) as info:
        wire.parse_query(q.pack())
    reply = dns.message.from_wire(wire.error_reply(info.value))
    assert reply.rcode() == dns.rcode.BADVERS


# -- answers we build ------------------------------------------------------------------
@given(name=NAME, rcode=st.sampled_from([0, 2, 3, 5]), edns=st.booleans(),
       text=st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=60))
def test_build_reply_is_a_valid_message_with_the_ede(name, rcode, edns, text):
    q = wire.parse_query(query_bytes(name, "A", edns=edns))
    data = wire.build_reply(q, rcode, ede=(15, text))
    msg = dns.message.from_wire(data)
    assert msg.id == q.id and msg.rcode() == rcode and msg.flags & dns.flags.QR
    assert msg.question[0].name.to_text(omit_final_dot=True).lower() == name.lower()
    if edns:
        assert [(e.code, e.text or "") for e in msg.extended_errors()] == [(15, text)]
    else:
        assert msg.edns == -1


def test_truncated_keeps_the_question_and_sets_tc():
    q = wire.parse_query(query_bytes("big.test", edns=True))
    big = wire.build_reply(q, 0, b"".join(wire.rr_at_question(1, 60, bytes(4))
                                          for _ in range(200)), 200)
    msg = dns.message.from_wire(wire.truncated(q, big))
    assert msg.flags & dns.flags.TC and not msg.answer and msg.edns == 0


# -- replies we read -------------------------------------------------------------------
RECORD = st.one_of(
    st.tuples(st.just("A"), V4, st.integers(0, 10**6)),
    st.tuples(st.just("AAAA"), V6, st.integers(0, 10**6)),
    st.tuples(st.just("CNAME"), NAME, st.integers(0, 10**6)),
    st.tuples(st.just("MX"), NAME, st.integers(0, 10**6)),
    st.tuples(st.just("TXT"), st.text(max_size=30), st.integers(0, 10**6)),
    st.tuples(st.just("HTTPS"), st.lists(V4, max_size=3), st.integers(0, 10**6)),
    st.tuples(st.just("HTTPS6"), st.lists(V6, max_size=2), st.integers(0, 10**6)),
    st.tuples(st.just("SVCB"), st.lists(V4, min_size=1, max_size=2), st.integers(0, 10**6)),
)


def _rr(owner: str, kind: str, value, ttl: int) -> tuple[RR, list, list]:
    """A dnslib record and the (names, addrs) a scan must find in it."""
    if kind == "A":
        return RR(owner, QTYPE.A, ttl=ttl, rdata=A(str(ipaddress.IPv4Address(value)))), [], \
            [(4, value)]
    if kind == "AAAA":
        return RR(owner, QTYPE.AAAA, ttl=ttl, rdata=AAAA(str(ipaddress.IPv6Address(value)))), \
            [], [(6, value)]
    if kind == "CNAME":
        return RR(owner, QTYPE.CNAME, ttl=ttl, rdata=CNAME(value)), [value], []
    if kind == "MX":
        return RR(owner, QTYPE.MX, ttl=ttl, rdata=MX(value)), [], []
    if kind == "TXT":
        return RR(owner, QTYPE.TXT, ttl=ttl, rdata=TXT(value.encode())), [], []
    if kind in ("HTTPS", "SVCB"):
        params = [(1, b"\x02h2")]
        if value:
            params.append((4, b"".join(struct.pack("!I", v) for v in value)))
        rtype = QTYPE.HTTPS if kind == "HTTPS" else 64
        return RR(owner, rtype, ttl=ttl, rdata=HTTPS(1, [], params)), [], \
            [(4, v) for v in value]
    # HTTPS6: an alias-mode target name and ipv6hint
    params = [(6, b"".join(v.to_bytes(16, "big") for v in value))] if value else []
    return RR(owner, QTYPE.HTTPS, ttl=ttl, rdata=HTTPS(1, [b"svc", b"test"], params)), \
        ["svc.test"], [(6, v) for v in value]


@settings(max_examples=300)
@given(qname=NAME, records=st.lists(RECORD, max_size=8), soa=st.booleans(),
       soa_ttls=st.tuples(st.integers(0, 10**5), st.integers(0, 10**5)), edns=st.booleans())
def test_scan_reply_finds_what_dnslib_packed(qname, records, soa, soa_ttls, edns):
    reply = DNSRecord.question(qname).reply()
    names, addrs, ttls = [], [], []
    for kind, value, ttl in records:
        rr, n, a = _rr(qname, kind, value, ttl)
        reply.add_answer(rr)
        names += n
        addrs += a
        ttls.append(ttl)
    if soa:
        reply.add_auth(RR(qname, QTYPE.SOA, ttl=soa_ttls[0], rdata=SOA(
            "ns." + qname, "hostmaster." + qname, (1, 2, 3, 4, soa_ttls[1]))))
    if edns:
        reply.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(10, b"12345678")]))
    data = reply.pack()
    scan = wire.scan_reply(data)
    assert scan.names == names
    assert scan.addrs == addrs
    assert scan.min_ttl == (min(ttls) if ttls else None)
    assert scan.negative_ttl == (min(soa_ttls) if soa else None)
    assert (scan.opt is not None) == edns
    read = [struct.unpack_from("!I", data, off)[0] for off in scan.ttl_offsets]
    assert read == ttls + ([soa_ttls[0]] if soa else [])


def test_dname_targets_and_mapped_addresses_are_read():
    reply = DNSRecord.question("x.old.test").reply()
    reply.add_answer(RR("old.test", 39, ttl=60, rdata=CNAME("new.test")))  # DNAME
    reply.add_answer(RR("x.new.test", QTYPE.AAAA, ttl=60, rdata=AAAA("::ffff:c000:201")))
    scan = wire.scan_reply(reply.pack())
    assert scan.names == ["new.test"] and scan.addrs == [(4, 0xC0000201)]


def test_a_compression_loop_is_an_error_not_a_hang():
    data = bytearray(DNSRecord.question("a.test").reply().pack())
    data[7] = 1  # one answer record whose owner name points at itself
    at = len(data)
    data += bytes([0xC0 | (at >> 8), at & 0xFF]) + b"\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x02"
    data += bytes([0xC0 | (at >> 8), at & 0xFF])
    with pytest.raises(wire.WireError):
        scan = wire.scan_reply(bytes(data))
        wire.read_name(bytes(data), scan.qend)


@given(st.binary(max_size=300))
@settings(max_examples=2000)
def test_random_bytes_never_break_the_readers(data):
    try:
        wire.parse_query(data)
    except (wire.Drop, wire.BadQuery):
        pass
    try:
        wire.scan_reply(data)
    except wire.WireError:
        pass


# -- cache entries ---------------------------------------------------------------------
def _entry(qname: str, now: float) -> tuple[bytes, Entry]:
    reply = DNSRecord.question(qname).reply()
    reply.add_answer(*RR.fromZone(f"{qname} 300 IN CNAME b.test.\nb.test. 100 IN A 192.0.2.7"))
    reply.add_ar(EDNS0(udp_len=4096))
    data = reply.pack()
    scan = wire.scan_reply(data)
    return data, make_entry(data, scan, now, cache_ttl(scan))


def test_cache_entry_rebuilds_the_answer_with_ttls_counted_down():
    data, entry = _entry("a.test", 1000.0)
    assert entry.expires == 1100.0  # the smallest answer TTL
    q = wire.parse_query(query_bytes("A.Test", edns=False, ident=7))
    msg = dns.message.from_wire(entry.reply_for(q, 1030.5))
    assert msg.id == 7 and msg.question[0].name.to_text() == "A.Test."
    assert [rr.ttl for rr in msg.answer] == [270, 70]
    assert msg.edns == -1  # no OPT for a client without EDNS
    q2 = wire.parse_query(query_bytes("a.test", edns=True, do=True))
    msg2 = dns.message.from_wire(entry.reply_for(q2, 1000.0))
    assert msg2.edns == 0 and msg2.ednsflags & dns.flags.DO
    assert [rr.ttl for rr in msg2.answer] == [300, 100]


def test_what_is_not_cached():
    def scan_of(build) -> wire.Scan:
        reply = DNSRecord.question("a.test").reply()
        build(reply)
        return wire.scan_reply(reply.pack())

    assert cache_ttl(scan_of(lambda r: setattr(r.header, "rcode", 2))) == 0  # SERVFAIL
    assert cache_ttl(scan_of(lambda r: setattr(r.header, "rcode", 3))) == 0  # no SOA
    assert cache_ttl(scan_of(lambda r: setattr(r.header, "tc", 1))) == 0
    assert cache_ttl(scan_of(lambda r: r.add_answer(*RR.fromZone("a.test. 0 A 1.2.3.4")))) == 0
    neg = scan_of(lambda r: (setattr(r.header, "rcode", 3), r.add_auth(
        *RR.fromZone("test. 900 SOA ns.test. h.test. 1 2 3 4 120"))))
    assert cache_ttl(neg) == 120  # RFC 2308: min(SOA TTL, SOA minimum)
