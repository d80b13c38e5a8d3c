"""Hostile input: a flood of random and mutated DNS packets at the real listeners, hostile
requests and names through the real proxy (block page, JSON lines, ``atr-proxy events``),
and every feed parser on big random inputs with its memory measured.

``ATR_SOAK_PACKETS`` sets the DNS packet count (100,000 by default: ~5 s).
test_dns_fuzz.py holds the hypothesis-driven DNS cases; these are bulk counts."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
import tracemalloc
from pathlib import Path

import dns.rcode
import pytest

from atr_proxy.errors import RejectedFile
from atr_proxy.feeds.formats import FORMATS, parse

from .conftest import ROOT, atr_cli, fill
from .proxy_harness import CURL, RunningProxy, curl
from .test_dns_fuzz import VALID, running, still_answers  # noqa: F401 - the fixture

PACKETS = int(os.environ.get("ATR_SOAK_PACKETS", "100000"))


def packets(rng: random.Random, count: int):
    """Random bytes, a plausible header over random bytes, and mutated valid queries."""
    qname_at = 12
    for i in range(count):
        pick = i % 4
        if pick == 0:
            yield rng.randbytes(rng.randrange(0, 600))
        elif pick == 1:
            yield VALID[:2] + b"\x01\x00\x00\x01" + b"\x00" * 6 + rng.randbytes(
                rng.randrange(0, 300))
        elif pick == 2:
            data = bytearray(VALID)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            yield bytes(data[: rng.randrange(len(data) + 1)]) + rng.randbytes(rng.randrange(8))
        else:  # label lengths and compression pointers pointing anywhere
            yield VALID[:qname_at] + bytes([0xC0 | rng.randrange(64), rng.randrange(256)]) \
                + rng.randbytes(rng.randrange(12))


def test_dns_flood_of_random_and_mutated_packets_then_a_valid_query_is_answered(running):  # noqa: F811
    rng = random.Random(int(os.environ.get("ATR_SOAK_SEED", "7")))
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for n, packet in enumerate(packets(rng, PACKETS)):
            sock.sendto(packet, ("127.0.0.1", running.port))
            if n % 200 == 199:
                time.sleep(0.005)  # let the server drain its socket buffer
    streams = max(50, PACKETS // 50)
    for n, packet in enumerate(packets(rng, streams)):
        with socket.create_connection(("127.0.0.1", running.port), timeout=2) as s:
            frame = packet if n % 2 else len(packet).to_bytes(2, "big") + packet
            try:
                s.sendall(frame)
                s.shutdown(socket.SHUT_WR)
                for _ in range(20):
                    if not s.recv(65535):
                        break
            except OSError:
                pass  # the server closed on us: allowed
    took = time.monotonic() - started
    still_answers(running)  # and stats.errors == 0
    print(f"dns_flood udp={PACKETS} tcp_streams={streams} seconds={took:.1f}")


# -- the proxy -----------------------------------------------------------------------------
HOSTILE_PATHS = [
    "/<script>alert(1)</script>",
    "/%3Cscript%3Ealert(2)%3C/script%3E",
    "/\"><img src=x onerror=alert(3)>",
    "/a?q=</dd><script>alert(4)</script>",
    "/" + "A" * 8000,
    "/%00%0d%0aSet-Cookie:%20x=1",
    "/\u202eevil\u0000",
]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    if not Path(CURL).exists():
        pytest.skip("needs curl")
    from atr_proxy.index import IndexWriter, connect
    work = tmp_path_factory.mktemp("hostile-proxy")
    writer = IndexWriter(connect(work / "index.db"))
    fill(writer, "threats", [("domain", "evil.example")])
    writer.conn.close()
    started = RunningProxy(work / "p", {
        "index": str(work / "index.db"), "proxy": {"certs": str(work / "certs")},
        "events": {"jsonl": str(work / "events.jsonl")}})
    yield started
    started.stop()


def raw(proxy: RunningProxy, data: bytes, *, half_close: bool = False) -> bytes:
    """Send ``data`` and read until the proxy closes (or 3 s of silence)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=3) as s:
        s.sendall(data)
        if half_close:  # for requests that never end: mitmproxy then drops the client
            s.shutdown(socket.SHUT_WR)
        out = b""
        for _ in range(100):
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        return out


