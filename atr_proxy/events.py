"""Event records and the one event writer (SQLite ``events`` table + JSON lines).

An event is written for every block and every monitored hit, by the proxy, the DNS
resolver and the admin API alike. ``EventWriter.emit`` never blocks and never raises: it
queues the record, and a background thread writes batches. If the disk is full or the
index is locked, events are counted as dropped and logged; enforcement goes on.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .policy import Verdict

log = logging.getLogger("atr_proxy.events")

MAX_QUEUE = 100_000


def new_event_id() -> str:
    """A short, unique, time-ordered id: 12 hex digits of milliseconds + 8 random."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(4)}"


@dataclass(slots=True)
class Event:
    event_id: str
    at: float
    source: str                  # proxy | dns | admin
    traffic: str                 # forwarded | system | dns
    action: str                  # the indicator's action: block | monitor
    verdict: str                 # what happened to the request: block | monitor | allow
    module: str | None = None
    feed: str | None = None
    indicator: str | None = None
    kind: str | None = None
    target: str | None = None    # client | host | sni | url | ip | cname | answer
    client_ip: str | None = None
    dest_host: str | None = None
    dest_ip: str | None = None
    dest_port: int | None = None
    url: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


EVENT_FIELDS = tuple(f.name for f in fields(Event))


def events_for(
    verdict: Verdict,
    *,
    source: str,
    traffic: str,
    client_ip: str | None = None,
    dest_host: str | None = None,
    dest_ip: str | None = None,
    dest_port: int | None = None,
    url: str | None = None,
    detail: str | None = None,
    event_id: str | None = None,
) -> list[Event]:
    """One event for the blocking hit, one per monitored hit. The blocking event gets
    ``event_id`` (the id shown on the block page), when given."""
    now = time.time()
    out: list[Event] = []
    common = dict(source=source, traffic=traffic, client_ip=client_ip, dest_host=dest_host,
                  dest_ip=dest_ip, dest_port=dest_port, url=url, detail=detail)
    if verdict.decisive is not None:
        hit = verdict.decisive
        out.append(Event(event_id or new_event_id(), now, action=hit.feed.action,
                         verdict=verdict.action, module=hit.feed.module, feed=hit.feed.name,
                         indicator=hit.indicator, kind=hit.kind, target=hit.target, **common))
    for hit in verdict.monitored:
        out.append(Event(new_event_id(), now, action=hit.feed.action, verdict=verdict.action,
                         module=hit.feed.module, feed=hit.feed.name, indicator=hit.indicator,
                         kind=hit.kind, target=hit.target, **common))
    return out


class EventWriter:
    """Queues events and writes them in batches from a daemon thread."""

    def __init__(
        self,
        index: str | os.PathLike[str] | None,
        jsonl: str | os.PathLike[str] | None = None,
        *,
        flush_interval: float = 0.25,
        batch: int = 1000,
    ) -> None:
        self.index = Path(index) if index else None
        self.jsonl = Path(jsonl) if jsonl else None
        self.flush_interval = flush_interval
        self.batch = batch
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None
        self._queue: deque[Event] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="atr-event-writer", daemon=True)
        self._thread.start()

    def emit(self, events: Event | Iterable[Event]) -> None:
        """Queue events for writing; never blocks, never raises."""
        try:
            items = [events] if isinstance(events, Event) else list(events)
            for event in items:
                if len(self._queue) >= MAX_QUEUE:
                    self.dropped += 1
                    continue
                self._queue.append(event)
            if items:
                self._idle.clear()
                self._wake.set()
        except Exception:  # an event problem must never fail a request
            log.exception("could not queue an event")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (or given up); True if idle."""
        self._wake.set()
        return self._idle.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            while self._queue:
                items = []
                while self._queue and len(items) < self.batch:
                    items.append(self._queue.popleft())
                self._write(items)
            if not self._queue:
                self._idle.set()

    def _write(self, items: list[Event]) -> None:
        stored = False  # written to at least one sink
        if self.index is not None:
            try:
                if self._conn is None:
                    from .index.db import connect

                    self._conn = connect(self.index)
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    f"INSERT OR IGNORE INTO events({', '.join(EVENT_FIELDS)})"
                    f" VALUES ({', '.join('?' * len(EVENT_FIELDS))})",
                    [tuple(getattr(e, f) for f in EVENT_FIELDS) for e in items],
                )
                self._conn.execute("COMMIT")
                stored = True
            except Exception as exc:  # disk full, locked, file replaced: report, go on
                self._fail(f"events table: {exc}")
                try:
                    if self._conn is not None:
                        self._conn.close()
                except Exception:
                    pass
                self._conn = None
        if self.jsonl is not None:
            try:
                text = "".join(json.dumps(e.as_dict(), ensure_ascii=True) + "\n" for e in items)
                with open(self.jsonl, "a", encoding="ascii") as out:
                    out.write(text)
                stored = True
            except Exception as exc:
                self._fail(f"{self.jsonl}: {exc}")
        if stored:
            self.written += len(items)
        else:
            self.dropped += len(items)

    def _fail(self, message: str) -> None:
        self.failures += 1
        if message != self.last_error:
            log.error("event write failed (enforcement continues): %s", message)
        self.last_error = message


def recent(conn: sqlite3.Connection, *, after_id: int = 0, limit: int = 100,
           newest_first: bool = True, **filters: str | None) -> list[dict[str, object]]:
    """Events from the index, optionally filtered by module, feed, client_ip, action,
    verdict, traffic, source."""
    allowed = {"module", "feed", "client_ip", "action", "verdict", "traffic", "source"}
    where, params = ["id > ?"], [after_id]
    for key, value in filters.items():
        if value is None:
            continue
        if key not in allowed:
            raise ValueError(f"cannot filter events by {key}")
        where.append(f"{key} = ?")
        params.append(value)
    order = "DESC" if newest_first else "ASC"
    cur = conn.execute(
        f"SELECT id, {', '.join(EVENT_FIELDS)} FROM events WHERE {' AND '.join(where)}"
        f" ORDER BY id {order} LIMIT ?", (*params, limit),
    )
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]
