"""Feed-sync benchmark: a 1M-line plain feed served over loopback.

Figures (one line each): a first sync (fetch, parse, diff, commit), a re-sync after 1% of
the lines changed, a 304 re-sync; with, as baselines measured in the same run, the bare
parse of the same bytes and the 1% re-sync done the long way (full parse and diff).

    .venv/bin/python bench/bench_sync.py [--lines 1000000] [--changed 0.01]

Targets (issue 3): first sync <= 10 s, 1% re-sync <= 2 s, 304 re-sync <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atr_proxy import config  # noqa: E402
from atr_proxy.feeds.formats import parse  # noqa: E402
from atr_proxy.feeds.ingest import ingest  # noqa: E402
from atr_proxy.feeds.sync import SyncWorker  # noqa: E402
from atr_proxy.index import FeedSpec, connect  # noqa: E402
from tests.feedserver import FeedServer, Route  # noqa: E402


class Body:
    """The served feed; its ETag is computed once per version, not per request."""

    def __init__(self, lines: list[str]) -> None:
        self.set(lines)

    def set(self, lines: list[str]) -> None:
        self.data = ("# bench feed\n" + "\n".join(lines) + "\n").encode()
        self.etag = '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'

    def __call__(self, rec) -> tuple[int, dict[str, str], bytes]:
        if rec.headers.get("if-none-match") == self.etag:
            return 304, {"ETag": self.etag}, b""
        return 200, {"ETag": self.etag}, self.data


def figure(name: str, seconds: float, target: float | None = None, note: str = "") -> None:
    shown = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
    verdict = ""
    if target is not None:
        verdict = f"  (target <= {target * 1000:.0f} ms: {'ok' if seconds <= target else 'MISSED'})" \
            if target < 1 else f"  (target <= {target:.0f} s: {'ok' if seconds <= target else 'MISSED'})"
    print(f"{name:44} {shown:>10}{verdict}{('  ' + note) if note else ''}", flush=True)


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    lines = [f"h{i}-{rng.randrange(16**8):08x}.example{i % 977}.com" for i in range(args.lines)]
    body = Body(lines)
    print(f"feed: {args.lines} lines, {len(body.data) / 1e6:.1f} MB, plain, domains", flush=True)

    started = time.perf_counter()
    parse(body.data, "plain")
    figure("baseline: parse only (formats.parse)", time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as tmp, FeedServer() as server:
        url = server.add("/feed.txt", Route(body, etag=False))
        settings = config.from_mapping({
            "index": str(Path(tmp) / "index.db"),
            "feeds": [{"name": "bench", "url": url, "format": "plain", "max_bytes": "1G"}],
        }, env={})
        worker = SyncWorker(settings)
        worker.prepare()
        started = time.perf_counter()
        got = await worker.fetcher.fetch(settings.feeds[0])
        figure("baseline: fetch only (HTTP over loopback)", time.perf_counter() - started,
               note=f"[{got.bytes} bytes]")
        conn = connect(Path(tmp) / "import.db")
        started = time.perf_counter()
        ingest(conn, FeedSpec(name="import"), got.data, fmt="plain")
        figure("baseline: import from memory (parse, diff, commit)",
               time.perf_counter() - started)
        conn.close()

        async def sync(label: str, target: float | None) -> None:
            started = time.perf_counter()
            outcome = await worker.sync_feed("bench")
            seconds = time.perf_counter() - started
            assert outcome.status in ("ok", "not_modified"), outcome.error
            figure(label, seconds, target,
                   f"[{outcome.status}, {outcome.mode}, +{outcome.added} -{outcome.removed}"
                   f" = {outcome.total}]")

        await sync("first sync (fetch, parse, diff, commit)", 10)
        changed = max(1, int(args.lines * args.changed))
        step = args.lines // changed
        for n, i in enumerate(range(0, args.lines, step)):
            if n >= changed:
                break
            lines[i] = f"changed{i}.example{i % 31}.net"
        body.set(lines)
        await sync(f"re-sync, {args.changed:.0%} changed (line delta)", 2)
        await sync("re-sync, not modified (304)", 0.05)

        # the long way, as a baseline: forget the remembered lines, change 1% again
        worker._lines.clear()
        for n, i in enumerate(range(1, args.lines, step)):
            if n >= changed:
                break
            lines[i] = f"again{i}.example{i % 31}.org"
        body.set(lines)
        await sync(f"baseline: re-sync, {args.changed:.0%} changed, full parse", None)
        worker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01)
    asyncio.run(main(parser.parse_args()))
