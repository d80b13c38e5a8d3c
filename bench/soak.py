"""Bounded soak: the real ``atr-proxy dns`` and ``atr-proxy proxy`` under steady load while
the index changes every 10 s; everything on loopback, every loop ends by the deadline.

    python bench/soak.py [--seconds 600] [--dns-qps 200] [--http-rps 20]
    (env ATR_SOAK_SECONDS overrides the default duration; ``make soak`` runs it)

Each window of 10 s prints one line: DNS queries, lost (no answer in 2 s), wrong answers,
p50/p99; proxy requests, errors, p50/p99; RSS of both; the change applied to the index and
whether the DNS enforced it within the window. The last lines compare the end with the
start: zero errors, no lost queries, RSS within 10 %, p99 stable. Exit status 1 if not.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import dns.message
import dns.rcode
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atr_proxy.index import FeedSpec, IndexWriter, connect  # noqa: E402
from tests.dns_authority import Authority  # noqa: E402
from tests.dns_harness import RunningResolver  # noqa: E402
from tests.proxy_harness import Origin, RunningProxy  # noqa: E402

WINDOW = 10.0
BASE = 20_000  # indicators in the index from the start


def rss_kib(pid: int) -> int:
    """RSS of a process and its children (mitmdump runs under ``atr-proxy proxy``)."""
    total = 0
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                pids.append(int(entry))
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.latencies: list[float] = []
        self.count = self.errors = self.lost = 0
        self.samples: list[str] = []

    def take(self) -> tuple[list[float], int, int, int, list[str]]:
        with self.lock:
            out = (self.latencies, self.count, self.errors, self.lost, self.samples)
            self.reset()
            return out

    def add(self, latency: float | None, ok: bool, what: str = "") -> None:
        with self.lock:
            self.count += 1
            if latency is None:
                self.lost += 1
            else:
                self.latencies.append(latency)
            if not ok:
                self.errors += 1
                if len(self.samples) < 3:
                    self.samples.append(what)


def sinkholed(reply: dns.message.Message) -> bool:
    """Our sinkhole (NXDOMAIN with an EDE option), not the upstream's own NXDOMAIN."""
    return reply.rcode() == dns.rcode.NXDOMAIN and any(o.otype == 15 for o in reply.options)


