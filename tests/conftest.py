"""Shared test fixtures: a fresh index, and a helper to fill feeds."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from atr_proxy.index import FeedSpec, IndexWriter, connect

ROOT = Path(__file__).resolve().parents[1]
SHARED_FEEDS = ROOT.parent / "shared" / "feeds"


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    return tmp_path / "index.db"


@pytest.fixture
def writer(index_path: Path) -> IndexWriter:
    conn = connect(index_path)
    yield IndexWriter(conn)
    conn.close()


class Item:
    """An indicator as a parser would give it."""

    def __init__(self, kind: str, value: str, match: str | None = None,
                 expires_at: float | None = None) -> None:
        self.kind, self.value, self.match, self.expires_at = kind, value, match, expires_at


def fill(writer: IndexWriter, name: str, items: list[tuple], **spec) -> int:
    """Create feed ``name`` with ``items`` of (kind, value[, match[, expires_at]])."""
    feed_id = writer.upsert_feed(FeedSpec(name=name, **spec))
    writer.replace_feed(feed_id, [Item(*i) for i in items], allow_empty=True)
    return feed_id


def atr_cli() -> list[str]:
    """The installed console command, run as a real subprocess by CLI tests."""
    return [sys.executable, "-m", "atr_proxy.cli"]


@contextmanager
def outside_holder(index: Path) -> Iterator[subprocess.Popen]:
    """Another process (as an operator's ``sqlite3`` shell would) with the index open and
    read once, until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys\n"
         f"c = sqlite3.connect({str(index)!r})\n"
         "c.execute('SELECT COUNT(*) FROM indicators').fetchall()\n"
         "print('holding', flush=True)\nsys.stdin.read()\nc.close()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield holder
    finally:
        holder.communicate("", timeout=10)


def wait_for(check: Callable[[], object], seconds: float = 10.0) -> bool:
    """Poll ``check`` every 0.05 s until it is true (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def api_up(base: str, proc: subprocess.Popen | None = None, seconds: float = 30.0) -> bool:
    """Wait until the admin API at ``base`` answers its health check (False after
    ``seconds``, or at once if ``proc``, the process serving it, has exited)."""
    import httpx

    def healthy() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process serving {base} exited with {proc.returncode}")
        try:
            return httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return wait_for(healthy, seconds)
