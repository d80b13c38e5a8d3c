"""Event records and the one event writer (SQLite ``events`` table + JSON lines).

An event is written for every block and every monitored hit, by the proxy, the DNS
resolver and the admin API alike. ``EventWriter.emit`` never blocks and never raises: it
queues the record, and a background thread writes batches. If the disk is full or the
index is locked, events are counted as dropped and logged; enforcement goes on.

The same thread also keeps the ``counters`` table: ``count_check`` adds to an in-memory
count (a dict increment on the hot path), and the thread adds what is new to the table at
most once per flush interval, so that ``/metrics`` can show how much was checked, not only
what was hit.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from .policy import Verdict

log = logging.getLogger("atr_proxy.events")

MAX_QUEUE = 100_000
# the page cache of the connection that appends events and counters: appends touch few pages
EVENT_CACHE_KIB = 1024


_ids = random.Random(secrets.randbits(128))  # seeded once: ids need not be secret


def new_event_id() -> str:
    """A short, unique, time-ordered id: 12 hex digits of milliseconds + 8 random (not
    from the OS on every call: a system call per event showed in a flood of new names)."""
    return f"{int(time.time() * 1000):012x}{_ids.getrandbits(32):08x}"


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
        # not dataclasses.asdict: it deep-copies every value, and events come in floods
        return {name: getattr(self, name) for name in EVENT_FIELDS}


EVENT_FIELDS = tuple(f.name for f in fields(Event))
_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False)


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
        syslog: str | None = None,
    ) -> None:
        self.index = Path(index) if index else None
        self.jsonl = Path(jsonl) if jsonl else None
        # optional third sink (events.syslog); a bad target is a config error at start
        self.syslog = SyslogSink(syslog) if syslog else None
        self.flush_interval = flush_interval
        self.batch = batch
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None
        self._sink_errors: dict[str, str] = {}  # the failing sinks, with their last error
        self._queue: deque[Event] = deque()
        # checks by (source, traffic): only ever grow; the thread writes what is new since
        # _stored, so a failed write is retried and nothing is reset under a counting thread
        self._checks: dict[tuple[str, str], int] = {}
        self._stored: dict[tuple[str, str], int] = {}
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

    def count_check(self, source: str, traffic: str, n: int = 1) -> None:
        """Count ``n`` requests or queries checked (most hit nothing and make no event);
        written to the ``counters`` table with the next batch. Never raises."""
        key = (source, traffic)
        checks = self._checks
        checks[key] = checks.get(key, 0) + n

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued or counted so far is written (or given up); True
        if idle."""
        if self._checks != self._stored:
            self._idle.clear()
        self._wake.set()
        return self._idle.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()
        if self.syslog is not None:
            self.syslog.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            while self._queue:
                items = []
                while self._queue and len(items) < self.batch:
                    items.append(self._queue.popleft())
                self._write(items)
            self._write_counters()
            if not self._queue:
                self._idle.set()
        self._write_counters()  # the last counts, on close

    def _write_counters(self) -> None:
        if self.index is None:
            return
        now = dict(self._checks)  # one atomic copy under the GIL
        rows = [(source, traffic, "checks", n - self._stored.get((source, traffic), 0),
                 time.time()) for (source, traffic), n in now.items()
                if n != self._stored.get((source, traffic), 0)]
        if not rows:
            return
        try:
            self._connection().execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO counters(source, traffic, name, value, updated_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (source, traffic, name) DO UPDATE"
                    " SET value = value + excluded.value, updated_at = excluded.updated_at",
                    rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._stored = now
            self._ok("counters table")
        except Exception as exc:  # counts stay in memory and are retried next time
            self._fail(f"counters table: {exc}", "counters table")
            self._drop_connection()

    def _connection(self) -> sqlite3.Connection:
        """The index connection, reopened if the file was renamed over since (else the
        events would go to the old file, and its WAL would be held open)."""
        if self._conn is not None and self._conn.replaced():
            self._drop_connection()
        if self._conn is None:
            from .index.db import connect

            self._conn = connect(self.index, cache_kib=EVENT_CACHE_KIB)
        return self._conn

    def _drop_connection(self) -> None:
        """Forget a connection that failed (disk full, file replaced); reopened next time."""
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:
            pass
        self._conn = None

    def _write(self, items: list[Event]) -> None:
        stored = False  # written to at least one sink
        if self.index is not None:
            try:
                self._connection().execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    f"INSERT OR IGNORE INTO events({', '.join(EVENT_FIELDS)})"
                    f" VALUES ({', '.join('?' * len(EVENT_FIELDS))})",
                    [tuple(getattr(e, f) for f in EVENT_FIELDS) for e in items],
                )
                self._conn.execute("COMMIT")
                stored = True
                self._ok("events table")
            except Exception as exc:  # disk full, locked, file replaced: report, go on
                self._fail(f"events table: {exc}", "events table")
                self._drop_connection()
        if self.jsonl is not None:
            try:
                encode = _JSON.encode
                text = "".join([encode(e.as_dict()) + "\n" for e in items])
                with open(self.jsonl, "a", encoding="ascii") as out:
                    out.write(text)
                stored = True
                self._ok(str(self.jsonl))
            except Exception as exc:
                self._fail(f"{self.jsonl}: {exc}", str(self.jsonl))
        if self.syslog is not None:
            try:
                self.syslog.send(items)
                stored = True
                self._ok("syslog")
            except Exception as exc:
                self._fail(f"syslog {self.syslog.target}: {exc}", "syslog")
        if stored:
            self.written += len(items)
        else:
            self.dropped += len(items)

    def _fail(self, message: str, sink: str = "") -> None:
        """Count a failed write; log it once per sink and error (a full disk fails every
        batch: one line for it, not one per batch)."""
        self.failures += 1
        if self._sink_errors.get(sink) != message:
            log.error("event write failed (enforcement continues): %s", message)
            self._sink_errors[sink] = message
        self.last_error = message

    def _ok(self, sink: str) -> None:
        if self._sink_errors and self._sink_errors.pop(sink, None) is not None:
            log.warning("event writing to %s works again", sink)


