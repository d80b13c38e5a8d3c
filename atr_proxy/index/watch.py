"""Keeps a reader's matcher snapshot current: full build at start, deltas after.

A proxy or DNS process owns one ``SnapshotWatcher``. ``poll()`` (run in a worker thread,
never on the event loop) asks SQLite cheaply whether anything was committed
(``PRAGMA data_version``), reads the new change-log entries, patches a copy of the
snapshot and publishes it with one assignment. A reload marker, a gap in the log or a very
large delta means a full rebuild instead. If the index cannot be read, the last good
snapshot stays in force and the error is kept for health reporting.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import IndexUnavailable
from ..matcher import Feed, Snapshot, build_snapshot, empty_snapshot
from ..memory import full_collections_paused, return_freed_memory
from ..policy import Exception_, Exceptions
from . import reader
from .db import connect

log = logging.getLogger("atr_proxy.index")

MAX_DELTA = 50_000
MAX_CONFIRMED = 65_536  # confirmed indicator values kept per snapshot
POLL_INTERVAL = 0.25


class SnapshotWatcher:
    """Holds ``snapshot`` (read it freely from any thread) and keeps it current."""

    def __init__(
        self,
        path: str | Path,
        *,
        interval: float = POLL_INTERVAL,
        confirm_hits: bool = True,
        on_swap: Callable[[Snapshot, Snapshot, str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.confirm_hits = confirm_hits
        self.on_swap = on_swap
        self.snapshot: Snapshot = empty_snapshot()
        self.snapshot.exceptions = Exceptions()
        self.loaded = False
        self.last_error: str | None = None
        self.last_reload_seconds = 0.0
        self.last_swap_at = 0.0
        self._conn: sqlite3.Connection | None = None
        self._confirm_conn: sqlite3.Connection | None = None
        self._confirm_lock = threading.Lock()
        self._confirmed: dict[int, str] = {}  # indicator id -> its value, this snapshot
        self._poll_lock = threading.Lock()
        self._data_version: int | None = None
        self._expiry_checked = 0.0
        self._identity: tuple[int, int] | None = None
        self._snap_identity: tuple[int, int] | None = None  # the file the snapshot came from
        self._fresh = False  # a new connection: the file may be another one, rebuild

    # -- reading -----------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        identity = _file_identity(self.path)  # raises OSError if the file is gone
        if self._conn is not None and identity != self._identity:
            # the file was replaced: let go of the old one at once (its WAL must be released
            # before anyone may read the new file), keep the snapshot, reload on the next poll
            self._drop_connection()
            self._drop_confirm()
            self._identity = identity
            raise IndexUnavailable(f"index {self.path} was replaced; reloading")
        if self._conn is None:
            self._conn = connect(self.path, readonly=True)
            self._identity = identity
            self._fresh = True
        return self._conn

    def _drop_confirm(self) -> None:
        with self._confirm_lock:
            if self._confirm_conn is not None:
                try:
                    self._confirm_conn.close()
                except sqlite3.Error:
                    pass
                self._confirm_conn = None

    def _confirm_connection(self) -> sqlite3.Connection:
        """The connection for single-row reads (call with ``_confirm_lock`` held): one to the
        file the snapshot was built from, never to a file renamed over it since."""
        conn = self._confirm_conn  # dropped by poll() when the file is replaced or gone
        if conn is None:
            if self._snap_identity is not None and \
                    _file_identity(self.path) != self._snap_identity:
                raise IndexUnavailable(f"index {self.path} was replaced; not yet reloaded")
            conn = self._confirm_conn = connect(self.path, readonly=True)
            conn.execute("PRAGMA busy_timeout=50")
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None
        self._data_version = None

    def load(self) -> Snapshot:
        """Build a full snapshot from the index and publish it; raises IndexUnavailable."""
        with self._poll_lock:
            try:
                return self._rebuild("load")
            except (sqlite3.Error, IndexUnavailable, OSError) as exc:
                self._drop_connection()
                self.last_error = str(exc)
                raise IndexUnavailable(f"index {self.path}: {exc}") from exc

    def _rebuild(self, why: str) -> Snapshot:
        started = time.perf_counter()
        conn = self._connection()
        identity = self._identity
        self._fresh = False
        now = time.time()
        conn.execute("BEGIN")  # one read transaction: a consistent view of the index
        try:
            self._data_version = reader.data_version(conn)
            generation = reader.generation(conn)
            feeds = [Feed(f.id, f.name, f.module, f.action, f.position, f.enabled)
                     for f in reader.feeds(conn)]
            with full_collections_paused():
                snap = build_snapshot(
                    generation=generation,
                    feeds=feeds,
                    chunks=reader.live_indicator_chunks(conn, now),
                    capacity=reader.capacity(conn),
                    next_expiry=reader.next_expiry(conn, now),
                    confirm=self._confirm if self.confirm_hits else None,
                )
            snap.exceptions = _exceptions(conn)
        finally:
            conn.execute("COMMIT")
        self._expiry_checked = now
        # A fresh connection to the same file: the one that streamed the build keeps about
        # 20 MiB per million indicators of statement memory until it is closed.
        self._conn.close()
        self._conn = connect(self.path, readonly=True)
        self._data_version = reader.data_version(self._conn)
        self._publish(snap, why, time.perf_counter() - started)
        # after the swap: until here, hits of the old snapshot are not confirmed in the new file
        self._snap_identity = identity
        gc.collect()  # the build's garbage, left uncollected while full collections were paused
        return_freed_memory()
        return snap

    def poll(self) -> bool:
        """Apply whatever was committed since the last look; True if a new snapshot was
        published. Never raises: an unreadable index keeps the last snapshot."""
        with self._poll_lock:
            try:
                if not self.loaded:
                    self._rebuild("load")
                    return True
                self._connection()
                if self._fresh:
                    self._rebuild("reopened")
                    return True
                return self._poll()
            except (sqlite3.Error, IndexUnavailable, OSError) as exc:
                if self.last_error != str(exc):
                    log.warning("index %s unreadable, keeping generation %d: %s",
                                self.path, self.snapshot.generation, exc)
                self.last_error = str(exc)
                self._drop_connection()
                self._drop_confirm()  # a deleted or replaced file's WAL must not stay held
                return False

    def _poll(self) -> bool:
        conn = self._connection()
        snap = self.snapshot
        now = time.time()
        expiry_due = snap.next_expiry is not None and now >= snap.next_expiry
        version = reader.data_version(conn)
        if version == self._data_version and not expiry_due:
            return False
        started = time.perf_counter()
        conn.execute("BEGIN")
        try:
            self._data_version = version
            generation = reader.generation(conn)
            if generation == snap.generation and not expiry_due:
                self.last_error = None
                return False
            if generation < snap.generation or (
                generation > snap.generation
                and reader.oldest_change(conn) > snap.generation + 1
            ):
                conn.execute("COMMIT")
                self._rebuild("change log gap")
                return True
            changes = reader.changes_since(conn, snap.generation, MAX_DELTA + 1)
            if len(changes) > MAX_DELTA or any(c.op == "reload" for c in changes):
                conn.execute("COMMIT")
                self._rebuild("reload")
                return True
            rows = [
                (c.op, c.indicator_id, c.feed_id, c.kind, c.value, c.match, c.expires_at)
                for c in changes if c.op in ("add", "del", "expiry")
            ]
            if expiry_due:
                rows += [("del", *row) + (None,)
                         for row in reader.expired_between(conn, self._expiry_checked, now)]
            feeds = None
            if any(c.op == "feed" for c in changes):
                feeds = [Feed(f.id, f.name, f.module, f.action, f.position, f.enabled)
                         for f in reader.feeds(conn)]
            new = snap.patch(rows, generation=generation, feeds=feeds, now=now)
            if expiry_due:
                new.next_expiry = reader.next_expiry(conn, now)
                self._expiry_checked = now
            new.exceptions = (
                _exceptions(conn) if any(c.op == "exception" for c in changes)
                else snap.exceptions
            )
        finally:
            # after a rebuild, ``conn`` is closed and replaced: nothing to end
            if conn is self._conn and conn.in_transaction:
                conn.execute("COMMIT")
        self._publish(new, "delta", time.perf_counter() - started)
        return True

    def _publish(self, snap: Snapshot, why: str, seconds: float) -> None:
        old = self.snapshot
        self.snapshot = snap  # the one assignment readers see
        self._confirmed = {}  # an id may name another row now (SQLite reuses the last id)
        self.loaded = True
        self.last_error = None
        self.last_reload_seconds = seconds
        self.last_swap_at = time.time()
        log.info("snapshot generation %d (%s): %d indicators in %.3f s",
                 snap.generation, why, snap.count(), seconds)
        if self.on_swap is not None:
            try:
                self.on_swap(old, snap, why)
            except Exception:  # a listener's bug must not stop updates
                log.exception("snapshot listener failed")

    # -- hits --------------------------------------------------------------------------
    def _confirm(self, indicator_id: int, value: str) -> bool:
        """Exact confirmation of a hash hit. If the index cannot answer, trust the hash
        (64-bit keyed hash: a false hit is vanishingly rare, a missed block is not). The
        values read are kept until the next snapshot (a flood of names under one listed
        domain asks SQLite once, not once per name)."""
        known = self._confirmed.get(indicator_id)
        if known is not None:
            return known == value
        with self._confirm_lock:
            try:
                row = self._confirm_connection().execute(
                    "SELECT value FROM indicators WHERE id=?", (indicator_id,)
                ).fetchone()
            except (sqlite3.Error, IndexUnavailable, OSError):
                self._confirm_conn = None
                return True
        # a row deleted since the snapshot was built no longer counts
        if row is None:
            return False
        if len(self._confirmed) < MAX_CONFIRMED:
            self._confirmed[indicator_id] = row[0]
        return row[0] == value

    # -- running -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll forever (or until ``stop``) from a worker thread."""
        while stop is None or not stop.is_set():
            await asyncio.to_thread(self.poll)
            if stop is None:
                await asyncio.sleep(self.interval)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), self.interval)
                except TimeoutError:
                    pass

    def start_thread(self) -> threading.Event:
        """Poll in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval):
                self.poll()

        threading.Thread(target=loop, name="atr-snapshot-watcher", daemon=True).start()
        return stop

    def close(self) -> None:
        self._drop_connection()
        self._drop_confirm()


def _file_identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino)


def _exceptions(conn: sqlite3.Connection) -> Exceptions:
    return Exceptions.build(
        Exception_(e.id, e.scope, e.kind, e.value, e.feed_id, e.comment)
        for e in reader.exceptions(conn)
    )
