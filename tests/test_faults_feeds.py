"""Feed faults against the real worker: one ``atr-proxy sync`` process (worker + admin API)
with one feed per fault, all first synced from good lists, then pointed at a loopback
server that misbehaves in one way each. Every fault is synced at once through the admin
API while a healthy feed changes; the test per fault then checks what an operator sees:
the feed keeps its last good indicators, its status names the fault, the healthy feed
took its update, and the admin API answered quickly the whole time."""

from __future__ import annotations

import gzip
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from atr_proxy.cli import lookup_values
from atr_proxy.index.watch import SnapshotWatcher

from .conftest import api_up
from .feedserver import FeedServer, Route, self_signed_cert
from .support import free_port, stop_process

TOKEN = "fault-suite-token-7f3a"
FEED_TIMEOUT = 1.0
SLOW_STREAM_SECONDS = 30.0  # how long the "endless" stream goes on if nobody stops it


# -- misbehaving answers -------------------------------------------------------------------
def _stall_mid_body(h) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Content-Length", "10000")
    h.end_headers()
    h.wfile.write(b"half-a.example\nhalf-b.example\n")
    h.wfile.flush()
    time.sleep(FEED_TIMEOUT * 4)


def _reset(h) -> None:
    # SO_LINGER 0: close() sends a RST instead of a FIN
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.connection.close()


def _endless_slow_stream(h) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    deadline = time.monotonic() + SLOW_STREAM_SECONDS
    i = 0
    try:
        while time.monotonic() < deadline:  # a line every 0.2 s: never idle long enough
            line = b"slow%d.example\n" % i
            h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            h.wfile.flush()
            i += 1
            time.sleep(0.2)
        h.wfile.write(b"0\r\n\r\n")
    except OSError:
        pass