def test_hostile_urls_are_escaped_in_the_block_page_events_and_cli(proxy):
    for path in HOSTILE_PATHS:
        request = (f"GET http://evil.example{path} HTTP/1.1\r\nHost: evil.example\r\n"
                   "Accept: text/html\r\nConnection: close\r\n\r\n").encode()
        answer = raw(proxy, request).decode("utf-8", "replace")
        head, _, body = answer.partition("\r\n\r\n")
        if not answer:  # a raw NUL or bidi character in the request line: closed unanswered
            assert any(ord(c) < 32 or ord(c) > 126 for c in path), path
            continue
        if not head.startswith("HTTP/1.1 403"):  # mitmproxy may refuse the request itself
            assert head.startswith("HTTP/1.1 4"), head[:200]
            continue
        assert "Set-Cookie" not in head
        for needle in ("<script>alert", "<img src=x", "onerror=alert(3)>"):
            assert needle not in body, (path, body[:400])
    events = proxy.events()
    assert events, proxy.log()[-2000:]
    for event in events:  # every line of the JSON-lines file is one valid object
        assert isinstance(event, dict) and event["dest_host"] == "evil.example"
    text = proxy.events_file.read_text()
    assert "\u0000" not in text and "\r" not in text
    out = subprocess.run(atr_cli() + ["--config", str(proxy.config_file), "events"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "\x00" not in out.stdout and "\x1b" not in out.stdout


def test_malformed_requests_and_huge_headers_get_an_error_and_the_proxy_lives_on(proxy):
    cases = [
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET http:// HTTP/1.1\r\n\r\n",
        b"GET http://evil.example/ HTTP/9.9\r\nHost: evil.example\r\n\r\n",
        b"CONNECT evil.example HTTP/1.1\r\n\r\n",                # no port
        b"CONNECT [::1:443 HTTP/1.1\r\n\r\n",
        b"GET http://" + b"a." * 200 + b"example/ HTTP/1.1\r\n\r\n",  # a 400-byte name
        b"GET http://xn--/ HTTP/1.1\r\nHost: xn--\r\n\r\n",
        b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nX-Big: "
        + b"h" * 200_000 + b"\r\n\r\n",                           # a 200 kB header
        b"GET http://evil.example/ HTTP/1.1\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n",
        b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nContent-Length: -1\r\n\r\n",
        b"GET http://evil.example/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET http://évil.example/ HTTP/1.1\r\n\r\n".encode("latin-1"),
    ]
    for request in cases:
        answer = raw(proxy, request, half_close=True)
        # an error status or a closed connection; never a 2xx, never a crash
        assert not answer.startswith(b"HTTP/1.1 2"), (request[:80], answer[:200])
    assert proxy.process.poll() is None
    reply = curl(proxy, "http://evil.example/still")
    assert reply.status == 403
    assert "Traceback" not in proxy.log()


def test_dashboard_script_writes_text_never_markup():
    for script in (ROOT / "atr_proxy" / "admin" / "static").glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval("):
            assert sink not in text, f"{script.name} uses {sink}"


# -- the feed parsers: bounded memory on big random input ----------------------------------
def random_inputs(rng: random.Random, size: int) -> list[bytes]:
    line_parts = [b"evil.example", b"0.0.0.0 ", b"||x^", b"*.", b"http://a/b", b"{", b"}",
                  b"[", b"]", b'"', b",", b":", b"\t", b"#", b"CNAME .", b"10.0.0.0/8",
                  b"\xc3\xa9", b"\xff", b" ", b"\\", b"'"]
    shaped = bytearray()
    while len(shaped) < size:
        shaped += b"".join(rng.choice(line_parts) for _ in range(rng.randrange(1, 6))) + b"\n"
    deep_json = b"[" * (size // 4) + b"]" * (size // 4)
    wide_json = json.dumps({"data": [{"ioc": f"x{i}.example"} for i in
                                     range(size // 40)]}).encode()
    return [bytes(shaped), rng.randbytes(size), deep_json, wide_json[:size]]


@pytest.mark.parametrize("fmt", [f for f in FORMATS])
def test_each_parser_on_big_random_input_keeps_memory_bounded(fmt):
    rng = random.Random(hash(fmt) & 0xFFFF)
    size = int(os.environ.get("ATR_SOAK_PARSE_BYTES", "400000"))
    for data in random_inputs(rng, size):
        tracemalloc.start()
        try:
            try:
                result = parse(data, fmt, source="fuzz")
                kept = result.accepted if hasattr(result, "accepted") else None
            except (RejectedFile, RecursionError):
                kept = None
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        del kept
        # the decoded text, its lines and what was kept: a small multiple of the input
        assert peak < 40 * max(len(data), 100_000), (fmt, len(data), peak)


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(2)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_dns_tcp_connections_past_the_cap_and_idle_ones_are_closed_udp_unaffected(
        running, monkeypatch):  # noqa: F811
    """Exhausting the TCP listener: connections past the cap are closed at once, idle and
    half-sent ones after the idle timeout (shortened here), and UDP answers throughout; once
    they are gone a TCP query is answered again."""
    from atr_proxy.dns import server as dns_server

    monkeypatch.setattr(dns_server, "MAX_TCP_CLIENTS", 24)
    monkeypatch.setattr(dns_server, "TCP_IDLE_SECONDS", 1.0)
    held = []
    try:
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", running.port), timeout=5)
            if i % 2:
                s.sendall(b"\x00\x40\x12")  # a frame started, never finished (slowloris)
            held.append(s)
        time.sleep(0.3)
        assert running.server.stats.tcp_connections == 24
        assert sum(closed_by_server(s) for s in held[24:]) == 16  # past the cap: at once
        assert running.ask("www.good.test").rcode() == dns.rcode.NOERROR  # UDP meanwhile
        deadline = time.monotonic() + 5
        while running.server.stats.tcp_connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running.server.stats.tcp_connections == 0  # the idle ones timed out
        assert all(closed_by_server(s) for s in held[:24])
    finally:
        for s in held:
            s.close()
    still_answers(running)
