"""Matcher benchmark: index build, snapshot load, delta, memory, request check, GC, import.

Usage: python bench/bench_matcher.py [--domains N] [--urls N] [--ips N] [--workdir DIR]

Prints one line per figure, each with its target where the issue sets one. The request
check is shown next to a bare dict-membership baseline measured in the same run. Every
phase that measures memory or load time runs in a fresh interpreter so that figures do
not include the generator's own garbage.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def line(name: str, value: str, target: str = "") -> None:
    print(f"{name:<44} {value:>18}  {target}".rstrip(), flush=True)


def domain(i: int) -> str:
    return f"d{i:x}.{'abcdefghij'[i % 10]}{i % 997}.example"


def url(i: int) -> str:
    return f"h{i % 250_000:x}.example.net/p/{i:x}/file.exe"


def ip(i: int) -> str:
    if i % 10 == 0:  # a tenth are ranges of varied length
        return f"100.{64 + (i >> 16) % 64}.{(i >> 8) & 255}.0/{(24, 20, 16, 28)[i % 4]}"
    return f"198.{18 + (i >> 16) % 2}.{(i >> 8) & 255}.{i & 255}"


# -- phases run in a child interpreter --------------------------------------------------
def phase_build(index: str, n_domains: int, n_urls: int, n_ips: int) -> dict:
    from atr_proxy.index import FeedSpec, IndexWriter, connect

    class Item:
        __slots__ = ("kind", "value", "match", "expires_at")

        def __init__(self, kind, value):
            self.kind, self.value, self.match, self.expires_at = kind, value, None, None

    started = time.perf_counter()
    writer = IndexWriter(connect(index))
    for name, kind, make, count in (("domains", "domain", domain, n_domains),
                                    ("urls", "url", url, n_urls), ("ips", "ip", ip, n_ips)):
        feed = writer.upsert_feed(FeedSpec(name=name, type=kind))
        writer.replace_feed(feed, (Item(kind, make(i)) for i in range(count)))
    return {"seconds": time.perf_counter() - started}


def phase_load(index: str) -> dict:
    import numpy  # noqa: F401  (a dependency of the package: part of the baseline)

    import atr_proxy.index.watch as watch_mod  # noqa: F401  (imported before the baseline)
    from atr_proxy.index.watch import SnapshotWatcher

    gc.collect()
    base = rss_bytes()
    watcher = SnapshotWatcher(index)
    started, cpu = time.perf_counter(), time.process_time()
    snap = watcher.load()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    watcher.close()
    gc.collect()
    return {"seconds": seconds, "cpu": cpu, "count": snap.count(),
            "rss_growth": rss_bytes() - base,
            "rss": rss_bytes()}


def phase_check(index: str, n: int) -> dict:
    from atr_proxy.index import FeedSpec, IndexWriter, connect
    from atr_proxy.index.watch import SnapshotWatcher

    watcher = SnapshotWatcher(index)
    snap = watcher.load()
    gc.freeze()
    rng = random.Random(7)
    requests = []
    for i in range(n):
        host = f"www.m{rng.randrange(1 << 30):x}.example.org"
        requests.append((f"10.{i % 200}.{(i >> 8) & 255}.{i & 255}", host,
                         f"http://{host}/index.html?q={i}", f"203.0.113.{i % 250}"))
    # baseline: four dict look-ups per request
    table = {domain(i): i for i in range(1000)}
    batch = 1000

    def timed(fn) -> list[float]:
        per_call = []
        for start in range(0, n, batch):
            chunk = requests[start:start + batch]
            t0 = time.perf_counter_ns()
            for c, h, u, d in chunk:
                fn(c, h, u, d)
            per_call.append((time.perf_counter_ns() - t0) / len(chunk) / 1000)
        return per_call

    def bare(c, h, u, d):
        return (c in table) or (h in table) or (u in table) or (d in table)

    check = snap.check
    pauses = []
    state = {}

    def gc_cb(phase, info):
        if phase == "start":
            state["t"] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - state.get("t", time.perf_counter()))

    timed(bare)
    base = timed(bare)
    gc.callbacks.append(gc_cb)
    miss = timed(lambda c, h, u, d: check(client=c, host=h, url=u, dest_ip=d))
    gc.collect()  # a full collection must stay cheap too
    gc.callbacks.remove(gc_cb)
    # hits: a blocked domain, a URL on a host with URL indicators
    hit_requests = [(f"10.0.0.{i % 200}", f"x.{domain(i)}", f"http://x.{domain(i)}/",
                     "203.0.113.1") for i in range(2000)]
    t0 = time.perf_counter_ns()
    for c, h, u, d in hit_requests:
        assert check(client=c, host=h, url=u, dest_ip=d)
    hit_us = (time.perf_counter_ns() - t0) / len(hit_requests) / 1000
    # delta: 1,000 changes committed, visible to this reader
    writer = IndexWriter(connect(index))
    feed = writer.upsert_feed(FeedSpec(name="delta", type="domain"))
    t_commit = time.perf_counter()
    writer.conn.execute("BEGIN IMMEDIATE")
    for i in range(1000):
        cur = writer.conn.execute(
            "INSERT INTO indicators(feed_id, kind, value, match, first_seen, last_seen)"
            " VALUES (?, 'domain', ?, 'subtree', 0, 0)", (feed, f"delta{i}.example"))
        writer._log("add", cur.lastrowid, feed, "domain", f"delta{i}.example", "subtree")
    writer.conn.execute("COMMIT")
    commit_s = time.perf_counter() - t_commit
    t_poll = time.perf_counter()
    watcher.poll()
    poll_s = time.perf_counter() - t_poll
    assert watcher.snapshot.match_name("delta999.example")
    return {
        "baseline_median_us": statistics.median(base),
        "miss_median_us": statistics.median(miss),
        "miss_p99_us": sorted(miss)[int(len(miss) * 0.99) - 1],
        "hit_us": hit_us,
        "gc_max_ms": max(pauses, default=0.0) * 1000,
        "gc_count": len(pauses),
        "delta_commit_s": commit_s,
        "delta_apply_s": poll_s,
    }


def phase_import(index: str, path: str) -> dict:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "atr_proxy.cli", "--index", index, "import", path,
         "--feed", "imported", "--format", "plain", "--json"],
        check=True, capture_output=True, text=True,
    )
    result = json.loads(out.stdout)
    return {"seconds": time.perf_counter() - started, "added": result["added"],
            "rejected": result["rejected"]}


def child(phase: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", phase, *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", type=int, default=1_000_000)
    ap.add_argument("--urls", type=int, default=1_000_000)
    ap.add_argument("--ips", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--import-lines", type=int, default=1_000_000)
    ap.add_argument("--workdir")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        fn = {"build": phase_build, "load": phase_load, "check": phase_check,
              "import": phase_import}[a.phase]
        conv = [int(x) if x.isdigit() else x for x in a.args]
        print(json.dumps(fn(*conv)))
        return 0

    work = Path(a.workdir or tempfile.mkdtemp(prefix="atr-bench-"))
    index = str(work / "bench.db")
    total = a.domains + a.urls + a.ips
    line("indicators", f"{a.domains}+{a.urls}+{a.ips}", "domains+urls+ips")
    if not Path(index).exists():
        b = child("build", index, str(a.domains), str(a.urls), str(a.ips))
        line("index build (diff + commit)", f"{b['seconds']:.1f} s")
    load = child("load", index)
    per_m = load["seconds"] / (load["count"] / 1e6)
    line("snapshot load", f"{load['seconds']:.2f} s", f"{per_m:.2f} s per 1M (target <= 1.5)")
    line("snapshot load, CPU time", f"{load['cpu']:.2f} s",
         f"{load['cpu'] / (load['count'] / 1e6):.2f} s per 1M (wall minus waiting for a core)")
    per = load["rss_growth"] / load["count"]
    line("snapshot memory (RSS growth)", f"{load['rss_growth'] / 2**20:.0f} MiB",
         f"{per:.1f} B per indicator (target <= 40)")
    line("process RSS after load", f"{load['rss'] / 2**20:.0f} MiB")
    c = child("check", index, str(a.requests))
    line("baseline: 4 dict look-ups", f"{c['baseline_median_us']:.2f} us", "median")
    line("request check, miss", f"{c['miss_median_us']:.2f} us",
         f"median (target <= 3); {c['miss_median_us'] / c['baseline_median_us']:.1f}x baseline")
    line("request check, miss p99 (1000-call batches)", f"{c['miss_p99_us']:.2f} us")
    line("request check, hit", f"{c['hit_us']:.2f} us", "mean, incl. exact confirmation")
    line("longest GC pause in look-up loop", f"{c['gc_max_ms']:.2f} ms",
         f"{c['gc_count']} collections (target <= 10)")
    line("delta: 1,000 changes committed", f"{c['delta_commit_s'] * 1000:.0f} ms")
    line("delta: visible to a reader after", f"{c['delta_apply_s'] * 1000:.0f} ms",
         "poll + patch (target <= 1000)")
    plain = work / "import.txt"
    if not plain.exists():
        with open(plain, "w") as f:
            f.write("# generated benchmark list\n")
            for i in range(a.import_lines):
                f.write(f"i{i:x}.{'qrstuvwxyz'[i % 10]}{i % 991}.example.com\n")
    imp = child("import", str(work / "import.db"), str(plain))
    line("import of a plain list (CLI, end to end)", f"{imp['seconds']:.1f} s",
         f"{imp['added']} lines (target <= 10)")
    print(f"# total indicators {total}, workdir {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