def _truncated_gzip(h) -> None:
    packed = gzip.compress(b"".join(b"gz%d.example\n" % i for i in range(5000)))
    cut = packed[: len(packed) // 2]
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Content-Encoding", "gzip")
    h.send_header("Content-Length", str(len(cut)))
    h.end_headers()
    h.wfile.write(cut)


BINARY = random.Random(7).randbytes(20000)
INVALID_UTF8 = b"\n".join(bytes([0xC3, 0x28, 0xA0, 0xA1, 0xFF, 0xFE]) * 3 for _ in range(200))

# name: (route or special target, substring of the status that names the fault)
FAULTS: dict[str, tuple[object, str]] = {
    "connect-timeout": ("blackhole", "timed out"),
    "read-timeout": (Route(raw=_stall_mid_body), "timed out"),
    "reset": (Route(raw=_reset), "reset"),
    "http-500": (Route(b"boom", status=500), "HTTP 500"),
    "http-503": (Route(b"busy", status=503, headers={"Retry-After": "120"}), "HTTP 503"),
    "html-page": (Route(b"<!DOCTYPE html><html><body>Please log in</body></html>",
                        content_type="text/html"), "HTML"),
    "truncated-gzip": (Route(raw=_truncated_gzip), "gzip body is truncated"),
    "oversized": (Route(b"big.example\n" * 1000, etag=False), "max_bytes"),  # 12 kB
    "binary": (Route(BINARY, content_type="application/octet-stream"), "not"),
    "empty": (Route(b"", etag=False), "no indicators"),
    "invalid-utf8": (Route(INVALID_UTF8), "undecodable"),
    "slow-stream": (Route(raw=_endless_slow_stream), "timed out"),
    "self-signed": ("tls", "certificate verification failed"),
    "http-401": (Route(b"", auth=("bearer", "right")), "HTTP 401"),
}


def good_list(name: str) -> bytes:
    return f"kept-{name}.example\n".encode() + b"".join(
        b"%s-%d.example\n" % (name.encode(), i) for i in range(20))


class Blackhole:
    """A listening socket whose accept queue is full: further SYNs are dropped, so a
    connect times out (the loopback stand-in for an unreachable host)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):  # fill the queue; later connects hang in SYN_SENT
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(s)
        time.sleep(0.1)

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.sock.close()


def write_config(path: Path, index: Path, feeds: list[dict], admin_port: int) -> Path:
    path.write_text(yaml.safe_dump({
        "index": str(index),
        "feeds": feeds,
        "sync": {"retries": 0, "backoff": 0.01, "concurrency": 4},
        "admin": {"listen": f"127.0.0.1:{admin_port}", "token": "${FAULT_TOKEN}"},
        "events": {"jsonl": str(path.parent / "events.jsonl")},
    }))
    return path


@pytest.fixture(scope="module")
def faulted(tmp_path_factory):
    """Runs the whole scenario once; returns what each parametrised test checks."""
    work = tmp_path_factory.mktemp("feed-faults")
    index = work / "index.db"
    cert, key = self_signed_cert(work)
    env = {**os.environ, "FAULT_TOKEN": TOKEN}
    env.pop("ATR_CONFIG", None)
    env.pop("ATR_INDEX", None)
    admin_port = free_port()
    blackhole = Blackhole()
    with FeedServer() as plain, FeedServer(certfile=cert, keyfile=key) as tls:
        common = {"interval": "1h", "timeout": f"{FEED_TIMEOUT}s", "max_bytes": 65536}
        names = [*FAULTS, "healthy"]
        for name in names:
            plain.add(f"/good/{name}", Route(good_list(name)))
        # 1. every feed good: a one-shot sync of the real command
        first = [{"name": n, "url": plain.url(f"/good/{n}"), "format": "plain", **common}
                 for n in names]
        config_a = write_config(work / "a.yaml", index, first, admin_port)
        once = subprocess.run([sys.executable, "-m", "atr_proxy.cli", "--config", str(config_a),
                               "sync", "--once"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert once.returncode == 0, once.stdout + once.stderr
        # 2. every feed but the healthy one points at its fault; the healthy one grows
        plain.add("/good/healthy", Route(good_list("healthy") + b"fresh-healthy.example\n"))
        second = []
        for name in names:
            feed = dict(first[names.index(name)])
            if name == "oversized":
                feed["max_bytes"] = 1200  # the body is 10x that
            target = FAULTS.get(name, (None,))[0]
            if target == "blackhole":
                feed["url"] = f"http://127.0.0.1:{blackhole.port}/feed.txt"
            elif target == "tls":
                feed["url"] = tls.add("/feed.txt", Route(good_list(name)))
            elif isinstance(target, Route):
                feed["url"] = plain.add(f"/fault/{name}", target)
            second.append(feed)
        config_b = write_config(work / "b.yaml", index, second, admin_port)
        log = open(work / "worker.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "atr_proxy.cli", "--config",
                                 str(config_b), "sync"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{admin_port}"
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                              timeout=30)
        try:
            assert api_up(base, proc), (work / "worker.log").read_text()
            outcomes: dict[str, dict] = {}

            def sync(name: str) -> None:
                outcomes[name] = client.post(f"/api/v1/feeds/{name}/sync").json()

            threads = [threading.Thread(target=sync, args=(n,)) for n in FAULTS]
            started = time.monotonic()
            for t in threads:
                t.start()
            # while the faults are being fetched: the API answers, the healthy feed syncs
            latencies = []
            healthy_took = None
            for i in range(40):
                t0 = time.monotonic()
                assert client.get("/api/v1/feeds").status_code == 200
                latencies.append(time.monotonic() - t0)
                if i == 2:
                    sync("healthy")
                    healthy_took = time.monotonic() - t0
                time.sleep(0.1)
            for t in threads:
                t.join(60)
            all_took = time.monotonic() - started
            rows = {r["name"]: r for r in client.get("/api/v1/feeds").json()["feeds"]}
            health_after = client.get("/api/v1/health").status_code
        finally:
            client.close()
            stop_process(proc)
            log.close()
            blackhole.close()
    watcher = SnapshotWatcher(index)
    try:
        values = [f"kept-{n}.example" for n in names] + ["fresh-healthy.example"]
        verdicts = {r["value"]: r["verdict"] for r in lookup_values(watcher.load(), values)}
    finally:
        watcher.close()
    return {"outcomes": outcomes, "rows": rows, "verdicts": verdicts, "latencies": latencies,
            "healthy_took": healthy_took, "all_took": all_took, "health_after": health_after,
            "log": (work / "worker.log").read_text(errors="replace")}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_feed_fault_keeps_the_last_good_list_and_names_the_fault(faulted, fault):
    _, reason = FAULTS[fault]
    outcome, row = faulted["outcomes"][fault], faulted["rows"][fault]
    assert outcome["status"] == "error", outcome
    assert reason.lower() in (outcome["error"] or "").lower(), outcome["error"]
    assert row["status"] == "error" and reason.lower() in row["last_error"].lower()
    assert row["indicator_count"] == 21  # the last good list, whole
    assert faulted["verdicts"][f"kept-{fault}.example"] == "block"


def test_other_feeds_keep_syncing_and_the_api_stays_responsive_during_the_faults(faulted):
    assert faulted["rows"]["healthy"]["status"] == "ok"
    assert faulted["rows"]["healthy"]["indicator_count"] == 22
    assert faulted["verdicts"]["fresh-healthy.example"] == "block"
    # the healthy feed waited at most for a slot (4 at once; every fault ends in its timeout)
    assert faulted["healthy_took"] < 4 * FEED_TIMEOUT + 3, faulted["healthy_took"]
    assert max(faulted["latencies"]) < 1.0, faulted["latencies"]
    assert faulted["health_after"] == 200
    assert "Traceback" not in faulted["log"]


def test_faults_end_within_their_timeouts(faulted):
    # 14 faults, 4 at a time, each ending within its timeout (or at once); the endless
    # stream ends at the transfer budget (10 x timeout) instead of when the server stops
    assert faulted["all_took"] < 10 * FEED_TIMEOUT + 4 * (FEED_TIMEOUT + 1) + 5, \
        faulted["all_took"]
    assert faulted["all_took"] < SLOW_STREAM_SECONDS
    print(json.dumps({"all_faults_took_s": round(faulted["all_took"], 2),
                      "api_p_max_ms": round(max(faulted["latencies"]) * 1000, 1)}))