class SyslogSink:
    """Sends events as RFC 5424 syslog messages: ``udp://host[:514]`` (one datagram per
    event) or ``tcp://host[:514]`` (octet-counted frames, RFC 6587), optionally with
    ``?facility=local0`` (a name or a number; default local0).

    Every event field is a structured-data parameter of ``[atr@32473 ...]`` (32473 is the
    private enterprise number reserved for documentation, RFC 5612); the message text is a
    one-line summary. Severity: warning for a block, notice for a monitored hit, info else.
    ``send`` raises OSError when the collector cannot be reached; the writer counts it.
    """

    SD_ID = "atr@32473"
    FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
                  **{f"local{i}": 16 + i for i in range(8)}}
    MAX_UDP = 8192          # bytes; a longer message is cut (UDP collectors drop big ones)
    TIMEOUT = 2.0

    def __init__(self, target: str, *, app_name: str = "atr-proxy",
                 hostname: str | None = None) -> None:
        from urllib.parse import parse_qs, urlsplit

        from .errors import ConfigError

        self.target = target
        try:
            parts = urlsplit(target)
            port = parts.port or 514
        except ValueError as exc:
            raise ConfigError("events.syslog", f"{target!r}: {exc}") from None
        if parts.scheme not in ("udp", "tcp") or not parts.hostname:
            raise ConfigError("events.syslog",
                              f"{target!r}: use udp://host:port or tcp://host:port")
        facility = parse_qs(parts.query).get("facility", ["local0"])[0]
        if facility.isdigit() and 0 <= int(facility) <= 23:
            self.facility = int(facility)
        elif facility in self.FACILITIES:
            self.facility = self.FACILITIES[facility]
        else:
            raise ConfigError("events.syslog", f"unknown facility {facility!r}")
        self.transport, self.address = parts.scheme, (parts.hostname, port)
        self.app_name = app_name
        self.hostname = _syslog_token(hostname or socket.gethostname() or "-", 255)
        self._sock: socket.socket | None = None

    def format(self, event: Event) -> bytes:
        """One RFC 5424 message (without transport framing)."""
        severity = {"block": 4, "monitor": 5}.get(event.verdict, 6)
        when = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        params = " ".join(f'{name}="{_sd_value(value)}"'
                          for name, value in event.as_dict().items() if value is not None)
        msgid = event.verdict if event.traffic != "system" or event.module else "system"
        where = event.url or event.dest_host or event.dest_ip or "-"
        text = (f"{event.verdict} {event.source}/{event.traffic} client={event.client_ip or '-'}"
                f" {where} indicator={event.indicator or '-'} feed={event.feed or '-'}")
        if event.detail and not event.module:
            text += f" {event.detail}"
        line = (f"<{self.facility * 8 + severity}>1 {when} {self.hostname}"
                f" {self.app_name} {os.getpid()} {_syslog_token(msgid, 32)}"
                f" [{self.SD_ID} {params}] {_printable(text)}")
        return line.encode("utf-8")

    def send(self, events: Iterable[Event]) -> None:
        messages = [self.format(e) for e in events]
        if self.transport == "udp":
            sock = self._socket()
            for message in messages:
                sock.sendto(message[: self.MAX_UDP], self.address)
            return
        payload = b"".join(str(len(m)).encode() + b" " + m for m in messages)
        try:
            self._socket().sendall(payload)
        except OSError:
            self.close()  # the collector restarted: one fresh connection, then give up
            self._socket().sendall(payload)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            if self.transport == "udp":
                family = socket.getaddrinfo(*self.address, type=socket.SOCK_DGRAM)[0][0]
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
            else:
                self._sock = socket.create_connection(self.address, timeout=self.TIMEOUT)
            self._sock.settimeout(self.TIMEOUT)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


def _sd_value(value: object) -> str:
    """A structured-data parameter value: backslash, double quote and closing bracket
    escaped (RFC 5424 6.3.3); control characters shown as escapes, so that a hostile URL
    cannot forge a line."""
    text = _printable(str(value))
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _syslog_token(text: str, limit: int) -> str:
    """A header field: printable ASCII without spaces, or '-'."""
    token = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return token or "-"


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