def dns_load(port: int, qps: float, deadline: float, stats: Stats, stop: threading.Event
             ) -> None:
    rng = random.Random(1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    interval = 1.0 / qps
    next_at = time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline:
        blocked = rng.random() < 0.3
        name = (f"x{rng.randrange(10**6)}.b{rng.randrange(BASE)}.soak-bad.test" if blocked
                else "www.good.test")
        q = dns.message.make_query(name, "A", use_edns=0)
        t0 = time.perf_counter()
        sock.sendto(q.to_wire(), ("127.0.0.1", port))
        try:
            while True:
                data = sock.recv(4096)
                reply = dns.message.from_wire(data)
                if reply.id == q.id:
                    break
            right = sinkholed(reply) if blocked else reply.rcode() == dns.rcode.NOERROR
            stats.add(time.perf_counter() - t0, right,
                      f"{name}: {dns.rcode.to_text(reply.rcode())}")
        except (TimeoutError, OSError):
            stats.add(None, False, f"{name}: no answer in 2 s")
        except Exception as exc:  # a malformed answer is an error too
            stats.add(time.perf_counter() - t0, False, f"{name}: {exc}")
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    sock.close()


def http_load(proxy_url: str, origin: Origin, rps: float, deadline: float, stats: Stats,
              stop: threading.Event) -> None:
    rng = random.Random(2)
    interval = 1.0 / rps
    next_at = time.monotonic()
    with httpx.Client(proxy=proxy_url, timeout=5.0) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            blocked = rng.random() < 0.3
            url = (f"http://b{rng.randrange(BASE)}.soak-bad.test/x" if blocked
                   else origin.url(f"/ok/{rng.randrange(1000)}"))
            t0 = time.perf_counter()
            try:
                status = client.get(url).status_code
                stats.add(time.perf_counter() - t0, status == (403 if blocked else 200),
                          f"{url}: {status}")
            except httpx.HTTPError as exc:
                stats.add(time.perf_counter() - t0, False, f"{url}: {type(exc).__name__}")
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float,
                    default=float(os.environ.get("ATR_SOAK_SECONDS", "600")))
    ap.add_argument("--dns-qps", type=float, default=200.0)
    ap.add_argument("--http-rps", type=float, default=20.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atr-soak-"))
    index = work / "index.db"
    writer = IndexWriter(connect(index))
    base = writer.upsert_feed(FeedSpec(name="base", module="third_party", action="block"))
    for i in range(BASE):
        writer.add_indicator(base, "domain", f"b{i}.soak-bad.test")
    churn = writer.upsert_feed(FeedSpec(name="churn", module="third_party", action="block"))
    origin = Origin("127.0.0.1")
    proxy = resolver = None
    ok = True
    try:
        with Authority("www.good.test. 300 IN A 192.0.2.1\n") as auth:
            resolver = RunningResolver(["--index", str(index)], work / "dns.log",
                                       dns_args=["--upstream", f"127.0.0.1:{auth.port}"])
            port, dns_proc = resolver.port, resolver.process
            proxy = RunningProxy(work / "proxy", {
                "index": str(index), "proxy": {"certs": str(work / "certs")},
                "events": {"jsonl": str(work / "events.jsonl")}})
            started = time.monotonic()
            deadline = started + args.seconds
            stop = threading.Event()
            dstats, hstats = Stats(), Stats()
            threads = [
                threading.Thread(target=dns_load, args=(port, args.dns_qps, deadline, dstats,
                                                        stop), daemon=True),
                threading.Thread(target=http_load, args=(proxy.url, origin, args.http_rps,
                                                         deadline, hstats, stop), daemon=True),
            ]
            for t in threads:
                t.start()
            print(f"soak: {args.seconds:.0f} s, DNS {args.dns_qps:.0f} q/s, proxy"
                  f" {args.http_rps:.0f} req/s, index {BASE} indicators + churn every"
                  f" {WINDOW:.0f} s; work dir {work}", flush=True)
            rows = []
            live: list[int] = []
            window = 0
            while time.monotonic() < deadline - 0.5:
                window += 1
                # the change of this window: 200 new names, the oldest 200 removed
                names = [f"c{window}-{i}.soak-churn.test" for i in range(200)]
                for name in names:
                    live.append(writer.add_indicator(churn, "domain", name))
                while len(live) > 1000:
                    writer.remove_indicator(live.pop(0))
                changed = time.monotonic()
                picked = None
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(1.0)
                    for _ in range(40):  # is the change enforced yet? (bounded)
                        probe = dns.message.make_query(names[-1], "A", use_edns=0)
                        s.sendto(probe.to_wire(), ("127.0.0.1", port))
                        try:
                            if sinkholed(dns.message.from_wire(s.recv(4096))):
                                picked = time.monotonic() - changed
                                break
                        except (TimeoutError, OSError):
                            pass
                        time.sleep(0.1)
                time.sleep(max(0.0, min(deadline, started + window * WINDOW)
                               - time.monotonic()))
                d_lat, d_n, d_err, d_lost, d_samples = dstats.take()
                h_lat, h_n, h_err, h_lost, h_samples = hstats.take()
                row = {
                    "t": round(time.monotonic() - started), "dns": d_n, "dns_err": d_err,
                    "dns_lost": d_lost, "dns_p50": pct(d_lat, 0.5), "dns_p99": pct(d_lat, 0.99),
                    "http": h_n, "http_err": h_err, "http_p50": pct(h_lat, 0.5),
                    "http_p99": pct(h_lat, 0.99), "dns_rss": rss_kib(dns_proc.pid) / 1024,
                    "proxy_rss": rss_kib(proxy.process.pid) / 1024, "pickup": picked,
                }
                rows.append(row)
                print(f"t={row['t']:>4}s dns {d_n} err {d_err} lost {d_lost}"
                      f" p50 {row['dns_p50']:.2f} p99 {row['dns_p99']:.2f} ms |"
                      f" proxy {h_n} err {h_err} p50 {row['http_p50']:.1f}"
                      f" p99 {row['http_p99']:.1f} ms | rss dns {row['dns_rss']:.1f}"
                      f" proxy {row['proxy_rss']:.1f} MiB | change enforced in "
                      + (f"{picked:.2f} s" if picked is not None else "NOT within 4 s")
                      + (f" | samples {d_samples + h_samples}" if d_err or h_err else ""),
                      flush=True)
            stop.set()
            for t in threads:
                t.join(10)
    finally:
        if proxy is not None:
            proxy.stop()
        if resolver is not None:
            resolver.stop()
        origin.close()
        writer.conn.close()
    if len(rows) < 3:
        print("too short for figures: run at least 30 s")
        return 1
    # warm-up: the first window (imports, first snapshot, caches) is left out of baselines
    first, last = rows[1:1 + max(1, len(rows) // 4)], rows[-max(1, len(rows) // 4):]
    total = {k: sum(r[k] for r in rows) for k in ("dns", "dns_err", "dns_lost", "http",
                                                    "http_err")}
    missed = sum(1 for r in rows if r["pickup"] is None)

    def growth(key: str) -> float:
        a = statistics.median(r[key] for r in first)
        b = statistics.median(r[key] for r in last)
        return (b - a) / a * 100

    def p99(rs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    figures = [
        ("dns queries", total["dns"], ""), ("dns wrong answers", total["dns_err"], ""),
        ("dns lost", total["dns_lost"], ""), ("proxy requests", total["http"], ""),
        ("proxy errors", total["http_err"], ""),
        ("index changes not enforced within 4 s", missed, f"of {len(rows)}"),
        ("dns rss growth", round(growth("dns_rss"), 1), "% (first quarter -> last quarter)"),
        ("proxy rss growth", round(growth("proxy_rss"), 1), "%"),
        ("dns p99 first/last quarter", f"{p99(first, 'dns_p99'):.2f}/{p99(last, 'dns_p99'):.2f}",
         "ms"),
        ("proxy p99 first/last quarter",
         f"{p99(first, 'http_p99'):.1f}/{p99(last, 'http_p99'):.1f}", "ms"),
    ]
    for name, value, unit in figures:
        print(f"{name}: {value} {unit}".rstrip())
    ok = (total["dns_err"] == total["dns_lost"] == total["http_err"] == 0 and missed == 0
          and abs(growth("dns_rss")) <= 10 and abs(growth("proxy_rss")) <= 10
          and p99(last, "dns_p99") <= 2 * p99(first, "dns_p99") + 1
          and p99(last, "http_p99") <= 2 * p99(first, "http_p99") + 5)
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
