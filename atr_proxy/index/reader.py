"""Read-side queries of the index: what a snapshot is built and patched from.

Readers (proxy, DNS, worker) call these from a background thread, never on a request path.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FeedRow:
    id: int
    name: str
    module: str
    action: str
    position: int
    enabled: bool


@dataclass(frozen=True, slots=True)
class ExceptionRow:
    id: int
    scope: str
    kind: str
    value: str
    feed_id: int | None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    op: str
    indicator_id: int | None
    feed_id: int | None
    kind: str | None
    value: str | None
    match: str | None
    expires_at: float | None


LIVE = "suppressed_by IS NULL AND (expires_at IS NULL OR expires_at > ?)"


def generation(conn: sqlite3.Connection) -> int:
    """The index generation: the newest change-log sequence (0 for an empty index)."""
    return int(conn.execute("SELECT IFNULL(MAX(seq), 0) FROM changes").fetchone()[0])


def oldest_change(conn: sqlite3.Connection) -> int:
    """The oldest sequence still in the change log (0 when the log is empty)."""
    return int(conn.execute("SELECT IFNULL(MIN(seq), 0) FROM changes").fetchone()[0])


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection commits: the cheap 'anything new?' probe."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def feeds(conn: sqlite3.Connection) -> list[FeedRow]:
    return [
        FeedRow(int(r[0]), r[1], r[2], r[3], int(r[4]), bool(r[5]))
        for r in conn.execute(
            "SELECT id, name, module, action, position, enabled FROM feeds ORDER BY id"
        )
    ]


def exceptions(conn: sqlite3.Connection) -> list[ExceptionRow]:
    return [
        ExceptionRow(int(r[0]), r[1], r[2], r[3], r[4], r[5])
        for r in conn.execute(
            "SELECT id, scope, kind, value, feed_id, comment FROM exceptions ORDER BY id"
        )
    ]


def live_indicators(conn: sqlite3.Connection, now: float) -> sqlite3.Cursor:
    """(id, feed_id, code, value, url host) of every enforced indicator, code being 0 for an exact
    domain, 1 for a subtree domain, 2 for a URL, 3 for an IP: one table scan, streamed by
    the cursor, with small integers instead of text so that rows are cheap to fetch."""
    return conn.execute(
        "SELECT id, feed_id, CASE kind WHEN 'domain' THEN (match = 'subtree')"
        f" WHEN 'url' THEN 2 ELSE 3 END, value, host FROM indicators WHERE {LIVE}",
        (now,),
    )


def live_indicator_chunks(
    conn: sqlite3.Connection, now: float, size: int = 65_536
) -> Iterator[tuple[list[int], list[int], str, list[str], list[str]]]:
    """The same rows as :func:`live_indicators`, as columns, a chunk of ids at a time:
    (ids, feed ids, codes as a string of digits, values, URL hosts or "").

    Each chunk is one SQLite step (``group_concat`` over an id range), so that a snapshot
    build in a busy process gives the GIL away once per chunk, not once per row (see
    :func:`changes_since`). Values are joined with newlines, which no canonical value
    holds (URL keys escape control characters; names and addresses cannot have them);
    a chunk that does not split evenly is fetched row by row instead.
    """
    low, high = conn.execute(
        "SELECT IFNULL(MIN(id), 0), IFNULL(MAX(id), -1) FROM indicators"
    ).fetchone()
    start = low - 1
    while start < high:
        end = start + size
        row = conn.execute(
            "SELECT count(*), group_concat(id), group_concat(feed_id), group_concat(code, ''),"
            " group_concat(value, char(10)), group_concat(IFNULL(host, ''), char(10)) FROM"
            " (SELECT id, feed_id, CASE kind WHEN 'domain' THEN (match = 'subtree')"
            " WHEN 'url' THEN 2 ELSE 3 END AS code, value, host FROM indicators"
            f" WHERE id > ? AND id <= ? AND {LIVE})", (start, end, now),
        ).fetchone()
        start = end
        count = row[0]
        if not count:
            continue
        values, hosts = row[4].split("\n"), row[5].split("\n")
        if len(values) != count or len(hosts) != count:  # never expected; stay correct
            rows = conn.execute(
                "SELECT id, feed_id, CASE kind WHEN 'domain' THEN (match = 'subtree')"
                " WHEN 'url' THEN 2 ELSE 3 END, value, IFNULL(host, '') FROM indicators"
                f" WHERE id > ? AND id <= ? AND {LIVE}", (end - size, end, now),
            ).fetchall()
            ids, feed_ids, codes, values, hosts = (list(c) for c in zip(*rows, strict=True))
            yield ids, feed_ids, "".join(map(str, codes)), values, hosts
            continue
        yield (list(map(int, row[1].split(","))), list(map(int, row[2].split(","))), row[3],
               values, hosts)


def capacity(conn: sqlite3.Connection) -> int:
    """Name-table entries a snapshot will need (domains, URLs, URL hosts per feed), from
    the per-feed counts the writer keeps: cheap, no table scan."""
    row = conn.execute(
        "SELECT IFNULL(SUM(domain_count + url_count + url_host_count), 0) FROM feeds"
    ).fetchone()
    return int(row[0])


def changes_since(conn: sqlite3.Connection, seq: int, limit: int) -> list[Change]:
    """Change-log entries after ``seq``, oldest first, at most ``limit``.

    Fetched as one JSON array in a single SQLite step: the sqlite3 module releases the GIL
    around every step, and a reader thread in a busy proxy then waits a thread switch
    interval per row to get it back (a 1,000-row delta took up to a second that way).
    """
    row = conn.execute(
        "SELECT json_group_array(json_array(seq, op, indicator_id, feed_id, kind, value,"
        " match, expires_at)) FROM (SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?)",
        (seq, limit),
    ).fetchone()
    changes = [Change(*item) for item in json.loads(row[0] or "[]")]
    changes.sort(key=lambda c: c.seq)
    return changes


def next_expiry(conn: sqlite3.Connection, now: float) -> float | None:
    """The earliest future expiry of an enforced indicator, or None."""
    row = conn.execute(
        "SELECT MIN(expires_at) FROM indicators WHERE expires_at > ? AND suppressed_by IS NULL",
        (now,),
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def expired_between(
    conn: sqlite3.Connection, after: float, until: float
) -> list[tuple[int, int, str, str, str]]:
    """(id, feed_id, kind, value, match) of indicators whose expiry fell in (after, until]."""
    return conn.execute(
        "SELECT id, feed_id, kind, value, match FROM indicators"
        " WHERE expires_at > ? AND expires_at <= ?", (after, until),
    ).fetchall()
