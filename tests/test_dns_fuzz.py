"""Malformed input against the running resolver: thousands of random and mutated
packets over UDP and TCP, then a valid query must still be answered."""

from __future__ import annotations

import socket
import time

import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import fill
from .dns_authority import Authority
from .dns_harness import ResolverThread


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def running(index_path, writer):
    fill(writer, "bad", [("domain", "evil.test"), ("ip", "192.0.2.66")])
    with Authority("www.good.test. 300 IN A 192.0.2.1\n") as auth, \
            ResolverThread(index_path, upstreams=[("127.0.0.1", auth.port)],
                           timeout=0.5) as r:
        yield r


def still_answers(r: ResolverThread) -> None:
    assert r.ask("www.good.test").rcode() == dns.rcode.NOERROR
    assert r.ask("www.evil.test").rcode() == dns.rcode.NXDOMAIN
    assert r.ask("www.good.test", tcp=True).rcode() == dns.rcode.NOERROR
    assert r.server.stats.errors == 0  # no link raised on any of it


VALID = dns.message.make_query("www.good.test", "A", use_edns=0).to_wire()


def test_random_udp_packets_then_a_valid_query_is_answered(running):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = []

    @fuzz(2500)
    @given(st.one_of(
        st.binary(max_size=600),
        # a plausible header in front of random bytes: reaches the question parser
        st.binary(min_size=1, max_size=300).map(lambda b: VALID[:2] + b"\x01\x00\x00\x01"
                                                + b"\x00" * 6 + b),
        # a valid query with some bytes changed, cut short or extended
        st.tuples(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                           max_size=6), st.integers(0, len(VALID) + 20),
                  st.binary(max_size=20)).map(_mutate),
    ))
    def send(packet: bytes) -> None:
        sock.sendto(packet, ("127.0.0.1", running.port))
        sent.append(packet)
        if len(sent) % 200 == 0:
            time.sleep(0.01)  # let the server drain its socket buffer

    try:
        send()
    finally:
        sock.close()
    assert len(sent) >= 2000
    still_answers(running)


def _mutate(spec: tuple[list[tuple[int, int]], int, bytes]) -> bytes:
    changes, cut, tail = spec
    data = bytearray(VALID)
    for pos, value in changes:
        data[pos] = value
    return bytes(data[:cut]) + tail


def test_random_tcp_streams_then_a_valid_query_is_answered(running):
    count = []

    @fuzz(1500)
    @given(st.lists(st.one_of(
        st.binary(max_size=200),                                  # anything at all
        st.binary(max_size=300).map(lambda b: len(b).to_bytes(2, "big") + b),  # framed
        st.tuples(st.integers(0, 65535), st.binary(max_size=50)).map(  # a lying length
            lambda t: t[0].to_bytes(2, "big") + t[1]),
        st.just(len(VALID).to_bytes(2, "big") + VALID),           # a real query among them
    ), min_size=1, max_size=4))
    def stream(chunks: list[bytes]) -> None:
        with socket.create_connection(("127.0.0.1", running.port), timeout=2) as s:
            for chunk in chunks:
                try:
                    s.sendall(chunk)
                except OSError:  # the server closed on us: that is allowed
                    break
            try:  # read whatever comes back until the server closes (bounded by the timeout)
                s.shutdown(socket.SHUT_WR)
                for _ in range(50):
                    if not s.recv(65535):
                        break
            except OSError:
                pass
        count.append(1)

    stream()
    assert len(count) >= 1200
    still_answers(running)
